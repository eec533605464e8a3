"""Golden file of small runs: every registered method on the tiny T5 and the tiny GQA LLaMA of tests/conftest.py.

    python tools/make_golden.py --check   # the current code against tests/golden/runs.json, bit for bit
    python tools/make_golden.py --write   # regenerate the file -- only when a change of results is intended
    python tools/make_golden.py --write --methods NAME   # record a new method's runs, leave the others

Each run is two toy tasks (topic, then mood) through the CLI, on the CPU in fp32 with one thread and a fixed
seed, once generating answers and once with --eval-mode score (``VARIANTS``). The file holds, per (method,
variant): the CLI flags it ran with (``--check`` and the test replay them), the summary's accuracy matrix
and numbers (no timings), every task's predictions, and for every tensor of every safetensors file the run
saved: a sha256 of its raw bytes (first 64 bits), its float64 sum and abs-sum, shape and dtype (no tensor
values, so the file stays small); score runs record each file as a whole. The tiny models' tensors and the
toy data are recorded too, to tell a changed input from a changed result. tests/test_golden.py uses the same
functions; it compares sums with a tolerance because another CPU may round differently, while ``--check``
on the machine that wrote the file asks for equal bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "runs.json"
MODELS = ("t5", "llama")
# Each method runs on each tiny model twice: as the run is by default (greedy generation, whose toy
# accuracies are all 0 on a random model) and with --eval-mode score (the likeliest label: accuracy matrices
# with real numbers). Training does not depend on the evaluation mode, so the score runs record each saved file
# as one record (hash and sums over its tensors, ``file_record``), not tensor by tensor.
VARIANTS = {
    "t5": ("t5", [], True),
    "llama": ("llama", [], True),
    "t5-score": ("t5", ["--eval-mode", "score"], False),
    "llama-score": ("llama", ["--eval-mode", "score"], False),
}
TASKS = ("topic", "mood")
SEED = 7
# Small enough that the 88 runs take about 30 s of CPU (one core), large enough that each task takes two
# optimizer steps (a second step is where Adam's moments and the method's state first matter).
N_TRAIN, N_TEST = 4, 3
COMMON_FLAGS = [
    "--tasks",
    ",".join(TASKS),
    "--seed",
    str(SEED),
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--max-train-per-task",
    str(N_TRAIN),
    "--max-test-per-task",
    str(N_TEST),
    "--batch-size",
    "2",
    "--eval-batch-size",
    "4",
    "--max-target-length",
    "4",
    "--lr",
    "0.01",
]
# Methods without a default --lambda get one; the others run with their own default, which the file pins.
NO_DEFAULT_LAMBDA = ["--lambda", "0.01"]
# Tensors of files bigger than this are not recorded (every tiny-model file is far smaller).
MAX_FILE_BYTES = 8 * 2**20
# Summary entries that measure the machine, not the result.
VOLATILE = {
    "wall_time_s",
    "cpu_time_s",
    "train_seconds",
    "train_cpu_seconds",
    "eval_seconds",
    "eval_cpu_seconds",
    "machine",
    "model",
    "nlora_version",
}


def method_flags(method: str) -> list[str]:
    from nlora.methods import REGISTRY
    from nlora.methods.options import find_spec

    flags = ["--method", method]
    return flags + (NO_DEFAULT_LAMBDA if find_spec(REGISTRY[method].Options, "lambda") is None else [])


def make_inputs(root: Path) -> dict[str, Path]:
    """The tiny models and toy data exactly as tests/conftest.py builds them; returns their folders."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import conftest
    finally:
        sys.path.remove(str(ROOT / "tests"))
    dirs = {}
    for kind in MODELS:
        d = root / f"tiny-{kind}"
        model, tok = conftest.MODEL_FACTORIES[kind]()
        model.save_pretrained(d)
        tok.save_pretrained(d)
        dirs[kind] = d
    for name in TASKS:
        conftest.write_task(root / "CL", name)
    dirs["data"] = root / "CL"
    return dirs


def tensor_record(t) -> dict:
    import torch

    t = t.detach().cpu().contiguous()
    raw = t.view(torch.uint8) if t.numel() else t  # the bytes as stored, whatever the dtype
    d = t.double()
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "sha256": hashlib.sha256(raw.numpy().tobytes()).hexdigest()[:16],  # 64 bits tell any change
        "sum": d.sum().item(),
        "abs_sum": d.abs().sum().item(),
    }


ALL = "(all tensors)"


