"""Two CPU processes (gloo, through `accelerate launch`) train and evaluate like one process.

Tolerance: adapters within rtol 1e-4 / atol 1e-5 (float summation order differs across ranks); the
accuracy matrices and training step counts identical."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nlora.cli import main
from nlora.dist import Dist, _check_deepspeed_settings, _check_fsdp_settings, machine_name
from nlora.errors import NloraError
from nlora.trainlog import read_log

# The shipped multi-GPU config; on a machine without GPUs nlora asks Accelerate for gloo on the CPU.
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "ddp-gpus.yaml"
FSDP_CONFIG = CONFIG.with_name("fsdp-gpus.yaml")
ZERO3_CONFIG = CONFIG.with_name("deepspeed-zero3.yaml")


def run_args(model_dir, data_dir, out, n_train=12, n_test=7, method="n-lora", lam="0.001"):
    # dropout 0: ranks draw different dropout masks than one process would
    coefficient = ["--lambda", lam] if lam else []
    return [
        "run",
        "--model",
        str(model_dir),
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(out),
        "--tasks",
        "topic,mood",
        "--max-train-per-task",
        str(n_train),
        "--max-test-per-task",
        str(n_test),
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--eval-batch-size",
        "2",
        "--max-target-length",
        "6",
        "--lr",
        "0.01",
        "--lora-dropout",
        "0",
        "--method",
        method,
        *coefficient,
        "--device",
        "cpu",
    ]


def launch(config: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(config),
            "--num_processes",
            "2",
            "-m",
            "nlora.cli",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def run_one_process(args: list[str]) -> int:
    """The one-process reference at the ranks' thread count (``launch``: OMP_NUM_THREADS=1): a matmul split over
    2 threads sums in another order, and on a CPU without AVX-512 that alone moved one LoRA A entry by 2.2e-5
    after two tasks, past the tolerance that holds sharding to account."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(args)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_two_processes_match_one(model_dirs, data_dir, tmp_path, kind):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_one_process(run_args(model_dirs[kind], data_dir, one)) == 0
    proc = launch(CONFIG, run_args(model_dirs[kind], data_dir, two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(one, two)


@pytest.mark.parametrize(
    "kind,method,lam",
    [
        ("t5", "n-lora", "0.001"),
        ("llama", "n-lora", "0.001"),
        # what each of these does beyond a new adapter: stacked old A (o-lora), a teacher adapter added after
        # sharding (lwf), Fisher passes (ewc), routing by task (per-task), one evaluation of the union (mtl)
        ("llama", "o-lora", "0.5"),
        ("llama", "lwf", "1.0"),
        ("llama", "ewc", "100"),
        ("llama", "per-task", None),
        ("llama", "mtl", None),
    ],
)
def test_fsdp_two_processes_match_one(model_dirs, data_dir, tmp_path, kind, method, lam):
    """FSDP2 shards the base weights over 2 gloo ranks. 13 training examples in batches of 4 leave a last
    micro-batch of 1, and 5 test examples in batches of 2 make 3 batches: rank 1 runs filler passes in both."""
    summary = assert_sharded_run_matches_one(FSDP_CONFIG, "FSDP", model_dirs[kind], data_dir, tmp_path, method, lam)
    assert summary["fsdp"] is True


@pytest.mark.parametrize(
    "kind,method,lam", [("t5", "n-lora", "0.001"), ("llama", "n-lora", "0.001"), ("llama", "o-lora", "0.5")]
)
def test_deepspeed_zero3_two_processes_match_one(model_dirs, data_dir, tmp_path, kind, method, lam):
    """DeepSpeed ZeRO-3 partitions the base weights over 2 gloo ranks (DeepSpeed's CPU accelerator); the same
    uneven batches as the FSDP test, so rank 1 runs filler passes."""
    pytest.importorskip("deepspeed")
    summary = assert_sharded_run_matches_one(
        ZERO3_CONFIG, "DeepSpeed ZeRO-3", model_dirs[kind], data_dir, tmp_path, method, lam
    )
    assert summary["sharding"] == "DeepSpeed ZeRO-3" and summary["fsdp"] is False


def assert_sharded_run_matches_one(config, sharder, model_dir, data_dir, tmp_path, method, lam) -> dict:
    """13 training examples in batches of 4 and 5 test examples in batches of 2: rank 1 runs filler passes.
    Returns the 2-process summary."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_one_process(run_args(model_dir, data_dir, one, 13, 5, method, lam)) == 0
    proc = launch(config, run_args(model_dir, data_dir, two, 13, 5, method, lam))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"x 2 processes ({sharder})" in proc.stderr + proc.stdout
    # partitioned, not replicated: each rank holds about half (padding and whole small tensors aside)
    share = float(re.search(r"this rank holds (\d+)% of the base weights", proc.stderr + proc.stdout).group(1))
    assert 45 <= share <= 60, share
    assert_same_run(one, two)
    return json.loads((two / "summary.json").read_text())


def assert_same_run(one: Path, two: Path) -> None:
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s2["processes"] == 2 and s1["processes"] == 1
    assert s2["accuracy_matrix"] == s1["accuracy_matrix"]
    for a, b in zip(s1["per_task"], s2["per_task"]):
        assert a["train_steps"] == b["train_steps"] and a["train_examples"] == b["train_examples"]
        if a["train_loss"] is None:  # mtl: nothing trained at task 1
            assert b["train_loss"] is None
        else:
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-6)
    for task in ("01-topic", "02-mood"):
        if not (one / "tasks" / task / "adapter").is_dir():  # mtl trains once, at the last task
            assert not (two / "tasks" / task / "adapter").is_dir()
            continue
        t1 = load_file(one / "tasks" / task / "adapter" / "adapter_model.safetensors")
        t2 = load_file(two / "tasks" / task / "adapter" / "adapter_model.safetensors")
        assert t1.keys() == t2.keys()
        for k in t1:
            assert torch.allclose(t1[k], t2[k], rtol=1e-4, atol=1e-5), (task, k, (t1[k] - t2[k]).abs().max())
        # every test example predicted exactly once, in the one-process order
        p1 = (one / "tasks" / task / "predictions.jsonl").read_text().splitlines()
        p2 = (two / "tasks" / task / "predictions.jsonl").read_text().splitlines()
        assert [json.loads(x)["prompt"] for x in p1] == [json.loads(x)["prompt"] for x in p2]
        # and the same generated text (accuracy is 0 on these random models, so this is the real check)
        assert [json.loads(x)["prediction"] for x in p1] == [json.loads(x)["prediction"] for x in p2]
        # the training log, written by rank 0 alone: a line per step with the global loss and gradient norm
        l1, l2 = (read_log(d / "tasks" / task / "train_log.jsonl") for d in (one, two))
        assert l1 and [r["step"] for r in l2] == [r["step"] for r in l1]
        assert [r["loss"] for r in l2] == pytest.approx([r["loss"] for r in l1], rel=1e-4, abs=1e-6)
        assert [r["grad_norm"] for r in l2] == pytest.approx([r["grad_norm"] for r in l1], rel=1e-3, abs=1e-6)
    # rank 1 wrote nothing of its own: the two trees hold the same file names
    assert sorted(p.relative_to(one).as_posix() for p in one.rglob("*")) == sorted(
        p.relative_to(two).as_posix() for p in two.rglob("*")
    )


def test_fsdp_refuses_methods_that_train_more_than_lora(model_dirs, data_dir, tmp_path):
    proc = launch(FSDP_CONFIG, run_args(model_dirs["llama"], data_dir, tmp_path / "ft", method="seq-ft", lam=None))
    assert proc.returncode != 0  # each rank exits 2; the launcher reports its children's failure as 1
    assert "FSDP: method seq-ft trains more than LoRA factors" in proc.stderr + proc.stdout
    assert not (tmp_path / "ft").exists()


def test_machine_name_says_which_vector_instructions_the_cpu_kernels_use():
    # records compare CPU seconds across machines: the same model name ran twice as slowly without AVX-512
    name = machine_name("cpu")
    assert f", {torch.backends.cpu.get_cpu_capability()}), " in name
    assert name.endswith(f", {torch.get_num_threads()} threads")


def test_lockstep_pads_sharded_ranks_with_fillers():
    batches = [[0, 1], [2, 3], [4]]
    assert Dist(rank=1, world=2).lockstep(batches) == [([2, 3], True)]
    assert Dist(rank=1, world=2, sharder="FSDP").lockstep(batches) == [([2, 3], True), ([0, 1], False)]
    assert Dist(rank=0, world=2, sharder="FSDP").lockstep(batches) == [([0, 1], True), ([4], True)]
    assert Dist(rank=3, world=4, sharder="FSDP").lockstep(batches) == [([0, 1], False)]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"FSDP_VERSION": "1"}, "set fsdp_version: 2"),
        ({"FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"}, "fsdp_offload_params: true is not supported"),
        ({"FSDP_VERSION": "2", "FSDP_ACTIVATION_CHECKPOINTING": "true"}, "fsdp_activation_checkpointing"),
    ],
)
def test_unsupported_fsdp_options_refused(monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(NloraError, match=message):
        _check_fsdp_settings()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "zero_stage 2; nlora supports zero_stage: 3"),
        (
            {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "cpu"},
            "offload_param_device: cpu is not supported",
        ),
        ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true"}, "zero3_init_flag"),
        ({"ACCELERATE_DEEPSPEED_CONFIG_FILE": "{file}"}, "zero_stage 1;"),  # the file's stage wins
        ({"ACCELERATE_DEEPSPEED_CONFIG_FILE": "{missing}"}, "cannot read deepspeed_config_file"),
    ],
)
def test_unsupported_deepspeed_options_refused(monkeypatch, tmp_path, env, message):
    pytest.importorskip("deepspeed")
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(file=tmp_path / "ds.json", missing=tmp_path / "absent.json"))
    with pytest.raises(NloraError, match=message):
        _check_deepspeed_settings()
