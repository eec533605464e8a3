"""The paper's full experiments on your GPU machine, one command per model family, with a wall-time estimate.

    python benchmarks/paper.py --family t5 --model t5-large --data-dir CL_Benchmark --out runs/paper-t5
    python benchmarks/paper.py --family llama --model /models/llama-7b --data-dir CL_Benchmark --out runs/paper-llama
    python benchmarks/paper.py --family t5 --model t5-large --data-dir CL_Benchmark --out x --estimate-only

First measures this machine with benchmarks/throughput.py at the family's shape (T5-large or LLaMA-7B,
random weights: speed does not depend on them), counts the training examples and test generations of every
order's preset in the data folder, and prints the expected wall time per order. Then runs the presets in
turn (t5-order1..6 or llama-order1..3; each an ordinary, resumable `nlora run` in OUT/<preset>) and writes
OUT/report/report.md comparing them with the paper's numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from nlora.config import load_preset, preset_names, resolve
from nlora.data import index_tasks

FAMILIES = {"t5": ("t5-order", "t5-large"), "llama": ("llama-order", "llama-7b")}


def load_throughput():
    spec = importlib.util.spec_from_file_location("throughput", Path(__file__).with_name("throughput.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def workload(preset: str, data_dir: Path) -> tuple[float, int, list[str]]:
    """(training examples x epochs, test generations over the sequence, missing task files) of one preset."""
    p = load_preset(preset)
    index = index_tasks(data_dir)
    train, tests, missing, seen = 0.0, 0, [], 0
    for task in p["tasks"]:
        folder = index.get(task["name"])
        files = {s: folder / f"{s}.json" if folder else None for s in ("train", "test")}
        absent = [f"{task['name']}/{s}.json" for s, f in files.items() if f is None or not f.is_file()]
        if absent:
            missing += absent
            continue
        train += len(json.loads(files["train"].read_text())) * task.get("epochs", p.get("epochs", 1))
        seen += len(json.loads(files["test"].read_text()))
        tests += seen  # after task t, every seen task's test set is generated
    return train, tests, missing


def measure(shape: str, examples: int) -> tuple[float, float, str]:
    tp = load_throughput()
    tp.main(["--shape", shape, "--cases", "train,eval", "--examples", str(examples), "--repeats", "1"])
    train = next(r for r in tp.RECORDS if r.get("case") == "train")
    evals = next(r for r in tp.RECORDS if r.get("case") == "eval")
    return train["ours_examples_per_s"], evals["ours_prompts_per_s"], train["device"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", choices=sorted(FAMILIES), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--shape", help="throughput shape to measure (default: t5-large or llama-7b)")
    p.add_argument("--examples", type=int, default=256, help="examples per throughput measurement")
    p.add_argument("--estimate-only", action="store_true")
    p.add_argument(
        "--rates",
        help="TRAIN,EVAL: training examples/s and test generations/s to estimate with, "
        "instead of measuring this machine (e.g. figures from another GPU)",
    )
    args = p.parse_args(argv)
    prefix, shape = FAMILIES[args.family]
    presets = [n for n in preset_names() if n.startswith(prefix)]
    if args.rates:
        try:
            train_eps, eval_pps = (float(x) for x in args.rates.split(","))
        except ValueError:
            p.error(f"--rates {args.rates!r}: expected two numbers, TRAIN,EVAL")
        device = "given rates"
    else:
        train_eps, eval_pps, device = measure(args.shape or shape, args.examples)
    print(
        f"[paper] {device}: {train_eps:g} training examples/s, {eval_pps:g} test generations/s "
        f"(shape {args.shape or shape})"
    )
    runnable = []
    for name in presets:
        train, tests, missing = workload(name, Path(args.data_dir))
        if missing:
            print(f"[paper] {name}: cannot run, missing {', '.join(missing)} (nlora data fetch)")
            continue
        hours = (train / train_eps + tests / eval_pps) / 3600
        print(f"[paper] {name}: {train:,.0f} training examples x epochs, {tests:,} generations: about {hours:.2f} h")
        runnable.append(name)
    if args.estimate_only or not runnable:
        return
    from nlora.recipe import run
    from nlora.report import build_report

    for name in runnable:
        run(
            resolve(
                preset=name,
                overrides={"model": args.model, "data_dir": args.data_dir, "output_dir": str(Path(args.out) / name)},
            )
        )
    print(f"[paper] report: {build_report([Path(args.out) / n for n in runnable], Path(args.out) / 'report')}")


if __name__ == "__main__":
    main()