def file_record(records: dict) -> dict:
    """One record for a whole file, compared as a tensor's: its tensor count as shape, a sha256 over the
    tensors' names and hashes, the sums of their sums and abs-sums."""
    h = hashlib.sha256("".join(f"{k}:{t['sha256']}:{t['shape']}" for k, t in records.items()).encode())
    return {
        "shape": [len(records)],
        "dtype": "file",
        "sha256": h.hexdigest()[:16],
        "sum": sum(t["sum"] for t in records.values()),
        "abs_sum": sum(t["abs_sum"] for t in records.values()),
    }


def input_records(inputs: dict[str, Path]) -> dict:
    """The inputs the runs start from: each tiny model's tensors (recorded as the outputs are) and a sha256 of
    the toy data files. Tells a changed input from a changed result; config.json and tokenizer files are left
    out (they name library versions)."""
    from safetensors.torch import load_file

    out = {}
    for kind in MODELS:
        state = {k: v for f in sorted(inputs[kind].glob("*.safetensors")) for k, v in load_file(str(f)).items()}
        out[kind] = {k: tensor_record(state[k]) for k in sorted(state)}
    h = hashlib.sha256()
    for f in sorted(p for p in inputs["data"].rglob("*") if p.is_file()):
        h.update(str(f.relative_to(inputs["data"])).encode() + b"\0" + f.read_bytes())
    out["data"] = h.hexdigest()
    return out


def collect(out: Path, with_tensors: bool = True) -> dict:
    """What a finished run directory holds that must not change."""
    from safetensors.torch import load_file

    summary = json.loads((out / "summary.json").read_text())
    kept = {k: v for k, v in summary.items() if k not in VOLATILE}
    kept["per_task"] = [{k: v for k, v in p.items() if k not in VOLATILE} for p in summary["per_task"]]
    predictions = {}
    for f in sorted((out / "tasks").glob("*/predictions.jsonl")):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        predictions[f.parent.name] = [[r["task"], r["prediction"]] for r in rows]
    tensors, skipped = {}, {}
    for f in sorted(out.rglob("*.safetensors")):
        rel = str(f.relative_to(out))
        if f.stat().st_size > MAX_FILE_BYTES:
            skipped[rel] = f.stat().st_size
            continue
        state = load_file(str(f))
        records = {k: tensor_record(state[k]) for k in sorted(state)}
        tensors[rel] = records if with_tensors else {ALL: file_record(records)}
    return {"summary": kept, "predictions": predictions, "tensors": tensors, "skipped_files": skipped}


