"""migu / migu-lora, clora, slao, l2p: each one's defining property against a brute-force computation (the shared
contract is in test_method_contract.py), and the methods table of `nlora methods` / docs/methods.md."""

import math
import re
from pathlib import Path

import pytest
import torch
from conftest import toy_run_args
from safetensors.torch import load_file

import nlora.train as train_mod
from nlora.adapters import ContinualLoRA
from nlora.banks import make_bank
from nlora.batching import collate_prompts, collate_train, encode
from nlora.cli import main
from nlora.config import LoraSettings, TaskSettings
from nlora.data import Example, load_tasks
from nlora.dist import Dist
from nlora.logits import answer_logits, task_loss
from nlora.methods import REGISTRY, RunFacts, get_method, make_method
from nlora.models import default_target_modules, load_model
from nlora.prompts import load_instructions
from nlora.runtime import Runtime
from nlora.train import TrainLoop, train_task

DOCS = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def setup(kind, model_dirs, method_name, seed=0, lam=None):
    loaded = load_model(str(model_dirs[kind]))
    bank = get_method(method_name).bank
    lora = make_bank(bank, loaded.model, LoraSettings(dropout=0.0), default_target_modules(loaded.model), loaded.family)
    run = RunFacts(seed=seed, n_tasks=3)
    return loaded, lora, make_method(method_name, {} if lam is None else {"lambda": lam}, run), run


def settings(lam=None, name="mood"):
    options = {} if lam is None else {"lambda": lam}
    return TaskSettings(name=name, lr=1e-2, epochs=1, batch_size=4, grad_accum=1, method_options=options)


def train_batches(loaded, data_dir, n=8, per_batch=4, task="topic"):
    tasks = load_tasks(data_dir, [task], load_instructions(), max_train=n, max_test=4)
    enc = encode(loaded.tokenizer, tasks[task].splits["train"], loaded.seq2seq, 256, 8)
    return [
        collate_train(enc[s : s + per_batch], loaded.tokenizer.pad_token_id, loaded.seq2seq)
        for s in range(0, len(enc), per_batch)
    ]


