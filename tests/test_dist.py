"""Two CPU processes (gloo, through `accelerate launch`) train and evaluate like one process.

Tolerance: adapters within rtol 1e-4 / atol 1e-5 (float summation order differs across ranks); the
accuracy matrices and training step counts identical."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nlora.cli import main

# The shipped multi-GPU config; on a machine without GPUs nlora asks Accelerate for gloo on the CPU.
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "ddp-gpus.yaml"


def run_args(model_dir, data_dir, out):
    # dropout 0: ranks draw different dropout masks than one process would
    return ["run", "--model", str(model_dir), "--data-dir", str(data_dir), "--output-dir", str(out),
            "--tasks", "topic,mood", "--max-train-per-task", "12", "--max-test-per-task", "7", "--batch-size", "4",
            "--grad-accum", "2", "--eval-batch-size", "2", "--max-target-length", "6", "--lr", "0.01",
            "--lora-dropout", "0", "--method", "n-lora", "--lambda", "0.001", "--device", "cpu"]


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_two_processes_match_one(model_dirs, data_dir, tmp_path, kind):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(run_args(model_dirs[kind], data_dir, one)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
                           "--num_processes", "2", "-m", "nlora.cli", *run_args(model_dirs[kind], data_dir, two)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s2["processes"] == 2 and s1["processes"] == 1
    assert s2["accuracy_matrix"] == s1["accuracy_matrix"]
    for a, b in zip(s1["per_task"], s2["per_task"]):
        assert a["train_steps"] == b["train_steps"] and a["train_examples"] == b["train_examples"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-6)
    for task in ("01-topic", "02-mood"):
        t1 = load_file(one / "tasks" / task / "adapter" / "adapter_model.safetensors")
        t2 = load_file(two / "tasks" / task / "adapter" / "adapter_model.safetensors")
        assert t1.keys() == t2.keys()
        for k in t1:
            assert torch.allclose(t1[k], t2[k], rtol=1e-4, atol=1e-5), (task, k, (t1[k] - t2[k]).abs().max())
        # every test example predicted exactly once, in the one-process order
        p1 = (one / "tasks" / task / "predictions.jsonl").read_text().splitlines()
        p2 = (two / "tasks" / task / "predictions.jsonl").read_text().splitlines()
        assert [json.loads(x)["prompt"] for x in p1] == [json.loads(x)["prompt"] for x in p2]
    # rank 1 wrote nothing of its own: the two trees hold the same file names
    assert sorted(p.relative_to(one).as_posix() for p in one.rglob("*")) == \
        sorted(p.relative_to(two).as_posix() for p in two.rglob("*"))