def run_one(method: str, variant: str, inputs: dict[str, Path], work: Path, flags: list[str] | None = None) -> dict:
    """One golden run through ``nlora run``; returns its record (``collect``) plus the flags it used."""
    import shutil

    import torch

    from nlora.cli import main

    kind, extra, with_tensors = VARIANTS[variant]
    flags = list(flags) if flags is not None else COMMON_FLAGS + method_flags(method) + extra
    out = work / f"{method}-{variant}"
    args = ["run", "--model", str(inputs[kind]), "--data-dir", str(inputs["data"]), "--output-dir", str(out)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: sums reduce in one order whatever the machine's core count
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            rc = main(args + flags + ["--overwrite"])
    finally:
        torch.set_num_threads(threads)
    if rc != 0:
        raise RuntimeError(f"{method} on {variant}: nlora run exited {rc}:\n{log.getvalue()[-3000:]}")
    record = {"flags": flags, **collect(out, with_tensors)}
    shutil.rmtree(out, ignore_errors=True)
    return record


def run_key(method: str, variant: str) -> str:
    return f"{method}/{variant}"


def order(key: str) -> tuple:
    """Runs in the order they are made: by method, then variant as VARIANTS lists them."""
    method, variant = key.split("/")
    return method, list(VARIANTS).index(variant) if variant in VARIANTS else len(VARIANTS), variant


def generate(work: Path, methods: list[str] | None = None, flags_from: dict | None = None, progress=None) -> dict:
    """Every (method, model) run; ``flags_from`` (a golden file's runs) replays the flags stored there."""
    from nlora.methods import REGISTRY

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    inputs = make_inputs(work / "inputs")
    runs = {}
    for method in methods or sorted(REGISTRY):
        for variant in VARIANTS:
            key = run_key(method, variant)
            flags = flags_from[key]["flags"] if flags_from and key in flags_from else None
            started = time.perf_counter()
            runs[key] = run_one(method, variant, inputs, work / "runs", flags)
            if progress:
                progress(f"{key}: {time.perf_counter() - started:.1f}s")
    return {
        "inputs": input_records(inputs),
        "runs": runs,
    }


def rel_diff(a: float, b: float, scale: float) -> float:
    """|a - b| relative to ``scale`` (the golden abs-sum): a sum near zero by cancellation is not blown up."""
    return 0.0 if a == b else abs(a - b) / max(abs(scale), 1e-30)


def compare_run(now: dict, gold: dict) -> dict:
    """Field by field: accuracy (matrix + summary numbers), predictions, tensors."""
    problems = []
    acc_equal = now["summary"] == gold["summary"]
    if not acc_equal:
        keys = sorted(set(now["summary"]) | set(gold["summary"]))
        diff = [k for k in keys if now["summary"].get(k) != gold["summary"].get(k)]
        problems.append(f"summary differs in {diff}")
    matrix_equal = now["summary"].get("accuracy_matrix") == gold["summary"].get("accuracy_matrix")
    pred_equal = now["predictions"] == gold["predictions"]
    if not pred_equal:
        problems.append("predictions differ")
    files_equal = set(now["tensors"]) == set(gold["tensors"]) and now["skipped_files"] == gold["skipped_files"]
    if not files_equal:
        problems.append(f"saved files differ: {sorted(set(now['tensors']) ^ set(gold['tensors']))}")
    n_tensors = n_bitwise = 0
    max_rel = 0.0
    shapes_equal = True
    for f, gt in gold["tensors"].items():
        nt = now["tensors"].get(f, {})
        if set(nt) != set(gt):
            shapes_equal = False
            problems.append(f"{f}: tensor names differ: {sorted(set(nt) ^ set(gt))[:4]}")
        for k, g in gt.items():
            n_tensors += 1
            t = nt.get(k)
            if t is None:
                continue
            if (t["shape"], t["dtype"]) != (g["shape"], g["dtype"]):
                shapes_equal = False
                problems.append(f"{f}:{k}: shape/dtype {t['shape']} {t['dtype']} != {g['shape']} {g['dtype']}")
                continue
            n_bitwise += t["sha256"] == g["sha256"]
            scale = g["abs_sum"]
            max_rel = max(max_rel, rel_diff(t["sum"], g["sum"], scale), rel_diff(t["abs_sum"], g["abs_sum"], scale))
    return {
        "matrix_equal": matrix_equal,
        "summary_equal": acc_equal,
        "predictions_equal": pred_equal,
        "files_equal": files_equal,
        "shapes_equal": shapes_equal,
        "tensors": n_tensors,
        "bitwise_equal": n_bitwise,
        "max_rel_sum_diff": max_rel,
        "problems": problems,
    }


def write_golden(data: dict, path: Path = GOLDEN) -> None:
    """Compact JSON, one tensor per line: small, and a diff of the file reads per tensor."""
    lines = ["{", f' "about": {json.dumps(data["about"])},', f' "writer": {json.dumps(data["writer"])},']
    lines.append(' "inputs": {')
    for kind in MODELS:
        lines.append(f"  {json.dumps(kind)}: {{")
        items = list(data["inputs"][kind].items())
        for m, (k, t) in enumerate(items):
            lines.append(f"   {json.dumps(k)}: {json.dumps(t)}{',' if m < len(items) - 1 else ''}")
        lines.append("  },")
    lines += [f'  "data": {json.dumps(data["inputs"]["data"])}', " },", ' "runs": {']
    runs = list(data["runs"].items())
    for i, (key, r) in enumerate(runs):
        lines.append(f"  {json.dumps(key)}: {{")
        lines.append(f'   "flags": {json.dumps(r["flags"])},')
        lines.append(f'   "summary": {json.dumps(r["summary"], sort_keys=True)},')
        lines.append(f'   "predictions": {json.dumps(r["predictions"])},')
        lines.append(f'   "skipped_files": {json.dumps(r["skipped_files"])},')
        lines.append('   "tensors": {')
        files = list(r["tensors"].items())
        for j, (f, tensors) in enumerate(files):
            lines.append(f"    {json.dumps(f)}: {{")
            items = list(tensors.items())
            for m, (k, t) in enumerate(items):
                lines.append(f"     {json.dumps(k)}: {json.dumps(t)}{',' if m < len(items) - 1 else ''}")
            lines.append(f"    }}{',' if j < len(files) - 1 else ''}")
        lines.append("   }")
        lines.append(f"  }}{',' if i < len(runs) - 1 else ''}")
    lines += [" }", "}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    json.loads(path.read_text())  # what was written parses


def cpu_vendor() -> str:
    """The CPU's maker as the kernel names it (GenuineIntel, AuthenticAMD, ...): MKL picks other kernels on
    another maker's CPU at the same instruction set (the SVD runs of test_golden's CPU_SENSITIVE differ between an
    AVX-512 Xeon and an AVX-512 EPYC)."""
    import platform

    from nlora.dist import cpuinfo

    return cpuinfo("vendor_id") or platform.processor() or "unknown"


def writer() -> dict:
    """What decides the rounding of the runs: results are bit-exact only where these are the same."""
    import platform

    import torch

    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_vendor": cpu_vendor(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }


def load_golden(path: Path = GOLDEN) -> dict:
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the golden file (only on purpose)")
    mode.add_argument("--check", action="store_true", help="compare the current code against the golden file")
    p.add_argument("--golden", type=Path, default=GOLDEN, help=f"golden file (default {GOLDEN.relative_to(ROOT)})")
    p.add_argument("--methods", help="comma-separated subset (default: every registered method)")
    args = p.parse_args(argv)

    import nlora
    from nlora.methods import REGISTRY

    print(f"nlora from {Path(nlora.__file__).parent}", flush=True)
    methods = [m for m in args.methods.split(",") if m] if args.methods else sorted(REGISTRY)
    gold = None if args.write else load_golden(args.golden)
    if args.write and args.methods and args.golden.exists() and load_golden(args.golden)["writer"] != writer():
        print(
            f"{args.golden} was written on {load_golden(args.golden)['writer']}, this is {writer()}: runs from two "
            "kinds of machine would mix; write the whole file on one"
        )
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nlora-golden-") as tmp:
        now = generate(
            Path(tmp),
            methods,
            flags_from=gold["runs"] if gold else None,
            progress=lambda s: print(s, file=sys.stderr, flush=True),
        )
    print(f"{len(now['runs'])} runs in {time.perf_counter() - started:.0f}s", flush=True)

    if args.write:
        if args.methods and args.golden.exists():  # a subset updates only its own runs
            merged = load_golden(args.golden)
            merged["runs"].update(now["runs"])
            merged["runs"] = dict(sorted(merged["runs"].items(), key=lambda kv: order(kv[0])))
            now["runs"] = merged["runs"]
        now["about"] = (
            "Golden runs pinned by tests/test_golden.py; regenerate only on purpose: python tools/make_golden.py "
            f"--write (written from {Path(nlora.__file__).parent})"
        )
        now["writer"] = writer()
        write_golden(now, args.golden)
        n = sum(len(t) for r in now["runs"].values() for t in r["tensors"].values())
        skipped = {k: r["skipped_files"] for k, r in now["runs"].items() if r["skipped_files"]}
        print(f"wrote {args.golden}: {len(now['runs'])} runs, {n} tensor records, skipped files: {skipped or 'none'}")
        return 0

    ok = True
    if writer() != gold["writer"]:
        print(f"NOTE: this machine is {writer()}, the file was written on {gold['writer']}: bytes may differ")
    if now["inputs"] != gold["inputs"]:
        ok = False
        changed = [k for k in gold["inputs"] if now["inputs"].get(k) != gold["inputs"][k]]
        print(f"INPUTS CHANGED: {changed} (tests/conftest.py's tiny models or toy data, or this CPU's rounding)")
    missing = sorted(set(gold["runs"]) - set(now["runs"])) if not args.methods else []
    new = sorted(set(now["runs"]) - set(gold["runs"]))
    head = (
        f"{'method':11s} {'model':11s} {'accuracy':9s} {'summary':8s} {'predict':8s} {'tensors bitwise':21s} "
        "max rel sum diff"
    )
    print(head)
    print("-" * len(head))
    for key in sorted(now["runs"], key=order):
        method, variant = key.split("/")
        if key in new:
            ok = False
            print(f"{method:11s} {variant:11s} NOT IN GOLDEN FILE (a new method: regenerate with --write --methods)")
            continue
        c = compare_run(now["runs"][key], gold["runs"][key])
        bit = c["bitwise_equal"] == c["tensors"] and c["files_equal"] and c["shapes_equal"]
        good = c["summary_equal"] and c["predictions_equal"] and bit
        ok &= good

        def yn(v):
            return "equal" if v else "DIFFERS"

        unit = " files" if all(ALL in t for t in gold["runs"][key]["tensors"].values()) else ""
        tensors = f"{c['bitwise_equal']:>3d}/{c['tensors']:<3d} {yn(bit)}{unit}"
        print(
            f"{method:11s} {variant:11s} {yn(c['matrix_equal']):9s} {yn(c['summary_equal']):8s} "
            f"{yn(c['predictions_equal']):8s} {tensors:21s} {c['max_rel_sum_diff']:.2e}"
        )
        for problem in c["problems"]:
            print(f"    {problem}")
    for key in missing:
        ok = False
        print(f"{key}: in the golden file but the method is no longer registered")
    print("ALL EQUAL (bit for bit)" if ok else "DIFFERENCES FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
