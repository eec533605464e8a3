"""Shared fixtures: tiny random T5 and GQA LLaMA models (ByT5 tokenizer, no files needed) and toy CL data."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# converted GGUF models go to a folder of this test session, not the user's cache
os.environ.setdefault("NLORA_CACHE", tempfile.mkdtemp(prefix="nlora-test-cache-"))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Benchmarks' ``--threads`` sets torch's thread count for the whole process. A CPU run's floats depend on it
    (the matmul and reduction splits differ), so a test that left it changed would make later tests' in-process
    runs differ bit for bit from the same runs in a subprocess. Every test ends with the count it started with."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def child_env() -> dict[str, str]:
    """Environment for an nlora subprocess whose results a test compares with in-process runs: unbuffered output,
    and this process's torch thread count (torch reads OMP_NUM_THREADS at start)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}


def nlora_in_subprocess(args: list[str]) -> None:
    """``nlora ARGS`` to the end in a fresh process (child_env); fails the test with its last error lines.

    Tests that compare a run's floats bit for bit with another run's made in a subprocess make both in
    subprocesses: whatever earlier tests left in the pytest process then cannot enter the comparison."""
    done = subprocess.run(
        [sys.executable, "-m", "nlora.cli", *args], capture_output=True, env=child_env(), timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-800:]


SLOWED_NLORA = """
import sys, time
import nlora.train as tr, nlora.evaluate as ev
step, gen = tr._micro_step, ev._generate_batch
tr._micro_step = lambda *a, **k: (time.sleep({step_delay}), step(*a, **k))[1]
ev._generate_batch = lambda *a, **k: (time.sleep({eval_delay}), gen(*a, **k))[1]
from nlora.cli import main
sys.exit(main(sys.argv[1:]))
"""


def slowed_nlora_script(folder: Path, step_delay: float, eval_delay: float = 0.0) -> Path:
    """A script that runs ``nlora`` with every training micro-step (and generation batch) slowed down by these
    seconds, so that a test can act on a run while it works (kill it, start a second one, read its status)."""
    script = folder / "slowed_nlora.py"
    script.write_text(SLOWED_NLORA.format(step_delay=step_delay, eval_delay=eval_delay))
    return script


def start_script(script: Path, args: list[str]) -> subprocess.Popen:
    """``python SCRIPT ARGS`` in the background (a test's slowed-down nlora), stderr kept for failure messages."""
    return subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env()
    )


SHARED = Path(__file__).resolve().parents[2] / "shared"
CL_BENCHMARK = SHARED / "CL_Benchmark"

TOY_TASKS = {
    # name: (category, labels, sentence maker)
    "topic": ("TC", ["World", "Sports"], lambda r, lab: f"{'war' if lab == 'World' else 'goal'} {r.randint(0, 99)}"),
    "mood": (
        "SC",
        ["positive", "negative"],
        lambda r, lab: f"{'nice' if lab == 'positive' else 'awful'} {r.randint(0, 99)}",
    ),
    "COPA": ("COPA", ["A", "B"], lambda r, lab: f"pick {lab}? A: x B: y {r.randint(0, 9)}"),
}


def write_task(root: Path, name: str, n_train: int = 24, n_test: int = 8, seed: int = 0) -> Path:
    category, labels, make = TOY_TASKS[name]
    rng = random.Random(seed)
    d = root / category / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "labels.json").write_text(json.dumps(labels))
    for split, n in (("train", n_train), ("dev", n_test), ("test", n_test)):
        rows = []
        for i in range(n):
            lab = labels[i % len(labels)]
            rows.append({"label": lab, "sentence": make(rng, lab)})
        (d / f"{split}.json").write_text(json.dumps(rows))
    return d


def toy_run_args(model_dir, data_dir, out, *extra, tasks="topic,mood"):
    """`nlora run` on the toy tasks (topic then mood unless ``tasks`` says) at a few steps: the arguments most
    CLI tests share."""
    return [
        "run",
        "--model",
        str(model_dir),
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(out),
        "--tasks",
        tasks,
        "--max-train-per-task",
        "8",
        "--max-test-per-task",
        "4",
        "--batch-size",
        "4",
        "--eval-batch-size",
        "4",
        "--max-target-length",
        "6",
        "--lr",
        "0.01",
        *extra,
    ]


@pytest.fixture
def data_dir(tmp_path) -> Path:
    root = tmp_path / "CL"
    for name in TOY_TASKS:
        write_task(root, name)
    return root


def tiny_t5():
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=384,
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        dropout_rate=0.0,
    )
    return T5ForConditionalGeneration(cfg), ByT5Tokenizer()


def tiny_llama():
    """LLaMA with grouped-query attention: v_proj is narrower than q_proj (out 16 vs in 32)."""
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=384,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg), ByT5Tokenizer()


MODEL_FACTORIES = {"t5": tiny_t5, "llama": tiny_llama}


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for kind, make in MODEL_FACTORIES.items():
        d = tmp_path_factory.mktemp(f"tiny-{kind}")
        model, tok = make()
        model.save_pretrained(d)
        tok.save_pretrained(d)
        out[kind] = d
    return out


@pytest.fixture(params=["t5", "llama"])
def model_kind(request) -> str:
    return request.param


# ------------------------------------------------------------------ benchmarks/: their scripts, loaded as modules

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the folder is no package; a script puts it on sys.path for its siblings)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lb():
    """benchmarks/leaderboard.py; its modules as lb.spec, lb.standings, lb.table, lb.pacing."""
    return load_benchmark("leaderboard")


LEADERBOARD_TAG = "m-n8-t4-e1-b4-lr0.001-fp32"


def put_run_record(
    records: Path, method: str, seed: int, aa, bwt, tag: str = LEADERBOARD_TAG, seq: str = "4task", **extra
) -> Path:
    """A leaderboard run record as benchmarks/leaderboard.py writes one, with what the table reads; EXTRA adds or
    overrides fields."""
    rec = {
        "kind": "run",
        "budget_tag": tag,
        "sequence": seq,
        "method": method,
        "seed": seed,
        "aa": aa,
        "bwt": bwt,
        "hyperparameter": {"name": "lambda", "value": None, "source": "no coefficient"},
        "stored_bytes_per_task": [2048, 2048],
        "wall_time_s": 120.0,
        "acr": None,
        "nuclear_norm_mean": None,
        "routing": None,
        **extra,
    }
    path = records / tag / seq / method / f"seed-{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


def row_of(text: str, method: str, section: int = 0) -> list[str]:
    """The cells of METHOD's row in the SECTION-th table of the leaderboard's markdown."""
    tables = text.split("### ")[1:]
    line = next(x for x in tables[section].splitlines() if x.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]
