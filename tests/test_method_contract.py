"""Every registered method through the same checks (PEFT-style table), then one test per method for what
only it does. Two tasks, a few steps, on tiny T5 and tiny GQA LLaMA."""

import json
from pathlib import Path

import pytest
import torch
from conftest import toy_run_args

from nlora.banks import make_bank
from nlora.batching import encode
from nlora.cli import main
from nlora.config import LoraSettings, TaskSettings
from nlora.data import Example, load_tasks
from nlora.families import DECODER_ONLY
from nlora.logits import answer_logits
from nlora.methods import REGISTRY, RunFacts, get_method, make_method
from nlora.models import default_target_modules, load_model
from nlora.prompts import load_instructions
from nlora.recipe import task_context
from nlora.runtime import Runtime
from nlora.train import TrainLoop, train_task

METHODS = sorted(REGISTRY)
TASKS = ["01-topic", "02-mood"]


def run_args(model_dir, data_dir, out, method):
    return toy_run_args(
        model_dir,
        data_dir,
        out,
        "--method",
        method,
        *(["--lambda", "0.5"] if method == "replay" else ["--lambda", "0.01"]),
    )


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("method", METHODS)
def test_method_contract(model_dirs, model_kind, data_dir, tmp_path, method, capsys):
    """Trains, saves, evaluates; `nlora eval` rebuilds the final model from the saved files alone and gives
    the same predictions as the run."""
    out = tmp_path / "run"
    assert main(run_args(model_dirs[model_kind], data_dir, out, method)) == 0
    said = "".join(capsys.readouterr())
    trains = {"prompt": "soft prompts (the model frozen)", "full": "every weight (full fine-tuning)", "lora": "LoRA r="}
    assert trains[REGISTRY[method].bank] in said  # the start line names what trains
    summary = json.loads((out / "summary.json").read_text())
    m = summary["accuracy_matrix"]
    assert summary["method"] == method and len(m) == 2 and all(isinstance(v, float) for v in m[1])
    assert summary["aa"] == pytest.approx(sum(m[1]) / 2)
    last = out / "tasks" / TASKS[-1]
    weights = "model.safetensors" if REGISTRY[method].bank == "full" else "adapter_model.safetensors"
    assert (last / "adapter" / weights).is_file()
    assert main(["eval", str(out), "--tasks", "topic,mood"]) == 0
    again = rows(out / "eval" / "after-02" / "topic+mood" / "predictions.jsonl")
    assert [(r["task"], r["prediction"]) for r in again] == [
        (r["task"], r["prediction"]) for r in rows(last / "predictions.jsonl")
    ]


def _fit(method_name, kind, model_dirs, data_dir, fold):
    loaded = load_model(str(model_dirs[kind]))
    bank = get_method(method_name).bank
    lora = make_bank(bank, loaded.model, LoraSettings(dropout=0.0), default_target_modules(loaded.model), loaded.family)
    method = make_method(method_name, {"lambda": 0.01}, RunFacts(n_tasks=2, fold_adapters=fold))
    tasks = load_tasks(data_dir, ["topic", "mood"], load_instructions(), max_train=8, max_test=4)
    splits = [tasks[n].splits["train"] for n in ("topic", "mood")]
    snapshots = []
    for t, name in enumerate(["topic", "mood"]):
        settings = TaskSettings(
            name=name, lr=5e-2, epochs=1, batch_size=4, grad_accum=1, method_options={"lambda": 0.01}
        )
        data = encode(loaded.tokenizer, method.train_examples(t, splits), loaded.seq2seq, 256, 8)
        method.begin_task(lora, t, settings)
        ctx = task_context(Runtime(loaded.tokenizer, loaded.family, torch.device("cpu")), lora, data, settings)
        if data:
            method.before_training(lora, t, settings, ctx)
            train_task(
                Runtime(loaded.tokenizer, loaded.family, torch.device("cpu")),
                lora,
                method,
                data,
                settings,
                TrainLoop(seed=t),
            )
        method.end_task(lora, t, settings, ctx)
        snapshots.append({n: p.detach().clone() for n, p in lora.model.named_parameters()})
    return lora, method, snapshots


@pytest.mark.parametrize("method", METHODS)
def test_frozen_parameters_stay_bit_identical(model_dirs, model_kind, data_dir, method):
    lora, m, (after1, after2) = _fit(method, model_kind, model_dirs, data_dir, fold=False)
    for name, before in after1.items():
        if m.bank == "full":
            break  # every weight trains
        if "lora_" not in name and "prompt_encoder" not in name:  # the base model never changes (folding off)
            assert torch.equal(after2[name], before), name
        elif m.fresh_adapter_per_task and ".task0." in name:  # earlier adapters are frozen
            assert torch.equal(after2[name], before), name
    trainable = [n for n in after2 if "lora_" in n or "prompt_encoder" in n or m.bank == "full"]
    trained = [n for n in trainable if not torch.equal(after2[n], after1.get(n, after2[n] + 1))]
    assert trained, "the second task changed no trainable parameter"


