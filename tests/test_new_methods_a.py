"""The defining property of inflora, route, gainlora and sapt-sals, each against a brute-force computation.
(The shared contract -- trains, saves, `nlora eval` rebuilds the same predictions, frozen parameters stay
bit-identical -- runs them through tests/test_method_contract.py.)"""

import json

import pytest
import torch
from conftest import toy_run_args

from nlora.adapters import ContinualLoRA
from nlora.batching import encode
from nlora.cli import main
from nlora.config import LoraSettings, TaskSettings
from nlora.data import load_tasks
from nlora.methods import RunFacts, make_method
from nlora.models import default_target_modules, load_model
from nlora.prompts import load_instructions
from nlora.recipe import task_context
from nlora.runtime import Runtime
from nlora.train import TrainLoop, train_task

NAMES = ["topic", "mood"]


def setup(method_name, kind, model_dirs, data_dir, n_train=8):
    loaded = load_model(str(model_dirs[kind]))
    lora = ContinualLoRA(loaded.model, LoraSettings(dropout=0.0), default_target_modules(loaded.model), loaded.family)
    method = make_method(method_name, run=RunFacts(n_tasks=len(NAMES), fold_adapters=False))
    tasks = load_tasks(data_dir, NAMES, load_instructions(), max_train=n_train, max_test=4)
    return loaded, lora, method, tasks


def train_one(loaded, lora, method, tasks, t, between=None):
    """Task t as the recipe runs it; ``between(ctx)`` runs after before_training, before the first step."""
    name = NAMES[t]
    settings = TaskSettings(name=name, lr=5e-2, epochs=1, batch_size=4, grad_accum=1)
    data = encode(loaded.tokenizer, tasks[name].splits["train"], loaded.seq2seq, 256, 8)
    method.begin_task(lora, t, settings)
    ctx = task_context(Runtime(loaded.tokenizer, loaded.family, torch.device("cpu")), lora, data, settings)
    method.before_training(lora, t, settings, ctx)
    if between is not None:
        between(ctx)
    train_task(
        Runtime(loaded.tokenizer, loaded.family, torch.device("cpu")), lora, method, data, settings, TrainLoop(seed=t)
    )
    method.end_task(lora, t, settings, ctx)
    return ctx


def snapshot(lora):
    return {n: p.detach().clone() for n, p in lora.model.named_parameters()}


def run_cli(model_dir, data_dir, out, method, *extra):
    return main(toy_run_args(model_dir, data_dir, out, "--method", method, *extra, tasks=",".join(NAMES)))


# ---------------------------------------------------------------- inflora


