"""Training logs: train_log.jsonl per task (a line per optimizer step or interval, kept exact over a SIGKILL and
resume), the --report-to trackers (TensorBoard read back with its own reader), and the loss curves in the report."""

import importlib.util
import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import nlora_in_subprocess, slowed_nlora_script, start_script, toy_run_args

from nlora.cli import main
from nlora.trainlog import read_log

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
VOLATILE = {"examples_per_s", "elapsed_s", "time"}  # measured, not computed


def run_args(model_dir, data_dir, out, *extra, tasks="topic,mood"):
    """Six steps per task (12 examples, batch 2), n-lora."""
    small = ["--max-train-per-task", "12", "--batch-size", "2", "--max-target-length", "4"]
    return toy_run_args(model_dir, data_dir, out, *small, "--method", "n-lora", "--lambda", "1e-3", *extra, tasks=tasks)


def logs(out: Path) -> dict[str, list[dict]]:
    return {p.parent.name: read_log(p) for p in sorted(out.glob("tasks/*/train_log.jsonl"))}


def stable(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def test_one_line_per_optimizer_step(model_dirs, data_dir, tmp_path):
    out = tmp_path / "run"
    # 12 examples in batches of 2 = 6 micro-batches; 2 per optimizer step = 3 steps per task
    assert main(run_args(model_dirs["llama"], data_dir, out, "--grad-accum", "2")) == 0
    found = logs(out)
    assert list(found) == ["01-topic", "02-mood"]
    for task, rows in found.items():
        stats = json.loads((out / "tasks" / task / "train_stats.json").read_text())
        assert [r["step"] for r in rows] == [1, 2, 3] == list(range(1, stats["train_steps"] + 1))
        assert all(r["total_steps"] == 3 for r in rows)
        assert [r["epoch"] for r in rows] == pytest.approx([1 / 3, 2 / 3, 1.0], abs=1e-4)
        assert all(r["lr"] == 0.01 for r in rows)
        assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
        assert rows[0]["penalty"] == 0  # B starts at zero: no L1 penalty until the first update
        assert all(r["penalty"] > 0 for r in rows[1:])  # then n-lora's L1 penalty is logged beside the task loss
        assert all(r["grad_norm"] > 0 for r in rows)
        assert all(r["examples_per_s"] > 0 for r in rows)
        assert [r["elapsed_s"] for r in rows] == sorted(r["elapsed_s"] for r in rows)
        # each line's penalty is the mean of its step's micro-batches, so the lines average to the task's mean
        assert sum(r["penalty"] for r in rows) / 3 == pytest.approx(stats["mean_penalty"], rel=1e-3, abs=2e-6)


def test_log_every_interval_means_and_last_step(model_dirs, data_dir, tmp_path):
    every = tmp_path / "every"
    each = tmp_path / "each"
    assert main(run_args(model_dirs["t5"], data_dir, each, tasks="topic")) == 0
    assert main(run_args(model_dirs["t5"], data_dir, every, "--log-every", "4", tasks="topic")) == 0
    per_step = logs(each)["01-topic"]
    lines = logs(every)["01-topic"]
    assert [r["step"] for r in per_step] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in lines] == [4, 6]  # every 4th step, and the task's last
    # an interval's loss is the mean over its steps (one micro-batch each here); the gradient norm is the step's
    assert lines[0]["loss"] == pytest.approx(sum(r["loss"] for r in per_step[:4]) / 4, rel=1e-5)
    assert lines[1]["loss"] == pytest.approx(sum(r["loss"] for r in per_step[4:]) / 2, rel=1e-5)
    assert lines[1]["grad_norm"] == pytest.approx(per_step[5]["grad_norm"], rel=1e-5)