def linear_quantile(values: list[float], q: float) -> float:
    """numpy's default ('linear') quantile, written out."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


# ---------------------------------------------------------------- migu


@pytest.mark.parametrize("variant", ["migu", "migu-lora"])
def test_migu_rows_below_the_quantile_get_zero_gradient(model_dirs, model_kind, data_dir, variant):
    loaded, lora, method, _ = setup(model_kind, model_dirs, variant)
    method.begin_task(lora, 0, settings())
    assert method.mask is None  # the first task trains unmasked, as released
    method.begin_task(lora, 1, settings())
    modules = method.mask.modules
    if variant == "migu-lora":
        assert len(modules) == 2 * len(lora.adapted_layers(lora.current))
        with torch.no_grad():  # a fresh B is 0: every lora_B output would tie at 0
            for f in lora.factors(lora.current):
                f.B.normal_(0, 0.1)
    else:
        assert len(modules) == sum(isinstance(m, torch.nn.Linear) for m in lora.model.modules())
    outputs = {i: [] for i in range(len(modules))}
    spies = [
        m.register_forward_hook(lambda mod, a, out, i=i: outputs[i].append(out.detach().double()))
        for i, m in enumerate(modules)
    ]
    for batch in train_batches(loaded, data_dir):  # two micro-batches of one optimizer step
        task_loss(lora.model, batch, loaded.seq2seq, False).backward()
    for s in spies:
        s.remove()
    before = [m.weight.grad.clone() for m in modules]
    method.before_step(lora, Dist())
    masked_nonzero = 0
    for i, m in enumerate(modules):
        d_out = m.weight.shape[0]
        sums = [sum(float(y[..., j].abs().sum()) for y in outputs[i]) for j in range(d_out)]
        tau = linear_quantile(sums, 0.7)
        for j in range(d_out):
            if sums[j] >= tau:
                assert torch.equal(m.weight.grad[j], before[i][j])
            else:
                assert not m.weight.grad[j].any()
                masked_nonzero += bool(before[i][j].any())
        kept = sum(s >= tau for s in sums)
        assert d_out < 10 or 0.2 * d_out <= kept <= 0.3 * d_out + 1  # about the top 30% train
    assert masked_nonzero > 0  # the mask removed real gradient
    assert all(s is None for s in method.mask.sums)  # the next step starts afresh
    method.end_task(lora, 1, settings())
    assert method.mask is None and not any(m._forward_hooks for m in modules)  # evaluation is not counted


def test_migu_one_step_leaves_masked_rows_unchanged(model_dirs, data_dir):
    """Through the training loop (the before_step hook): after one AdamW step of a second task, about 70% of
    the rows of every Linear are bit-identical (a zero gradient on a fresh optimizer moves nothing)."""
    loaded, lora, method, _ = setup("llama", model_dirs, "migu")
    method.begin_task(lora, 1, settings())
    tasks = load_tasks(data_dir, ["mood"], load_instructions(), max_train=4, max_test=4)
    data = encode(loaded.tokenizer, tasks["mood"].splits["train"], False, 256, 8)
    linears = [m for m in lora.model.modules() if isinstance(m, torch.nn.Linear)]
    start = [m.weight.detach().clone() for m in linears]
    train_task(
        Runtime(loaded.tokenizer, loaded.family, torch.device("cpu")), lora, method, data, settings(), TrainLoop(seed=0)
    )
    for m, w0 in zip(linears, start):
        changed = int((m.weight.detach() != w0).any(dim=1).sum())
        assert 0 < changed <= math.ceil(0.3 * w0.shape[0]) + 1, (changed, w0.shape)


def test_migu_every_rank_joins_each_reduction_even_without_a_pass():
    """Under several processes a rank that ran no forward pass in a step still joins every all-reduce (else
    the others would wait for it), and the ranking uses the reduced sums."""
    from nlora.methods.migu import OutputMagnitudeMask

    class TwoRanks:  # stands for a process group: the other rank's sums equal this one's
        active, calls = True, 0

        def sum_(self, t):
            self.calls += 1
            return t * 2

    torch.manual_seed(0)
    used, idle = torch.nn.Linear(4, 10), torch.nn.Linear(4, 6)
    mask = OutputMagnitudeMask([used, idle])
    used(torch.randn(3, 4))
    dist = TwoRanks()
    kept, everything = mask.masks(0.7, dist)
    assert dist.calls == 2 and everything.tolist() == [1.0] * 6
    assert int(kept.sum()) == 3
    assert mask.masks(0.7, None)[1] is None  # one process: a layer without a pass is left alone


def test_migu_refuses_a_quantile_outside_0_1(model_dirs):
    from nlora.errors import NloraError

    _, lora, method, _ = setup("llama", model_dirs, "migu")
    with pytest.raises(NloraError, match="quantile"):
        method.begin_task(lora, 1, settings(lam=1.5))
    loaded, _, lora_method, _ = setup("llama", model_dirs, "migu-lora")
    sharded = ContinualLoRA(loaded.model, LoraSettings(), default_target_modules(loaded.model), False, sharded=True)
    with pytest.raises(NloraError, match="sharded"):
        lora_method.begin_task(sharded, 0, settings())


# ---------------------------------------------------------------- clora


def test_clora_loss_equals_the_formula_and_its_gradient(model_dirs):
    _, lora, method, _ = setup("llama", model_dirs, "clora")
    lam = 0.3
    method.begin_task(lora, 0, settings(lam))
    factors = lora.factors(lora.current)
    with torch.no_grad():
        for f in factors:
            f.B.normal_()
    value = method.penalty(lora, settings(lam))
    brute = 0.0
    for f in factors:
        p_a, p_b = method.projection(f)
        A, B = f.A.detach().double().tolist(), f.B.detach().double().tolist()
        PA, PB = p_a.double().tolist(), p_b.double().tolist()
        r, d_in, d_out, k_a, k_b = len(A), len(A[0]), len(B), len(PA[0]), len(PB[0])
        assert (k_a, k_b) == (max(1, d_in // 8), max(1, d_out // 8))
        ap = sum(sum(A[i][t] * PA[t][j] for t in range(d_in)) ** 2 for i in range(r) for j in range(k_a))
        bp = sum(sum(B[t][i] * PB[t][j] for t in range(d_out)) ** 2 for i in range(r) for j in range(k_b))
        brute += lam * (0.5 * ap + 0.5 * bp)
        for p in (p_a, p_b):  # orthonormal columns
            torch.testing.assert_close(p.T @ p, torch.eye(p.shape[1]), atol=1e-5, rtol=0)
    assert value.item() == pytest.approx(brute, rel=1e-5)
    value.backward()
    for f in factors:  # d/dA = lam A P_A P_A^T, d/dB = lam P_B P_B^T B
        p_a, p_b = method.projection(f)
        torch.testing.assert_close(f.A.grad, lam * f.A.detach() @ p_a @ p_a.T, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(f.B.grad, lam * p_b @ p_b.T @ f.B.detach(), atol=1e-6, rtol=1e-4)


def test_clora_subspaces_are_fixed_across_tasks_and_runs(model_dirs):
    _, lora, method, _ = setup("llama", model_dirs, "clora")
    method.begin_task(lora, 0, settings())
    first = [tuple(p.clone() for p in method.projection(f)) for f in lora.factors("task0")]
    method.begin_task(lora, 1, settings())  # a fresh adapter (task0 folded), the same layers
    assert lora.current == "task1"
    for f, (p_a, p_b) in zip(lora.factors("task1"), first):
        assert torch.equal(method.projection(f)[0], p_a) and torch.equal(method.projection(f)[1], p_b)
    _, lora2, again, _ = setup("llama", model_dirs, "clora")  # a resumed run draws the same ones
    again.begin_task(lora2, 0, settings())
    assert all(torch.equal(again.projection(f)[0], p[0]) for f, p in zip(lora2.factors("task0"), first))
    _, lora3, other, _ = setup("llama", model_dirs, "clora", seed=5)
    other.begin_task(lora3, 0, settings())
    assert not torch.equal(other.projection(lora3.factors("task0")[0])[0], first[0][0])


# ---------------------------------------------------------------- slao


def gram_schmidt_rows(a: torch.Tensor) -> torch.Tensor:
    rows = []
    for v in a.double():
        w = v.clone()
        for u in rows:
            w = w - (w @ u) * u
        rows.append(w / w.norm())
    return torch.stack(rows)


def fake_training(method, lora, seed):
    """Stands for a task's training: new factor values, and one optimizer step counted."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for f in lora.factors(lora.current):
            f.A.copy_(torch.randn(f.A.shape, generator=g))
            f.B.copy_(torch.randn(f.B.shape, generator=g))
    method.before_step(lora, Dist())
    return [(f.A.detach().clone(), f.B.detach().clone()) for f in lora.factors(lora.current)]