def test_replay_mixes_the_stated_fraction():
    method = make_method("replay", {"lambda": 0.05}, RunFacts(n_tasks=3))
    splits = [[Example(f"{t}{i}", "x") for i in range(100)] for t in "abc"]
    assert method.train_examples(0, splits) == splits[0]
    mixed = method.train_examples(2, splits)
    assert len(mixed) == 100 + 5 + 5 and mixed[:100] == splits[2]
    assert sum(e.prompt.startswith("a") for e in mixed) == 5 and sum(e.prompt.startswith("b") for e in mixed) == 5
    assert method.train_examples(2, splits) == mixed  # the same memory every time (seeded)
    default = make_method("replay", run=RunFacts(n_tasks=2))
    assert len(default.train_examples(1, splits[:2])) == 100 + 2  # default 2%


def test_ewc_penalty_zero_at_anchor_and_grows_away(model_dirs, data_dir):
    lora, method, _ = _fit("ewc", "llama", model_dirs, data_dir, fold=False)
    settings = TaskSettings(name="x", lr=1e-3, epochs=1, batch_size=4, grad_accum=1, method_options={"lambda": 10.0})
    assert method.penalty(lora, settings).item() == 0.0
    assert sum(f.sum().item() for f in method.fisher) > 0
    direction = [torch.randn_like(p) for p in method.params]
    values = []
    for step in (1e-3, 2e-3):
        with torch.no_grad():
            for p, a, d in zip(method.params, method.anchor, direction):
                p.copy_(a + step * d)
        values.append(method.penalty(lora, settings).item())
    assert 0 < values[0] < values[1] and values[1] / values[0] == pytest.approx(4.0, rel=1e-3)  # quadratic


def test_l2_penalty_equals_the_formula_and_its_gradient(model_dirs, data_dir):
    lora, method, _ = _fit("l2", "llama", model_dirs, data_dir, fold=False)
    settings = TaskSettings(name="x", lr=1e-3, epochs=1, batch_size=4, grad_accum=1, method_options={"lambda": 3.0})
    assert method.penalty(lora, settings).item() == 0.0  # at the anchor just set by end_task
    torch.manual_seed(0)
    with torch.no_grad():
        for p in method.params:
            p.add_(1e-2 * torch.randn_like(p))
    brute = 3.0 / 2 * sum(float(((p.double() - a.double()) ** 2).sum()) for p, a in zip(method.params, method.anchor))
    value = method.penalty(lora, settings)
    assert value.item() == pytest.approx(brute, rel=1e-5) and brute > 0
    grads = torch.autograd.grad(value, method.params)
    for g, p, a in zip(grads, method.params, method.anchor):  # d/dtheta = lambda (theta - theta*)
        assert torch.allclose(g.float(), 3.0 * (p.detach().float() - a), rtol=1e-5, atol=1e-8)


def test_mtl_sees_all_tasks_and_is_evaluated_once(model_dirs, data_dir, tmp_path):
    method = make_method("mtl", run=RunFacts(n_tasks=3))
    splits = [[Example(f"{t}{i}", "x") for i in range(5)] for t in "abc"]
    assert method.train_examples(0, splits) == [] and method.train_examples(1, splits) == []
    assert method.train_examples(2, splits) == splits[0] + splits[1] + splits[2]
    out = tmp_path / "mtl"
    assert main(run_args(model_dirs["t5"], data_dir, out, "mtl")) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["accuracy_matrix"][0] == [None, None] and s["bwt"] is None and s["aa"] is not None
    assert s["per_task"][0]["train_steps"] == 0 and s["per_task"][1]["train_examples"] == 16
    assert not (out / "tasks" / "01-topic" / "adapter").exists()


def test_per_task_routes_by_task_id(model_dirs, data_dir, tmp_path):
    method = make_method("per-task", run=RunFacts(n_tasks=2))
    assert method.eval_routes(1, [0, 1]) == [(["task0"], [0]), (["task1"], [1])]
    assert_task_one_answered_as_before(model_dirs, data_dir, tmp_path / "pt", "per-task")


def assert_task_one_answered_as_before(model_dirs, data_dir, out, method):
    """Task 1 is answered by its own frozen adapter (or prompt stack) after task 2: the same predictions,
    BWT exactly 0."""
    assert main(run_args(model_dirs["llama"], data_dir, out, method)) == 0
    s = json.loads((out / "summary.json").read_text())
    first = [r["prediction"] for r in rows(out / "tasks" / "01-topic" / "predictions.jsonl")]
    later = [r["prediction"] for r in rows(out / "tasks" / "02-mood" / "predictions.jsonl") if r["task"] == "topic"]
    assert first == later and s["bwt"] == 0.0