def test_bad_logging_settings_are_one_line(model_dirs, data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(run_args(model_dirs["t5"], data_dir, out, "--report-to", "tensorbored")) == 2
    err = capsys.readouterr().err
    assert "unknown tracker 'tensorbored'" in err and "tensorboard" in err and err.count("\n") == 1
    assert main(run_args(model_dirs["t5"], data_dir, out, "--log-every", "0")) == 2
    assert "log_every must be an integer >= 1" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert main(run_args(model_dirs["t5"], data_dir, out, "--report-to", "tensorboard")) == 2
    err = capsys.readouterr().err
    assert "pip install 'nlora[tensorboard]'" in err and err.count("\n") == 1
    assert not out.exists()  # all refused before anything is written


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Read the event files with TensorBoard's own reader (which also applies purge_step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard not installed (pip install 'nlora[tensorboard]')")
def test_tensorboard_events_read_back(model_dirs, data_dir, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(model_dirs["t5"], data_dir, out, "--report-to", "tensorboard")) == 0
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    scalars = tensorboard_scalars(out / "logs" / "tensorboard")
    rows = logs(out)
    jsonl = rows["01-topic"] + [{**r, "step": r["step"] + 6} for r in rows["02-mood"]]  # global steps
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 13))
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in jsonl], rel=1e-6)
    assert [v for _, v in scalars["train/grad_norm"]] == pytest.approx([r["grad_norm"] for r in jsonl], rel=1e-6)
    assert [v for _, v in scalars["train/task"]] == [1] * 6 + [2] * 6
    summary = json.loads((out / "summary.json").read_text())
    matrix = summary["accuracy_matrix"]
    assert scalars["eval/exact_match/topic"] == [(6, pytest.approx(matrix[0][0])), (12, pytest.approx(matrix[1][0]))]
    assert scalars["final/aa"] == [(12, pytest.approx(summary["aa"]))]
    manifest = json.loads((out / ".nlora-run.json").read_text())
    assert "logs" in manifest["outputs"]  # so --overwrite clears it with the rest of the run


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_wandb_offline_needs_no_network(model_dirs, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main(run_args(model_dirs["t5"], data_dir, out, "--report-to", "wandb", tasks="topic")) == 0
    runs = list((out / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def killed_when(script: Path, args: list[str], reached, what: str) -> None:
    """Run nlora in a subprocess (each micro-step slowed down) and SIGKILL it once ``reached()`` holds."""
    proc = start_script(script, args)
    deadline = time.time() + 240
    while not reached() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"run ended before {what}: {proc.stderr.read().decode()[-800:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_then_resume_keeps_every_step_once(model_dirs, data_dir, tmp_path):
    """Killed while its log is ahead of the step checkpoint (checkpoints every 2 steps, killed after an odd line):
    the resumed task cuts the log back to the checkpoint and trains those steps again, so the finished log
    equals an uninterrupted run's, line for line (TensorBoard's too, when installed)."""
    extra = ["--save-every", "2", *(["--report-to", "tensorboard"] if HAS_TENSORBOARD else [])]
    ref, out = tmp_path / "ref", tmp_path / "run"
    nlora_in_subprocess(run_args(model_dirs["llama"], data_dir, ref, *extra))  # processes against processes
    script = slowed_nlora_script(tmp_path, 0.25)
    log1, log2 = out / "tasks/01-topic/train_log.jsonl", out / "tasks/02-mood/train_log.jsonl"

    def ahead_of_checkpoint(log):
        return lambda: (log.parent / "checkpoint/state.pt").is_file() and len(read_log(log)) in (3, 5)

    killed_when(script, run_args(model_dirs["llama"], data_dir, out, *extra), ahead_of_checkpoint(log1), "task 1")
    assert len(read_log(log1)) in (3, 5)  # one line past the checkpoint (at step 2 or 4)
    killed_when(script, run_args(model_dirs["llama"], data_dir, out, *extra), ahead_of_checkpoint(log2), "task 2")
    nlora_in_subprocess(run_args(model_dirs["llama"], data_dir, out, *extra))
    done, expected = logs(out), logs(ref)
    assert [r["step"] for r in done["01-topic"]] == [1, 2, 3, 4, 5, 6]
    assert stable(done["01-topic"]) == stable(expected["01-topic"])
    assert stable(done["02-mood"]) == stable(expected["02-mood"])
    assert done["02-mood"][-1]["elapsed_s"] > 0
    if HAS_TENSORBOARD:
        got = tensorboard_scalars(out / "logs" / "tensorboard")["train/loss"]
        want = tensorboard_scalars(ref / "logs" / "tensorboard")["train/loss"]
        assert [s for s, _ in got] == list(range(1, 13))  # no step twice, none missing
        assert got == want


def test_report_plots_loss_curves(model_dirs, data_dir, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(model_dirs["t5"], data_dir, out)) == 0
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "![Training loss of every task (train_log.jsonl)](loss_curves.png)" in report
    png = (tmp_path / "rep" / "loss_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    for log in out.glob("tasks/*/train_log.jsonl"):  # a run made before the logs existed: no figure, no error
        log.unlink()
    assert main(["report", str(out), "--out", str(tmp_path / "rep2")]) == 0
    assert "loss_curves" not in (tmp_path / "rep2" / "report.md").read_text()


def test_resumed_log_is_cut_back_to_the_checkpoint(tmp_path):
    """Unit level: lines past the checkpoint's step and a line cut short by a kill are dropped on resume; with
    another --log-every the next line starts after the last kept one."""
    from nlora.trainlog import TaskLog

    path = tmp_path / "train_log.jsonl"
    log = TaskLog(path, every=1, run=None, index=0, name="t")
    log.begin(0, total_steps=6, batch_sizes=[2] * 12, grad_accum=2, epochs=1.0)
    losses = [float(i) for i in range(12)]
    for step in range(1, 6):
        log.step(step, 2 * step, losses, [0.0] * 12, 0.01, 1.0, elapsed=float(step))
    with open(path, "a") as f:
        f.write('{"step": 6, "total_st')  # killed mid-line
    assert [r["step"] for r in read_log(path)] == [1, 2, 3, 4, 5]
    assert read_log(path)[1]["loss"] == 2.5  # mean of micro-batches 2 and 3
    resumed = TaskLog(path, every=4, run=None, index=0, name="t")
    resumed.begin(3, total_steps=6, batch_sizes=[2] * 12, grad_accum=2, epochs=1.0)  # checkpoint at step 3
    assert [r["step"] for r in read_log(path)] == [1, 2, 3] and path.read_text().endswith("}\n")
    for step in range(4, 7):
        resumed.step(step, 2 * step, losses, [0.0] * 12, 0.01, 1.0, elapsed=float(step))
    rows = read_log(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 6]
    assert rows[3]["loss"] == 6.5 and rows[4]["loss"] == 9.5  # micro 6-7, then 8-11: after the last kept line
    assert not list(tmp_path.glob(".*.tmp"))
