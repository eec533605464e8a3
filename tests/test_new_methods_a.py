"""The defining property of inflora, route, gainlora and sapt-sals, each against a brute-force computation.
(The shared contract -- trains, saves, `nlora eval` rebuilds the same predictions, frozen parameters stay
bit-identical -- runs them through tests/test_method_contract.py.)"""

import json

import pytest
import torch

from nlora.adapters import ContinualLoRA
from nlora.batching import encode
from nlora.cli import main
from nlora.config import LoraSettings, TaskSettings, resolve
from nlora.data import load_tasks
from nlora.methods import get_method
from nlora.models import default_target_modules, load_model
from nlora.prompts import load_instructions
from nlora.recipe import task_context
from nlora.train import train_task

NAMES = ["topic", "mood"]


def setup(method_name, kind, model_dirs, data_dir, n_train=8):
    loaded = load_model(str(model_dirs[kind]))
    lora = ContinualLoRA(loaded.model, LoraSettings(dropout=0.0), default_target_modules(loaded.model),
                         loaded.seq2seq)
    cfg = resolve(overrides={"model": "m", "data_dir": "d", "output_dir": "o", "task_names": NAMES,
                             "method": method_name, "fold_adapters": False})
    method = get_method(method_name)(cfg)
    tasks = load_tasks(data_dir, NAMES, load_instructions(), n_train, 4, 0)
    return loaded, lora, method, tasks


def train_one(loaded, lora, method, tasks, t, between=None):
    """Task t as the recipe runs it; ``between(ctx)`` runs after before_training, before the first step."""
    name = NAMES[t]
    settings = TaskSettings(name=name, lr=5e-2, epochs=1, batch_size=4, grad_accum=1)
    data = encode(loaded.tokenizer, tasks[name].splits["train"], loaded.seq2seq, 256, 8)
    method.begin_task(lora, t, settings)
    ctx = task_context(lora, data, settings, loaded.tokenizer, loaded.seq2seq, torch.device("cpu"), None)
    method.before_training(lora, t, settings, ctx)
    if between is not None:
        between(ctx)
    train_task(lora, method, data, settings, pad_id=loaded.tokenizer.pad_token_id, seq2seq=loaded.seq2seq,
               device=torch.device("cpu"), amp_dtype=None, seed=t)
    method.end_task(lora, t, settings, ctx)
    return ctx


def snapshot(lora):
    return {n: p.detach().clone() for n, p in lora.model.named_parameters()}


def run_cli(model_dir, data_dir, out, method, *extra):
    return main(["run", "--model", str(model_dir), "--data-dir", str(data_dir), "--output-dir", str(out),
                 "--tasks", ",".join(NAMES), "--max-train-per-task", "8", "--max-test-per-task", "4",
                 "--batch-size", "4", "--eval-batch-size", "4", "--max-target-length", "6", "--lr", "0.01",
                 "--method", method, *extra])


# ---------------------------------------------------------------- inflora

def brute_covariance(lora, layer_name, examples, seq2seq):
    """C of one layer's input, one example at a time (no padding at all), summed token by token."""
    layer = dict(lora.lora_layers())[layer_name]
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
        torch.testing.assert_close(m.T @ m, torch.eye(m.shape[1], dtype=m.dtype), atol=1e-8, rtol=0)
    after1 = snapshot(lora)
    designed, covs = {}, {}

    def record(ctx):
        for n, layer in lora.lora_layers():
            designed[n] = layer.lora_A["task1"].weight.detach().clone()
        probe = sorted(bases)[:2]
        covs.update({n: brute_covariance(lora, n, ctx.examples, loaded.seq2seq) for n in probe})
    train_one(loaded, lora, method, tasks, 1, between=record)
    after2 = snapshot(lora)
    layers = dict(lora.lora_layers())
    for n, m in bases.items():
        a = layers[n].lora_A["task1"].weight.detach().double()
        assert torch.equal(a.float(), designed[n])  # A frozen through training
        assert (a @ m).abs().max() < 1e-6 * a.abs().max()  # rows in the complement of the stored basis
        assert a.norm(dim=1).max() == pytest.approx(1 / 3 ** 0.5, rel=1e-5)
    for n, cov in covs.items():  # the design: top left singular vectors of (I - M M^T) C, / sqrt(3)
        m = bases[n]
        u, s, _ = torch.linalg.svd(cov - m @ (m.T @ cov))
        a = designed[n].double() * 3 ** 0.5
        k = int((s[: a.shape[0] + 1] > 1e-6 * s[0]).sum())
        distinct = [i for i in range(min(k, a.shape[0]))
                    if (i == 0 or s[i - 1] - s[i] > 1e-4 * s[0]) and s[i] - s[i + 1] > 1e-4 * s[0]]
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
    u, s, _ = torch.linalg.svd(cov)
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


