"""Resume after a crash (in-process interruptions and SIGKILL), guards, and bad input against a run directory."""

import hashlib
import json
import os
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import nlora_in_subprocess, slowed_nlora_script, start_script, toy_run_args
from safetensors.torch import load_file

import nlora.evaluate as evaluate_mod
import nlora.recipe as recipe_mod
import nlora.train as train_mod
from nlora.cli import main
from nlora.errors import NloraError
from nlora.runtime import Runtime

TASKS = ["01-topic", "02-mood"]
VOLATILE = {
    "wall_time_s",
    "cpu_time_s",
    "resumed",
    "train_seconds",
    "train_cpu_seconds",
    "eval_seconds",
    "eval_cpu_seconds",
    "predict_runtime",
}


def args_for(model_dir, data_dir, out, *extra):
    """Six steps per task (12 examples, batch 2), o-lora, a step checkpoint after every step."""
    small = ["--max-train-per-task", "12", "--max-test-per-task", "6", "--batch-size", "2", "--eval-batch-size", "2"]
    return toy_run_args(model_dir, data_dir, out, *small, "--method", "o-lora", "--save-every", "1", *extra)


def stable(obj):
    """A summary without the figures that measure time."""
    if isinstance(obj, dict):
        return {k: stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [stable(v) for v in obj]
    return obj


def assert_same_run(a: Path, b: Path) -> None:
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert stable(sa) == stable(sb)
    for t in TASKS:
        ta = load_file(a / "tasks" / t / "adapter" / "adapter_model.safetensors")
        tb = load_file(b / "tasks" / t / "adapter" / "adapter_model.safetensors")
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), t
        assert (a / "tasks" / t / "predictions.jsonl").read_text() == (
            b / "tasks" / t / "predictions.jsonl"
        ).read_text()
        assert not (b / "tasks" / t / "checkpoint").exists()  # removed once the task is trained


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(model_dirs, tmp_path_factory):
    """One uninterrupted run per model kind, shared by the tests of this module."""
    from conftest import write_task

    root = tmp_path_factory.mktemp("ref")
    data = root / "CL"
    for name in ("topic", "mood"):
        write_task(data, name)
    runs = {}
    for kind in ("t5", "llama"):
        out = root / f"run-{kind}"
        assert main(args_for(model_dirs[kind], data, out)) == 0
        runs[kind] = out
    return data, runs


class Crash(Exception):
    pass


def crash_after(monkeypatch, module, name, calls: int):
    """Make module.name raise Crash on its ``calls``-th call (the process dies there)."""
    real, count = getattr(module, name), {"n": 0}

    def wrapper(*a, **k):
        count["n"] += 1
        if count["n"] == calls:
            raise Crash(name)
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapper)


def crashed_run(monkeypatch, target: tuple, args: list[str]) -> None:
    """`nlora run ARGS` dying at TARGET (module, function name, call count), as crash_after makes it."""
    with monkeypatch.context() as m:
        crash_after(m, *target)
        with pytest.raises(Crash):
            main(args)


@pytest.mark.parametrize("kind", ["t5", "llama"])
@pytest.mark.parametrize("where", ["mid task 1", "mid task 2", "between tasks", "during evaluation"])
def test_interrupted_then_resumed_equals_uninterrupted(
    reference, model_dirs, tmp_path, monkeypatch, capsys, where, kind
):
    data, runs = reference
    out = tmp_path / "run"
    target = {
        "mid task 1": (train_mod, "_micro_step", 4),
        "mid task 2": (train_mod, "_micro_step", 6 + 3),
        "between tasks": (recipe_mod, "train_or_reuse", 2),
        "during evaluation": (evaluate_mod, "_generate_batch", 3 + 2),
    }[where]
    crashed_run(monkeypatch, target, args_for(model_dirs[kind], data, out))
    assert not (out / "summary.json").exists()
    if where.startswith("mid task"):
        assert list(out.glob("tasks/*/checkpoint/state.pt"))  # a step checkpoint was there to resume from
    capsys.readouterr()
    assert main(args_for(model_dirs[kind], data, out)) == 0
    assert "CPU thread(s)" not in capsys.readouterr().out  # the same thread count: nothing to warn about
    assert json.loads((out / "summary.json").read_text())["resumed"] is True
    assert_same_run(runs[kind], out)


def test_resume_with_another_cpu_thread_count_says_results_will_differ(
    reference, model_dirs, tmp_path, monkeypatch, capsys
):
    data, _ = reference
    out = tmp_path / "run"
    crashed_run(monkeypatch, (train_mod, "_micro_step", 4), args_for(model_dirs["t5"], data, out))
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # conftest puts it back after the test
    assert main(args_for(model_dirs["t5"], data, out)) == 0
    said = capsys.readouterr().out
    assert f"written with {threads} CPU thread(s), resumed with {threads + 1}" in said