def brute_covariance(lora, layer_name, examples, seq2seq):
    """C of one layer's input, one example at a time (no padding at all), summed token by token."""
    layer = {view.name: view.layer for view in lora.adapted_layers(lora.current)}[layer_name]
    rows = []
    handle = layer.register_forward_pre_hook(lambda m, args: rows.append(args[0].detach().double()))
    lora.model.eval()
    with torch.no_grad():
        for e in examples:
            if seq2seq:
                lora.model(input_ids=torch.tensor([e.source]), labels=torch.tensor([e.target]))
            else:
                lora.model(input_ids=torch.tensor([e.source + e.target]))
    handle.remove()
    total, count = 0, 0
    for x in rows:
        for token in x.reshape(-1, x.shape[-1]):
            total = total + torch.outer(token, token)
            count += 1
    return total / count


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_inflora_designs_A_outside_old_subspace_and_trains_only_B(model_dirs, data_dir, kind):
    loaded, lora, method, tasks = setup("inflora", kind, model_dirs, data_dir)
    train_one(loaded, lora, method, tasks, 0)
    bases = {n: m.clone() for n, m in method.bases.items()}
    assert bases and all(m.shape[1] >= 1 for m in bases.values())
    for m in bases.values():  # orthonormal columns
        torch.testing.assert_close(m.T @ m, torch.eye(m.shape[1], dtype=m.dtype), atol=1e-6, rtol=0)
    after1 = snapshot(lora)
    designed, covs = {}, {}

    def record(ctx):
        for view in lora.adapted_layers("task1"):
            designed[view.name] = view.A.weight.detach().clone()
        probe = sorted(bases)[:2]
        covs.update({n: brute_covariance(lora, n, ctx.examples, loaded.seq2seq) for n in probe})

    train_one(loaded, lora, method, tasks, 1, between=record)
    after2 = snapshot(lora)
    layers = {view.name: view for view in lora.adapted_layers("task1")}
    for n, m in bases.items():
        a = layers[n].A.weight.detach().double()
        assert torch.equal(a.float(), designed[n])  # A frozen through training
        assert (a @ m).abs().max() < 1e-6 * a.abs().max()  # rows in the complement of the stored basis
        assert a.norm(dim=1).max() == pytest.approx(1 / 3**0.5, rel=1e-5)
    for n, cov in covs.items():  # the design: top left singular vectors of (I - M M^T) C, / sqrt(3)
        m = bases[n]
        u, s, _ = torch.linalg.svd(cov - m @ (m.T @ cov))
        a = designed[n].double() * 3**0.5
        k = int((s[: a.shape[0] + 1] > 1e-6 * s[0]).sum())
        distinct = [
            i
            for i in range(min(k, a.shape[0]))
            if (i == 0 or s[i - 1] - s[i] > 1e-4 * s[0]) and s[i] - s[i + 1] > 1e-4 * s[0]
        ]
        assert distinct, "no well-separated singular value to compare"
        for i in distinct:  # up to sign; float32 forward passes, hence the tolerance
            assert abs(float(a[i] @ u[:, i])) == pytest.approx(1.0, abs=1e-3)
    moved = [n for n in after2 if "lora_B.task1" in n and not torch.equal(after2[n], after1.get(n, after2[n] + 1))]
    assert moved  # B trains
    assert all(torch.equal(after2[n], after1[n]) for n in after1 if "task0" in n or "lora_" not in n)
    assert all(not p.requires_grad for n, p in lora.model.named_parameters() if "lora_A" in n)
    for n, m in method.bases.items():  # the memory only grows, and stays orthonormal
        assert torch.equal(m[:, : bases[n].shape[1]], bases[n])
        torch.testing.assert_close(m.T @ m, torch.eye(m.shape[1], dtype=m.dtype), atol=1e-6, rtol=0)