def test_lwf_distillation_is_zero_before_the_task_moves_the_adapter(model_dirs, data_dir):
    from nlora.batching import collate_train

    lora, method, _ = _fit("lwf", "llama", model_dirs, data_dir, fold=False)
    settings = TaskSettings(name="third", lr=1e-3, epochs=1, batch_size=4, grad_accum=1, method_options={"lambda": 1.0})
    method.begin_task(lora, 2, settings)  # the teacher is the adapter as it is now
    loaded = load_model(str(model_dirs["llama"]))
    tasks = load_tasks(data_dir, ["topic"], load_instructions(), max_train=4, max_test=4)
    batch = collate_train(encode(loaded.tokenizer, tasks["topic"].splits["train"], False, 256, 8), 0, False)

    def penalty():  # as the training step calls it: with the task loss's own answer logits
        logits, targets = answer_logits(lora.model, batch, False, False)
        return method.batch_penalty(lora, settings, batch, DECODER_ONLY, logits, targets)

    assert penalty().item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for f in lora.factors(lora.current):
            f.B.add_(0.05 * torch.randn_like(f.B))
    moved = penalty()
    assert moved.item() > 1e-4 and moved.requires_grad
    # brute force: KL over every position that predicts an answer token, from full-sequence logits
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        lora.model.base_model.set_adapter(["lwf_teacher"])
        teacher = lora.model(**inputs).logits[:, :-1]
        lora.activate([lora.current])
        student = lora.model(**inputs).logits[:, :-1]
    mask, t = batch["labels"][:, 1:] != -100, method.options.temperature
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(student[mask] / t, -1),
        torch.log_softmax(teacher[mask] / t, -1),
        log_target=True,
        reduction="batchmean",
    )
    assert moved.item() == pytest.approx(settings.method_options["lambda"] * t * t * kl.item(), rel=1e-4)
    assert [n for n, p in lora.model.named_parameters() if p.requires_grad and "lwf_teacher" in n] == []


def test_seq_ft_trains_every_weight_and_saves_a_whole_model(model_dirs, data_dir, tmp_path):
    lora, method, (after1, after2) = _fit("seq-ft", "t5", model_dirs, data_dir, fold=False)
    assert not any("lora_" in n for n in after2)
    changed = [n for n in after2 if not torch.equal(after2[n], after1[n])]
    assert len(changed) > len(after2) // 2  # the whole model moves, not a few adapter matrices
    lora.save(lora.current, tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file() and (tmp_path / "saved" / "config.json").is_file()


def test_analysis_refuses_seq_ft_and_names_mtl_task(model_dirs, data_dir, tmp_path, capsys):
    ft, mtl = tmp_path / "ft", tmp_path / "mtl"
    assert main(run_args(model_dirs["t5"], data_dir, ft, "seq-ft")) == 0
    assert main(["analyze", str(ft)]) == 2
    assert "trains no LoRA adapters" in capsys.readouterr().err
    assert main(run_args(model_dirs["t5"], data_dir, mtl, "mtl")) == 0
    assert main(["analyze", str(mtl)]) == 0
    assert json.loads((mtl / "analysis.json").read_text())["tasks"] == ["mood"]  # its one adapter, at position 2


def test_progprompt_stacks_frozen_earlier_prompts(model_dirs, data_dir, tmp_path):
    lora, method, (after1, after2) = _fit("progprompt", "llama", model_dirs, data_dir, fold=False)
    m = method.options.tokens_per_task
    first, second = "prompt_encoder.task0.embedding.weight", "prompt_encoder.task1.embedding.weight"
    assert after1[first].shape[0] == m and after2[second].shape[0] == 2 * m
    assert [n for n, p in lora.model.named_parameters() if p.requires_grad] == [second]
    assert torch.equal(after2[first], after1[first])  # task 1's prompt untouched by task 2
    assert torch.equal(after2[second][m:], after1[first])  # and carried, frozen, behind task 2's new tokens
    assert not torch.equal(after2[second][:m], after1[first])  # task 2's own tokens are new
    assert_task_one_answered_as_before(model_dirs, data_dir, tmp_path / "pp", "progprompt")


def test_seq_prompt_trains_only_the_soft_prompt(model_dirs, data_dir):
    lora, method, (after1, after2) = _fit("seq-prompt", "llama", model_dirs, data_dir, fold=False)
    trainable = [n for n, p in lora.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("prompt_encoder.") for n in trainable)
    (name,) = trainable
    assert lora.model.get_parameter(name).shape[0] == method.options.virtual_tokens == 20
    assert not torch.equal(after2[name], after1[name])  # the one prompt keeps training on task 2
    assert all(torch.equal(after2[n], after1[n]) for n in after1 if n != name)
