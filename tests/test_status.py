"""`nlora status RUN_DIR`: a finished run, a running one, one killed mid-task, and directories that hold no run."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import slowed_nlora_script, start_script, toy_run_args

from nlora.cli import main
from nlora.status import describe, estimate_left, read_status
from nlora.trainlog import read_log


def run_args(model_dir, data_dir, out):
    """Six steps per task (12 examples, batch 2), seq-lora, a checkpoint every 2 steps."""
    small = ["--max-train-per-task", "12", "--batch-size", "2", "--max-target-length", "4"]
    return toy_run_args(model_dir, data_dir, out, *small, "--method", "seq-lora", "--save-every", "2")


def snapshot(root: Path) -> dict:
    """Every file and folder with its size and modification time: status must change none of them."""
    return {
        str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    } | {".": root.stat().st_mtime_ns}


def status_of(run_dir: Path, capsys, still: bool = True) -> str:
    # A running run changes its directory itself (its checkpoint's temporary file can vanish between listing and
    # stat), so the read-only check is made only on a directory that nothing else is writing.
    before = snapshot(run_dir) if still else None
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    if still:
        assert snapshot(run_dir) == before  # read-only
    return out


def test_finished_run(model_dirs, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(model_dirs["t5"], data_dir, out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    text = status_of(out, capsys)
    assert f"{out}: seq-lora on 2 task(s) (topic -> mood)" in text
    assert f"complete: 2 of 2 tasks, AA {summary['aa']:.2f}" in text
    assert estimate_left(read_status(out)) == 0.0


def test_running_then_killed_then_resumed(model_dirs, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    script = slowed_nlora_script(tmp_path, 0.3)
    log = out / "tasks/01-topic/train_log.jsonl"
    proc = start_script(script, run_args(model_dirs["llama"], data_dir, out))
    try:
        deadline = time.time() + 240
        while len(read_log(log)) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-800:]
        text = status_of(out, capsys, still=False)  # while the run is going
        step = read_status(out).tasks[0].step
        assert 2 <= step < 6
        assert f"running: process {proc.pid} holds the run directory" in text
        assert "tasks done: 0 of 2" in text
        assert f"now: task 1 topic: step {step} of 6" in text and "loss " in text
        assert "estimated time left: about " in text
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    status = read_status(out)  # killed mid-task
    text = "\n".join(describe(status))
    assert status.holder is None and "not running" in text and "resumes it" in text
    step = status.tasks[0].step
    assert f"now: task 1 topic: step {step} of 6" in text
    left = estimate_left(status)
    per_step = status.tasks[0].last["elapsed_s"] / step
    assert left == pytest.approx(per_step * (6 - step) + per_step * 6)  # this task's rest, then one more like it

    assert main(run_args(model_dirs["llama"], data_dir, out)) == 0
    assert "complete: 2 of 2 tasks" in status_of(out, capsys)


def test_between_tasks_and_not_started(model_dirs, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(model_dirs["t5"], data_dir, out)) == 0
    (out / "summary.json").unlink()  # as if stopped during task 2's evaluation
    (out / "tasks/02-mood/predict_results.json").unlink()
    text = status_of(out, capsys)
    assert "tasks done: 1 of 2 (topic)" in text and "now: task 2 mood: trained (6 steps), evaluating" in text
    for d in (out / "tasks").iterdir():  # as if stopped before the first step
        for f in d.rglob("*"):
            if f.is_file():
                f.unlink()
    text = status_of(out, capsys)
    assert "tasks done: 0 of 2" in text and "now: task 1 topic: not started" in text
    assert "estimated time left: unknown" in text


def test_folder_of_runs(model_dirs, data_dir, tmp_path, capsys):
    """A folder holding runs (runs/demo, a benchmark's output) shows each of them."""
    for name in ("a", "b"):
        assert main(run_args(model_dirs["t5"], data_dir, tmp_path / "runs" / name)) == 0
    capsys.readouterr()
    text = status_of(tmp_path / "runs", capsys)
    assert text.count("complete: 2 of 2 tasks") == 2
    assert text.index(str(tmp_path / "runs" / "a")) < text.index(str(tmp_path / "runs" / "b"))


def test_missing_and_non_run_directories(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"nlora: error: run directory not found: {tmp_path / 'nope'}\n"
    (tmp_path / "plain").mkdir()
    assert main(["status", str(tmp_path / "plain")]) == 2
    assert "is not an nlora run directory (no config.yaml)" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["status", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err