@pytest.mark.parametrize("kept", [1000.0, "absent"])
def test_cpu_time_carries_across_a_resume(reference, model_dirs, tmp_path, monkeypatch, kept):
    """The checkpoint keeps the task's CPU time so far and the resumed run adds to it; a checkpoint of an earlier
    version (no CPU time) leaves that task's and the run's CPU time unknown, not undercounted."""
    data, _ = reference
    out = tmp_path / "run"
    crashed_run(monkeypatch, (train_mod, "_micro_step", 4), args_for(model_dirs["t5"], data, out))
    state_file = out / "tasks/01-topic/checkpoint/state.pt"
    blob = torch.load(state_file, weights_only=True)
    assert blob["cpu_seconds"] > 0
    if kept == "absent":
        del blob["cpu_seconds"]
    else:
        blob["cpu_seconds"] = kept
    torch.save(blob, state_file)
    assert main(args_for(model_dirs["t5"], data, out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    first, second = summary["per_task"]
    assert second["train_cpu_seconds"] > 0 and second["eval_cpu_seconds"] > 0
    if kept == "absent":
        assert first["train_cpu_seconds"] is None and summary["cpu_time_s"] is None
    else:
        assert kept < first["train_cpu_seconds"] < kept + summary["wall_time_s"] * (torch.get_num_threads() + 1)
        parts = [p[k] for p in (first, second) for k in ("train_cpu_seconds", "eval_cpu_seconds")]
        assert summary["cpu_time_s"] == pytest.approx(sum(parts), abs=0.02)


# How far a resumed run that is right may end from the uninterrupted one on this CPU, in the largest adapter entry
# (entries ~0.1): seen once in CI, 1e-5 (llama, resumed mid task 2 in another process). A resume that is wrong
# ends far beyond it: measured on this toy run (llama, resumed mid task 2) without restoring the optimizer state
# 0.048, without restoring the RNG 0.020, one step skipped 0.024.
RESUME_NOISE = 1e-4

KILL_POINTS = {  # name -> condition on the run directory at which the process gets SIGKILL
    "mid task 1": lambda o: (o / "tasks/01-topic/checkpoint/state.pt").is_file(),
    "between tasks": lambda o: (o / "tasks/01-topic/predict_results.json").is_file(),
    "mid task 2": lambda o: (o / "tasks/02-mood/checkpoint/state.pt").is_file(),
    "during evaluation": lambda o: (o / "tasks/02-mood/train_stats.json").is_file(),
}


def adapter_differences(a: Path, b: Path) -> dict[str, float]:
    """Per task, the largest absolute difference between the two runs' adapter tensors (0.0: equal bit for bit)."""
    out = {}
    for t in TASKS:
        ta = load_file(a / "tasks" / t / "adapter" / "adapter_model.safetensors")
        tb = load_file(b / "tasks" / t / "adapter" / "adapter_model.safetensors")
        assert ta.keys() == tb.keys(), t
        out[t] = max(float((ta[k] - tb[k]).abs().max()) for k in ta)
    return out


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_sigkill_at_several_points_then_resume(model_dirs, tmp_path, kind):
    """One run killed with SIGKILL at each point in turn (resumed in between), then finished by a resume.

    Every run here is a fresh process with the same environment, the uninterrupted reference included, so the
    comparison does not depend on what earlier tests left in the pytest process. Bit for bit is what a resume
    gives where the process repeats its rounding (the in-process tests above ask exactly that). Across processes
    the CPU's math library may round a product otherwise in the last bit (the resumed process lays its memory out
    differently: it loads its earlier adapters from disk), so there the resumed run must equal the reference
    within RESUME_NOISE, or as closely as two uninterrupted runs do where those already differ."""
    from conftest import write_task

    data = tmp_path / "CL"
    for name in ("topic", "mood"):
        write_task(data, name)
    reference, out = tmp_path / "reference", tmp_path / "run"
    nlora_in_subprocess(args_for(model_dirs[kind], data, reference))
    script = slowed_nlora_script(tmp_path, 0.2, eval_delay=0.3)
    kills = []  # what the run directory held at each kill, for the failure message
    for point, reached in KILL_POINTS.items():
        proc = start_script(script, args_for(model_dirs[kind], data, out))
        deadline = time.time() + 180
        while not reached(out) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"run ended before {point}: {proc.stderr.read().decode()[-500:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (out / "summary.json").exists(), point
        kills.append((point, sorted(str(p.relative_to(out)) for p in out.glob("tasks/*/*"))))
    nlora_in_subprocess(args_for(model_dirs[kind], data, out))
    differences = adapter_differences(reference, out)
    if any(differences.values()):
        again = tmp_path / "reference-again"
        nlora_in_subprocess(args_for(model_dirs[kind], data, again))
        repeat = adapter_differences(reference, again)
        for t in TASKS:
            assert differences[t] <= max(100 * repeat[t], RESUME_NOISE), (t, differences, repeat, kills)
        warnings.warn(
            f"the resumed run equals the uninterrupted one to {max(differences.values()):.1e}, not bit for bit "
            f"(two uninterrupted runs: {repeat})",
            stacklevel=1,
        )
        return
    assert_same_run(reference, out)


def test_complete_run_is_not_redone(reference, model_dirs, capsys):
    data, runs = reference
    before = tree_digest(runs["t5"])
    assert main(args_for(model_dirs["t5"], data, runs["t5"])) == 0
    captured = capsys.readouterr()
    assert "nothing to do" in captured.out + captured.err
    assert tree_digest(runs["t5"]) == before


def bad_input_cases(data: Path, tmp_path: Path) -> dict:
    """name -> (how to break the input, extra flags, expected text). Applied to a copy of the data."""
    topic = data / "TC" / "topic"
    return {
        "truncated json": (
            lambda: (topic / "train.json").write_text('[{"label": "World", "sen'),
            [],
            "malformed JSON at line 1",
        ),
        "missing labels.json": (lambda: (topic / "labels.json").unlink(), [], "missing data files"),
        "unknown label": (
            lambda: (topic / "test.json").write_text('[{"label": "Space", "sentence": "a"}]'),
            [],
            "has label 'Space'",
        ),
        "empty split": (lambda: (topic / "train.json").write_text("[]"), [], "split is empty"),
        "wrong preset": (lambda: None, ["--preset", "t5-order9"], "unknown preset 't5-order9'"),
        "mismatched run directory": (lambda: None, ["--lr", "0.02"], "holds a run with different settings"),
        "mismatched task order": (lambda: None, ["--tasks", "mood,topic"], "holds a run with different settings"),
        "negative save-every": (lambda: None, ["--save-every", "-1"], "save_every must be >= 0"),
    }


BAD = [
    "truncated json",
    "missing labels.json",
    "unknown label",
    "empty split",
    "wrong preset",
    "mismatched run directory",
    "mismatched task order",
    "negative save-every",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_leaves_interrupted_run_untouched(reference, model_dirs, tmp_path, monkeypatch, capsys, case):
    import shutil

    src, _ = reference
    data = tmp_path / "CL"
    shutil.copytree(src, data)
    out = tmp_path / "run"
    with monkeypatch.context() as m:  # an interrupted run: task 1 done, task 2 mid-way
        crash_after(m, train_mod, "_micro_step", 6 + 3)
        with pytest.raises(Crash):
            main(args_for(model_dirs["t5"], data, out))
    before = tree_digest(out)
    breaker, extra, expect = bad_input_cases(data, tmp_path)[case]
    breaker()
    args = args_for(model_dirs["t5"], data, out)
    if case == "wrong preset":
        args = [a for a in args if a not in ("--tasks", "topic,mood")]
    for flag, value in zip(extra[::2], extra[1::2]):
        args += [flag, value]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nlora: error: ") and expect in err[0], err
    assert tree_digest(out) == before


def test_non_finite_loss_names_step_and_keeps_checkpoint(reference, model_dirs, tmp_path, monkeypatch):
    from nlora.methods.nlora import NLoRA

    data, _ = reference
    out = tmp_path / "run"
    calls = {"n": 0}

    def bad_penalty(self, lora, settings):
        calls["n"] += 1
        return torch.tensor(float("nan")) if calls["n"] == 4 else None

    monkeypatch.setattr(NLoRA, "penalty", bad_penalty)
    args = args_for(model_dirs["t5"], data, out, "--method", "n-lora", "--lambda", "0.1")
    with pytest.raises(NloraError, match="non-finite loss .* at step 4 of task topic"):
        recipe_mod.run(*_resolved(args))
    blob = torch.load(out / "tasks/01-topic/checkpoint/state.pt", weights_only=True)
    assert blob["micro"] == 3  # the last good step's checkpoint stays


def _resolved(args):
    from nlora.cli import OVERRIDE_KEYS, build_parser
    from nlora.config import resolve

    ns = build_parser().parse_args(args)
    return resolve(preset=None, config_file=None, overrides={k: getattr(ns, k) for k in OVERRIDE_KEYS}), False


def test_out_of_memory_in_evaluation_halves_the_batch(model_dirs, monkeypatch, capsys):
    from nlora.models import load_model

    loaded = load_model(str(model_dirs["llama"]))
    prompts = [f"Task:TC\nDataset:topic\nsentence {i} {'x' * i}\nAnswer:" for i in range(7)]
    rt = Runtime(loaded.tokenizer, loaded.family, torch.device("cpu"), max_source=64, max_target=4, eval_batch_size=8)
    expected = evaluate_mod.generate(loaded.model, rt, prompts)
    real, sizes = evaluate_mod._generate_batch, []

    def small_memory(model, rt, encoded, *a, **kw):
        sizes.append(len(encoded))
        if len(encoded) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(model, rt, encoded, *a, **kw)

    monkeypatch.setattr(evaluate_mod, "_generate_batch", small_memory)
    got = evaluate_mod.generate(loaded.model, rt, prompts)
    assert got == expected
    assert sizes[:3] == [7, 3, 1] and max(sizes[3:]) <= 2 and sum(sizes[2:]) == 7
    assert "out of memory in evaluation: batch of 7 -> 3" in capsys.readouterr().out