def test_gpm_energy_rule_matches_a_loop():
    from nlora.methods.inflora import gpm_update

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 12, generator=g, dtype=torch.float64) * torch.linspace(3, 0.1, 12, dtype=torch.float64)
    cov = x.T @ x / 200
    first = gpm_update(cov, None, 0.9)
    s = torch.linalg.svd(cov)[1]
    energy = (s**2 / (s**2).sum()).tolist()
    k, acc = 0, 0.0
    while acc + energy[k] < 0.9:  # count of prefixes whose share stays below the threshold
        acc += energy[k]
        k += 1
    assert first.shape[1] == k
    y = torch.randn(200, 12, generator=g, dtype=torch.float64)
    cov2 = y.T @ y / 200
    more = gpm_update(cov2, first, 0.95)
    total = float((torch.linalg.svd(cov2)[1] ** 2).sum())
    proj = cov2 - first @ (first.T @ cov2)
    s2 = torch.linalg.svd(proj)[1] ** 2
    captured, r = (total - float(s2.sum())) / total, 0
    while captured < 0.95:
        captured += float(s2[r]) / total
        r += 1
    assert more.shape[1] == r and (first.T @ more).abs().max() < 1e-10


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_inflora_probes_read_rows_by_length_and_ask_a_decoder_only_head_for_one_position(model_dirs, data_dir, kind):
    from nlora.methods.inflora import forward_batches

    loaded, lora, method, tasks = setup("inflora", kind, model_dirs, data_dir)
    lora.start("task0")
    data = encode(loaded.tokenizer, tasks["topic"].splits["train"], loaded.seq2seq, 256, 8)
    batches = list(forward_batches(lora, data, 3))
    inputs = batches[0][0]
    with torch.no_grad():
        logits = lora.model(**inputs).logits
    # shortest rows first (the covariance is a sum over real tokens): each batch's rows no longer than the next's
    lengths = [(b[1].sum(-1) + (0 if b[2] is None else b[2].sum(-1))).tolist() for b in batches]
    assert sum(map(len, lengths)) == len(data) and len({len(r) for r in lengths[:-1]}) == 1
    assert all(max(a) <= min(b) for a, b in zip(lengths, lengths[1:]))
    in_file_order = [len(e.source) + len(e.target) for e in data]
    assert in_file_order != sorted(in_file_order)  # so the order above is the pass's doing
    if kind == "llama":  # the hooks read layer inputs: the head's other positions would be thrown away
        assert "logits_to_keep" in inputs and logits.shape[1] == 1
    else:  # T5's head reads the answer tokens only
        assert "logits_to_keep" not in inputs and logits.shape[1] == inputs["labels"].shape[1]


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_inflora_layers_reading_one_input_share_its_product(model_dirs, data_dir, monkeypatch, kind):
    from nlora.methods import inflora

    loaded, lora, method, tasks = setup("inflora", kind, model_dirs, data_dir)
    lora.start("task0")
    data = encode(loaded.tokenizer, tasks["topic"].splits["train"], loaded.seq2seq, 256, 8)
    computed = []

    class Counting(inflora.InputProducts):
        def of(self, x, mask, role):
            computed.extend([] if self.cached(x, role) is not None else [role])
            return super().of(x, mask, role)

    monkeypatch.setattr(inflora, "InputProducts", Counting)
    covs = inflora.layer_covariances(lora, "task0", data, 3)
    names = [view.name for view in lora.adapted_layers("task0")]
    assert sorted(covs) == sorted(names) and all(n.endswith(("q_proj", "v_proj", ".q", ".v")) for n in names)
    batches, config = -(-len(data) // 3), lora.base_model.config
    if kind == "llama":  # a block's q_proj and v_proj read its normed hidden states: one product per block
        assert len(computed) == batches * config.num_hidden_layers
    else:  # per block: self-attention's q and v share; cross-attention's q reads the decoder, its v the
        # encoder's output, one tensor for every decoder block
        assert len(computed) == batches * (config.num_layers + 2 * config.num_decoder_layers + 1)
    for n in names:  # against one example at a time, token by token (float32 forward passes, hence rtol)
        torch.testing.assert_close(covs[n], brute_covariance(lora, n, data, loaded.seq2seq), rtol=1e-4, atol=1e-7)


def test_inflora_state_saved_and_reloaded(model_dirs, data_dir, tmp_path, capsys):
    out = tmp_path / "inf"
    assert run_cli(model_dirs["llama"], data_dir, out, "inflora") == 0
    from safetensors.torch import load_file

    state = out / "tasks" / "01-topic" / "adapter" / "method_state.safetensors"
    saved = load_file(str(state))
    assert saved and all(v.shape[1] >= 1 for v in saved.values())
    assert main(["eval", str(out), "--tasks", ",".join(NAMES)]) == 0
    state.write_bytes(state.read_bytes()[:40])  # damaged: one line, exit code 2
    capsys.readouterr()
    assert main(["eval", str(out), "--tasks", ",".join(NAMES)]) == 2
    err = capsys.readouterr().err
    assert "method_state.safetensors" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- route


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_route_sends_each_task_to_its_adapter(model_dirs, data_dir, tmp_path, kind):
    out = tmp_path / "route"
    assert run_cli(model_dirs[kind], data_dir, out, "route") == 0
    routing = json.loads((out / "tasks" / "02-mood" / "routing.json").read_text())
    assert routing["accuracy"] == 100.0
    assert routing["tasks"]["topic"]["routed"] == {"task0": 4} and routing["tasks"]["mood"]["routed"] == {"task1": 4}
    summary = json.loads((out / "summary.json").read_text())
    first = [
        json.loads(x)["prediction"] for x in (out / "tasks" / "01-topic" / "predictions.jsonl").read_text().splitlines()
    ]
    later = [
        r["prediction"]
        for r in map(json.loads, (out / "tasks" / "02-mood" / "predictions.jsonl").read_text().splitlines())
        if r["task"] == "topic"
    ]
    assert first == later and summary["bwt"] == 0.0  # routed right, so task 1 is answered by its frozen adapter
    assert [e["routing_accuracy"] for e in summary["per_task"]] == [100.0, 100.0]
    assert main(["eval", str(out), "--tasks", ",".join(NAMES)]) == 0
    again = json.loads((out / "eval" / "after-02" / "topic+mood" / "routing.json").read_text())
    assert again == routing


def test_route_choice_is_the_nearest_prototype(model_dirs, data_dir):
    from nlora.methods.route import pooled_states

    loaded, lora, method, tasks = setup("route", "llama", model_dirs, data_dir)
    ctxs = [train_one(loaded, lora, method, tasks, t) for t in range(2)]
    for t, ctx in enumerate(ctxs):  # brute force: each prototype is the mean of per-prompt token means
        with torch.no_grad(), lora.model.disable_adapter():
            states = [
                lora.model.get_base_model().base_model(input_ids=torch.tensor([e.source])).last_hidden_state[0].mean(0)
                for e in ctx.examples
            ]
        torch.testing.assert_close(lora.extras[f"task{t}"].prototype, torch.stack(states).mean(0), atol=1e-5, rtol=1e-4)
    test = [e.source for n in NAMES for e in encode(loaded.tokenizer, tasks[n].splits["test"], False, 256, 8)]
    chosen = method.route_examples(lora, 1, test)
    protos = torch.stack([lora.extras[f"task{t}"].prototype for t in range(2)])
    longest_first = test[::-1]  # batches are cut from the prompts sorted by length: rows must come back in order
    assert [len(t) for t in longest_first] != sorted(len(t) for t in longest_first)
    with torch.no_grad(), lora.model.disable_adapter():
        one_by_one = [
            lora.model.get_base_model().base_model(input_ids=torch.tensor([t])).last_hidden_state[0].mean(0)
            for t in longest_first
        ]
    pooled = pooled_states(lora, longest_first, batch_size=3)
    torch.testing.assert_close(pooled, torch.stack(one_by_one), atol=1e-5, rtol=1e-4)
    queries = pooled_states(lora, test)
    for q, c in zip(queries, chosen):
        dist = [float(((q - p) ** 2).sum()) for p in protos]
        assert c == [f"task{dist.index(min(dist))}"]
    assert chosen == [["task0"]] * 4 + [["task1"]] * 4  # the toy tasks are separable
    # a prototype moved onto a task-1 prompt takes that prompt
    with torch.no_grad():
        lora.extras["task1"].prototype.copy_(queries[0])
    assert method.route_examples(lora, 1, test[:1]) == [["task1"]]


# ---------------------------------------------------------------- gated branches (gainlora, sapt-sals)


def gates_of(method, lora):
    return method._gates[id(lora)]


def prompt_batch(loaded, tasks, per_task=2):
    from nlora.batching import collate_prompts

    rows = [e for n in NAMES for e in tasks[n].splits["test"][:per_task]]
    return collate_prompts(encode(loaded.tokenizer, rows, loaded.seq2seq, 256, 8), 0, loaded.seq2seq)


def assert_branches_scaled_per_example(loaded, lora, method, tasks):
    """Brute force: one example's logits with gates equal the ungated model whose B_i are multiplied by that
    example's a_i; and a batch gives each row its own gates (same logits as the row alone)."""
    gates = gates_of(method, lora)
    batch = prompt_batch(loaded, tasks)
    extra = (
        {"decoder_input_ids": torch.zeros(batch["input_ids"].shape[0], 1, dtype=torch.long)} if loaded.seq2seq else {}
    )
    lora.model.eval()
    with torch.no_grad():
        together = lora.model(**batch, **extra).logits
        for row in (0, batch["input_ids"].shape[0] - 1):
            real = batch["attention_mask"][row].bool()
            one = {
                "input_ids": batch["input_ids"][row][real][None],
                "attention_mask": batch["attention_mask"][row][real][None],
            }
            one_extra = {k: v[row : row + 1] for k, v in extra.items()}
            alone = lora.model(**one, **one_extra).logits
            scales = {n: float(v[0]) for n, v in gates.values.items()}
            last = -1 if loaded.seq2seq else slice(None)
            torch.testing.assert_close(alone[0, -1], together[row, -1], atol=1e-4, rtol=1e-4)
            saved = {}
            for n, s in scales.items():
                for view in lora.adapted_layers(n):
                    saved[(view.name, n)] = view.B.weight.detach().clone()
                    view.B.weight.mul_(s)
            compute, gates.compute = gates.compute, lambda e, m: {}
            try:
                ungated = lora.model(**one, **one_extra).logits
            finally:
                gates.compute = compute
                for n in scales:
                    for view in lora.adapted_layers(n):
                        view.B.weight.copy_(saved[(view.name, n)])
            torch.testing.assert_close(ungated[0, last], alone[0, last], atol=1e-5, rtol=1e-5)
            assert (ungated - lora.model(**one, **one_extra).logits).abs().max() < 1e-5  # restored


def assert_generation_gates_once(loaded, lora, method, tasks):
    """A generation computes the gates from the prompt once, not from each new token."""
    gates = gates_of(method, lora)
    calls = []
    compute = gates.compute
    gates.compute = lambda e, m: (calls.append(e.shape[1]), compute(e, m))[1]
    batch = prompt_batch(loaded, tasks)
    try:
        with torch.no_grad():
            lora.model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    finally:
        gates.compute = compute
    assert calls == [batch["input_ids"].shape[1]]


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_gainlora_old_inputs_keep_their_gates(model_dirs, data_dir, kind):
    from nlora.methods.gainlora import masked_mean, prompt_embeddings

    loaded, lora, method, tasks = setup("gainlora", kind, model_dirs, data_dir)
    ctx0 = train_one(loaded, lora, method, tasks, 0)
    e_old = prompt_embeddings(lora, [x.source for x in ctx0.examples], masked_mean)
    gate0 = lora.extras["task0"].gate
    with torch.no_grad():
        a0_before = gate0(e_old).clone()
    m1, m2, m3 = (m.float().clone() for m in method.gate_bases)
    ctx1 = train_one(loaded, lora, method, tasks, 1)
    gate1 = lora.extras["task1"].gate
    assert gate1.constraint is None  # settled into its parameters at the task's end
    with torch.no_grad():
        assert torch.equal(gate0(e_old), a0_before)  # the old gate, on old inputs, did not move
        # the new gate's update lies outside the memory of old inputs (exact under AdamW: a reparameterisation)
        assert (gate1.w1 - gate0.w1).abs().sum() > 0 and (gate1.w2 - gate0.w2).abs().sum() > 0
        assert ((gate1.w1 - gate0.w1) @ m1).abs().max() < 1e-5
        assert ((gate1.w2 - gate0.w2) @ m2).abs().max() < 1e-5
        assert (m3.T @ gate1.key).abs().max() < 1e-5 * gate1.key.norm()
        # so on old inputs inside the memory the new gate's first layer and features equal the old gate's
        e_in = e_old @ m1 @ m1.T
        torch.testing.assert_close(gate1.hidden(e_in), gate0.hidden(e_in), atol=1e-5, rtol=1e-5)
        # brute force a(x) = |2 sigmoid(4 cos(f(e), k)) - 1| through a model forward, per example
        batch = prompt_batch(loaded, tasks)
        extra = {"labels": torch.zeros(batch["input_ids"].shape[0], 1, dtype=torch.long)} if loaded.seq2seq else {}
        lora.model(**batch, **extra)
        embed = lora.model.get_base_model().get_input_embeddings()
        for row in range(batch["input_ids"].shape[0]):
            ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
            e = embed(ids).float().mean(0)
            for n, g in (("task0", gate0), ("task1", gate1)):
                f = torch.nn.functional.silu(g.w2 @ torch.nn.functional.silu(g.w1 @ e))
                cos = (f @ g.key) / (f.norm() * g.key.norm())
                want = abs(2 * torch.sigmoid(4 * cos) - 1)
                assert float(gates_of(method, lora).values[n][row]) == pytest.approx(float(want), abs=1e-5)
        e_new = prompt_embeddings(lora, [x.source for x in ctx1.examples], masked_mean)
        old_gate, new_gate = gate1(e_old), gate1(e_new)
    assert float(old_gate.mean()) < float(new_gate.mean())  # the new branch opens on its own task's inputs
    assert all(not p.requires_grad for p in gate0.parameters())
    assert_branches_scaled_per_example(loaded, lora, method, tasks)
    if not loaded.seq2seq:
        assert_generation_gates_once(loaded, lora, method, tasks)


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_sapt_mixture_weights_sum_to_one(model_dirs, data_dir, kind):
    from nlora.methods.sapt import masked_max

    loaded, lora, method, tasks = setup("sapt-sals", kind, model_dirs, data_dir)
    train_one(loaded, lora, method, tasks, 0)
    query0 = {k: v.clone() for k, v in lora.extras["task0"].state_dict().items()}

    def starts_from_previous(ctx):
        for k, v in lora.extras["task1"].query.state_dict().items():
            assert torch.equal(v, query0[f"query.{k}"])

    train_one(loaded, lora, method, tasks, 1, between=starts_from_previous)
    assert all(torch.equal(v, query0[k]) for k, v in lora.extras["task0"].state_dict().items())  # frozen
    assert not torch.equal(lora.extras["task1"].query[0].weight, query0["query.0.weight"])  # the shared net trained
    batch = prompt_batch(loaded, tasks)
    extra = {"labels": torch.zeros(batch["input_ids"].shape[0], 1, dtype=torch.long)} if loaded.seq2seq else {}
    with torch.no_grad():
        lora.model(**batch, **extra)
        values = gates_of(method, lora).values
        weights = torch.stack([values["task0"], values["task1"]], 1)
        torch.testing.assert_close(weights.sum(1), torch.ones(weights.shape[0]), atol=1e-6, rtol=0)
        embed = lora.model.get_base_model().get_input_embeddings()
        state0, state1 = lora.extras["task0"], lora.extras["task1"]
        d = state0.key.shape[0]
        for row in range(weights.shape[0]):  # brute force: softmax_i(k_i . g(max-pooled emb) / sqrt(d))
            ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
            pooled = embed(ids).float().max(0).values
            q = state1.query(pooled[None])[0]
            scores = torch.tensor([float(state0.key @ q), float(state1.key @ q)]) / d**0.5
            want = scores.exp() / scores.exp().sum()
            torch.testing.assert_close(weights[row], want, atol=1e-5, rtol=1e-5)
        assert masked_max(torch.tensor([[[1.0], [5.0]]]), torch.tensor([[1.0, 0.0]])).item() == 1.0  # pads ignored
    assert_branches_scaled_per_example(loaded, lora, method, tasks)
    if not loaded.seq2seq:
        assert_generation_gates_once(loaded, lora, method, tasks)


@pytest.mark.parametrize("method", ["gainlora", "sapt-sals", "route"])
def test_resumed_run_reloads_the_method_state(model_dirs, data_dir, tmp_path, method):
    """A run stopped after task 1 and resumed (task 1 reloaded from its saved files, with the method's state)
    ends with the same predictions and method state as the uninterrupted run."""
    import shutil

    from safetensors.torch import load_file

    out = tmp_path / "run"
    assert run_cli(model_dirs["llama"], data_dir, out, method) == 0
    last = out / "tasks" / "02-mood"
    before = (last / "predictions.jsonl").read_text()
    state = load_file(str(last / "adapter" / "method_state.safetensors"))
    shutil.rmtree(last)
    (out / "summary.json").unlink()
    assert run_cli(model_dirs["llama"], data_dir, out, method) == 0
    assert json.loads((out / "summary.json").read_text())["resumed"] is True
    assert (last / "predictions.jsonl").read_text() == before
    again = load_file(str(last / "adapter" / "method_state.safetensors"))
    assert sorted(again) == sorted(state) and all(torch.equal(again[k], state[k]) for k in state)


def test_sapt_replay_kl_equals_the_formula(model_dirs, data_dir):
    import math

    from nlora.methods.gainlora import prompt_embeddings
    from nlora.methods.sapt import masked_max

    loaded, lora, method, tasks = setup("sapt-arm", "llama", model_dirs, data_dir, n_train=24)
    ctx0 = train_one(loaded, lora, method, tasks, 0)
    kept = lora.extras["task0"]
    assert kept.memory.shape[0] == math.ceil(0.02 * len(ctx0.examples)) == 1  # 2% of 24, rounded up
    pooled = prompt_embeddings(lora, [e.source for e in ctx0.examples], masked_max)
    assert any(torch.equal(kept.memory[0], p) for p in pooled)  # real examples' pooled embeddings
    assert kept.label.shape == (1,) and float(kept.label[0]) == pytest.approx(1.0)
    seen = []
    train_one(
        loaded,
        lora,
        method,
        tasks,
        1,
        between=lambda ctx: seen.append(
            float(method.penalty(lora, TaskSettings("mood", 1, 1, 4, 1, method_options={"lambda": 0.5})))
        ),
    )
    assert seen[0] > 0  # the new key takes weight from task 1's kept inputs: a KL against [1, 0]
    settings = TaskSettings(name="mood", lr=1, epochs=1, batch_size=4, grad_accum=1, method_options={"lambda": 0.5})
    method._old = [lora.extras["task0"]]
    got = method.penalty(lora, settings)
    with torch.no_grad():
        keys = [lora.extras["task0"].key, lora.extras["task1"].key]
        total = 0.0
        for x in kept.memory:  # brute force: 0.5 * mean_x sum_i label_i log(label_i / w_i), label = [l_0, 0]
            q = lora.extras["task1"].query(x[None])[0]
            scores = torch.tensor([float(k @ q) for k in keys]) / math.sqrt(x.shape[0])
            w = scores.exp() / scores.exp().sum()
            total += sum(float(lab * math.log(lab / w[i])) for i, lab in enumerate(kept.label.tolist()) if lab > 0)
        assert float(got) == pytest.approx(0.5 * total / kept.memory.shape[0], rel=1e-4)
    assert got.requires_grad  # it trains the query network and the new key


def test_replay_kl_brute_force_several_tasks():
    from nlora.methods.sapt import QUERY_HIDDEN, SaptState, replay_kl

    torch.manual_seed(0)
    d = 8
    query = SaptState(d, QUERY_HIDDEN).query
    keys = torch.randn(3, d)
    memories = [torch.randn(3, d), torch.randn(2, d)]
    labels = [torch.tensor([1.0]), torch.tensor([0.3, 0.7])]
    got = float(replay_kl(keys, query, memories, labels))
    want = 0.0
    with torch.no_grad():
        for mem, lab in zip(memories, labels):
            part = 0.0
            for x in mem:
                s = [float(k @ query(x[None])[0]) / d**0.5 for k in keys]
                z = sum(torch.tensor(s).exp().tolist())
                w = [torch.tensor(v).exp().item() / z for v in s]
                part += sum(lab_i * torch.tensor(lab_i / w[i]).log().item() for i, lab_i in enumerate(lab.tolist()))
            want += part / mem.shape[0]
    assert got == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("method", ["gainlora", "route"])
def test_label_scoring_with_input_chosen_branches(model_dirs, data_dir, tmp_path, method):
    """Label scoring (one prompt pass, labels from its cache) keeps the prompt's gates / route, and `nlora eval`
    gives the same predictions."""
    out = tmp_path / "score"
    assert run_cli(model_dirs["llama"], data_dir, out, method, "--eval-mode", "score") == 0
    last = out / "tasks" / "02-mood"
    assert main(["eval", str(out), "--tasks", ",".join(NAMES)]) == 0
    again = out / "eval" / "after-02" / "topic+mood" / "predictions.jsonl"
    assert again.read_text() == (last / "predictions.jsonl").read_text()
    assert all(
        json.loads(x)["prediction"] in ("World", "Sports", "positive", "negative")
        for x in again.read_text().splitlines()
    )