def test_slao_initialisation_and_merge_equal_the_formulas(model_dirs):
    _, lora, method, _ = setup("llama", model_dirs, "slao")
    method.begin_task(lora, 0, settings())
    ft1 = fake_training(method, lora, 1)
    method.end_task(lora, 0, settings())
    for f, (a1, b1) in zip(lora.factors("seq"), ft1):  # i = 1: weight 1, B_merge,1 = B_ft,1
        assert torch.equal(f.A, a1) and torch.equal(f.B, b1)
    merged1 = [f.B.detach().clone() for f in lora.factors("seq")]

    method.begin_task(lora, 1, settings())
    assert lora.adapters == ["seq"]
    for f, (a1, b1) in zip(lora.factors("seq"), ft1):
        torch.testing.assert_close(f.A.double(), gram_schmidt_rows(a1), atol=1e-5, rtol=0)  # Q^T, diag R > 0
        torch.testing.assert_close(f.A @ f.A.T, torch.eye(f.A.shape[0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(f.B, b1, atol=1e-6, rtol=1e-6)  # B continued from the fine-tuned one
    ft2 = fake_training(method, lora, 2)
    method.end_task(lora, 1, settings())
    for f, (a2, b2), b_m1 in zip(lora.factors("seq"), ft2, merged1):
        assert torch.equal(f.A, a2)  # A replaced
        expected = [
            [b_m1[i, j].item() + (b2[i, j].item() - b_m1[i, j].item()) / math.sqrt(2) for j in range(b2.shape[1])]
            for i in range(b2.shape[0])
        ]
        torch.testing.assert_close(f.B.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=1e-6)
    merged2 = [f.B.detach().clone() for f in lora.factors("seq")]
    method.begin_task(lora, 2, settings())
    for f, (_, b2) in zip(lora.factors("seq"), ft2):
        torch.testing.assert_close(f.B, b2, atol=1e-5, rtol=1e-5)  # B_ft,2 recovered from the merged states
    started = [(f.A.detach().clone(), f.B.detach().clone()) for f in lora.factors("seq")]

    # a resumed run: tasks 1-2 reloaded from their saved (merged) adapters, not trained -> the same start
    _, lora2, resumed, _ = setup("llama", model_dirs, "slao")
    for t, (ft, merged) in enumerate([(ft1, merged1), (ft2, merged2)]):
        resumed.begin_task(lora2, t, settings())
        with torch.no_grad():
            for f, (a, _), b in zip(lora2.factors("seq"), ft, merged):
                f.A.copy_(a)
                f.B.copy_(b)
        resumed.end_task(lora2, t, settings())
    resumed.begin_task(lora2, 2, settings())
    for f, (a, b) in zip(lora2.factors("seq"), started):
        assert torch.equal(f.A, a) and torch.equal(f.B, b)


# ---------------------------------------------------------------- l2p


def brute_selection(emb, pool, ids, mask, m_prompts, length, k):
    """Per example: the k pool prompts whose mean vector has the largest cosine with the masked mean input
    embedding, most similar first; and those cosines."""
    out = []
    for b in range(ids.shape[0]):
        rows = [emb[int(ids[b, t])].double() for t in range(ids.shape[1]) if mask[b, t]]
        q = sum(rows) / len(rows)
        cos = []
        for m in range(m_prompts):
            key = pool[m * length : (m + 1) * length].double().mean(0)
            cos.append(float(q @ key / (q.norm() * key.norm())))
        order = sorted(range(m_prompts), key=lambda m: -cos[m])[:k]
        out.append((order, [cos[m] for m in order]))
    return out


def test_l2p_selects_the_top_k_keys_and_reads_them_first(model_dirs, model_kind, data_dir):
    loaded, lora, method, _ = setup(model_kind, model_dirs, "l2p")
    method.begin_task(lora, 0, settings())
    M, L, k = method.options.pool_size, method.options.prompt_length, method.options.top_k
    pool = method.pool.weight
    assert pool.shape[0] == M * L and [n for n, p in lora.model.named_parameters() if p.requires_grad] == [
        "prompt_encoder.pool.embedding.weight"
    ]
    emb = lora.model.word_embeddings.weight.detach()
    seen = {}
    spy = lora.model.get_base_model().register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    batch = train_batches(loaded, data_dir, n=4)[0]
    logits, targets = answer_logits(lora.model, batch, loaded.seq2seq, False)
    expected = brute_selection(emb, pool.detach(), batch["input_ids"], batch["attention_mask"], M, L, k)
    assert method.pool.selected.tolist() == [order for order, _ in expected]
    for b, (order, _) in enumerate(expected):  # the model reads [P_idx1; P_idx2; P_idx3; x]
        prompts = torch.cat([pool[m * L : (m + 1) * L] for m in order])
        torch.testing.assert_close(seen["inputs_embeds"][b, : k * L], prompts)
        assert seen["attention_mask"][b, : k * L].all()
        assert torch.equal(seen["attention_mask"][b, k * L :], batch["attention_mask"][b])
    lam = 0.5
    pull = method.batch_penalty(lora, settings(lam), batch, loaded.family, logits, targets)
    assert pull.item() == pytest.approx(-lam * sum(sum(c) for _, c in expected) / len(expected), rel=1e-5)
    # only the selected prompts train
    (task_loss(lora.model, batch, loaded.seq2seq, False) + pull).backward()
    chosen = {m for order, _ in expected for m in order}
    for m in range(M):
        assert bool(pool.grad[m * L : (m + 1) * L].any()) == (m in chosen)
    # generation selects from the prompt alone, the same way
    tasks = load_tasks(data_dir, ["mood"], load_instructions(), max_train=4, max_test=4)
    enc = encode(
        loaded.tokenizer, [Example(e.prompt, "") for e in tasks["mood"].splits["test"]], loaded.seq2seq, 256, 2
    )
    gen_batch = collate_prompts(enc, loaded.tokenizer.pad_token_id, loaded.seq2seq)
    spy.remove()
    lora.model.eval()
    with torch.no_grad():
        lora.model.generate(**gen_batch, max_new_tokens=2, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    expected = brute_selection(emb, pool.detach(), gen_batch["input_ids"], gen_batch["attention_mask"], M, L, k)
    assert method.pool.selected.tolist() == [order for order, _ in expected]


# ---------------------------------------------------------------- the methods table


def test_every_method_fills_the_table_attributes():
    for name, cls in REGISTRY.items():
        for attribute in ("venue", "trains", "stored_per_task", "source"):
            assert isinstance(getattr(cls, attribute), str) and getattr(cls, attribute), (name, attribute)
        assert isinstance(cls.needs_task_id, bool) and isinstance(cls.uses_replay, bool), name
    assert REGISTRY["per-task"].needs_task_id and REGISTRY["progprompt"].needs_task_id
    assert REGISTRY["replay"].uses_replay and not REGISTRY["n-lora"].uses_replay


def test_methods_table_fits_120_columns_and_lists_every_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 120
    firsts = {line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")}
    assert set(REGISTRY) <= firsts
    assert main(["methods", "slao"]) == 0
    entry = capsys.readouterr().out
    assert entry.startswith("slao\n") and "SECONDARY SOURCES ONLY" in entry and "2026 ICLR" in entry
    assert main(["methods", "no-such-method"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_docs_table_has_a_row_per_method(capsys):
    rows = set(re.findall(r"^\| `([^`]+)` \|", DOCS.read_text(), flags=re.MULTILINE))
    assert set(REGISTRY) <= rows, sorted(set(REGISTRY) - rows)
    assert main(["methods", "--markdown"]) == 0
    generated = capsys.readouterr().out
    assert all(f"| `{name}` |" in generated for name in REGISTRY)


# ---------------------------------------------------------------- resume


def _args(model_dir, data_dir, out, method):
    return toy_run_args(
        model_dir,
        data_dir,
        out,
        "--method",
        method,
        "--save-every",
        "1",
    )


@pytest.mark.parametrize("method,crash_at", [("slao", 3), ("l2p", 3), ("migu-lora", 4)])
def test_resumed_run_equals_the_uninterrupted_one(model_dirs, data_dir, tmp_path, monkeypatch, method, crash_at):
    """Interrupted at the start of task 2 (slao: its merge state is rebuilt from the saved adapter of task 1)
    or in the middle of task 2 (migu-lora: after a step checkpoint), then resumed: the same adapters, bit for
    bit, and the same predictions."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert main(_args(model_dirs["llama"], data_dir, whole, method)) == 0
    real, calls = train_mod._micro_step, {"n": 0}

    def crashing(*a, **k):  # task 1 has two micro-steps; call 3 starts task 2, call 4 follows its checkpoint
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "_micro_step", crashing)
    assert main(_args(model_dirs["llama"], data_dir, broken, method)) == 130
    monkeypatch.setattr(train_mod, "_micro_step", real)
    assert not (broken / "summary.json").exists()
    assert main(_args(model_dirs["llama"], data_dir, broken, method)) == 0
    for t in ("01-topic", "02-mood"):
        a = load_file(whole / "tasks" / t / "adapter" / "adapter_model.safetensors")
        b = load_file(broken / "tasks" / t / "adapter" / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), t
        assert (whole / "tasks" / t / "predictions.jsonl").read_text() == (
            broken / "tasks" / t / "predictions.jsonl"
        ).read_text()