def test_inflora_state_saved_and_reloaded(model_dirs, data_dir, tmp_path):
    out = tmp_path / "inf"
    assert run_cli(model_dirs["llama"], data_dir, out, "inflora") == 0
    from safetensors.torch import load_file

    saved = load_file(str(out / "tasks" / "01-topic" / "adapter" / "method_state.safetensors"))
    assert saved and all(v.shape[1] >= 1 for v in saved.values())
    assert main(["eval", str(out), "--tasks", ",".join(NAMES)]) == 0


# ---------------------------------------------------------------- route

@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_route_sends_each_task_to_its_adapter(model_dirs, data_dir, tmp_path, kind):
    out = tmp_path / "route"
    assert run_cli(model_dirs[kind], data_dir, out, "route") == 0
    routing = json.loads((out / "tasks" / "02-mood" / "routing.json").read_text())
    assert routing["accuracy"] == 100.0
    assert routing["tasks"]["topic"]["routed"] == {"task0": 4} and routing["tasks"]["mood"]["routed"] == {"task1": 4}
    summary = json.loads((out / "summary.json").read_text())
    first = [json.loads(x)["prediction"] for x in (out / "tasks" / "01-topic" / "predictions.jsonl").read_text().splitlines()]
    later = [r["prediction"] for r in map(json.loads, (out / "tasks" / "02-mood" / "predictions.jsonl").read_text().splitlines())
             if r["task"] == "topic"]
    assert first == later and summary["bwt"] == 0.0  # routed right, so task 1 is answered by its frozen adapter
    assert main(["eval", str(out), "--tasks", ",".join(NAMES)]) == 0
    again = json.loads((out / "eval" / "after-02" / "topic+mood" / "routing.json").read_text())
    assert again == routing


def test_route_choice_is_the_nearest_prototype(model_dirs, data_dir):
    from nlora.methods.route import pooled_states

    loaded, lora, method, tasks = setup("route", "llama", model_dirs, data_dir)
    ctxs = [train_one(loaded, lora, method, tasks, t) for t in range(2)]
    for t, ctx in enumerate(ctxs):  # brute force: each prototype is the mean of per-prompt token means
        with torch.no_grad(), lora.model.disable_adapter():
            states = [lora.model.get_base_model().base_model(input_ids=torch.tensor([e.source])).last_hidden_state[0]
                      .mean(0) for e in ctx.examples]
        torch.testing.assert_close(lora.extras[f"task{t}"].prototype, torch.stack(states).mean(0), atol=1e-5,
                                   rtol=1e-4)
    test = [e.source for n in NAMES for e in encode(loaded.tokenizer, tasks[n].splits["test"], False, 256, 8)]
    chosen = method.route_examples(lora, 1, test)
    protos = torch.stack([lora.extras[f"task{t}"].prototype for t in range(2)])
    queries = pooled_states(lora, test)
    for q, c in zip(queries, chosen):
        dist = [float(((q - p) ** 2).sum()) for p in protos]
        assert c == [f"task{dist.index(min(dist))}"]
    assert chosen == [["task0"]] * 4 + [["task1"]] * 4  # the toy tasks are separable
    # a prototype moved onto a task-1 prompt takes that prompt
    with torch.no_grad():
        lora.extras["task1"].prototype.copy_(queries[0])
    assert method.route_examples(lora, 1, test[:1]) == [["task1"]]
