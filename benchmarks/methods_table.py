"""Every method on one task sequence with the same budget: a table of AA, BWT, collision and wall time.

    python benchmarks/methods_table.py --out runs/methods-4task            # SmolLM2, agnews,amazon,MNLI,QQP
    python benchmarks/methods_table.py --out runs/x --methods seq-lora,n-lora --max-train 64 --max-test 32

Each method is an ordinary `nlora run` in OUT/<method>; a finished run is reused and an interrupted one
resumed, so the script can be stopped and started again. Writes OUT/results.json and OUT/table.md, and
prints the table with the machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from nlora.dist import machine_name
from nlora.io import write_json, write_text
from nlora.report import analyze

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, run_one  # noqa: E402 (the run function shared with accuracy.py and leaderboard.py)

METHODS = ["seq-lora", "inc-lora", "replay", "ewc", "lwf", "o-lora", "n-lora", "mtl", "per-task"]
# The coefficient each method runs with (None: the method has none). n-lora: paper form, set on SmolLM2
# so that the penalty's gradient is on the task loss's scale (docs/methods.md).
LAMBDAS = {"n-lora": 2e-4, "o-lora": 0.5, "replay": 0.02, "ewc": 1e4, "lwf": 1.0}
ADAPTER_METHODS = {"n-lora", "o-lora", "inc-lora", "seq-lora", "per-task"}  # where collision is meaningful


def run_method(method: str, args) -> dict:
    out = Path(args.out) / method
    summary = run_one(args, method, args.tasks, args.seed, out, args.data_dir, LAMBDAS.get(method))
    row = {
        "method": method,
        "lambda": LAMBDAS.get(method),
        "aa": summary["aa"],
        "bwt": summary["bwt"],
        "wall_time_s": summary["wall_time_s"],
        "resumed": summary.get("resumed", False),
        "accuracy_matrix": summary["accuracy_matrix"],
        "acr": None,
        "nuclear_norm_mean": None,
    }
    if method in ADAPTER_METHODS:
        a = analyze(Path(args.out) / method)
        row["acr"], row["nuclear_norm_mean"] = a["acr"], a["nuclear_norm"]["mean"]
    return row


def fmt(v, scale=1.0, digits=2):
    return "-" if v is None else f"{v * scale:.{digits}f}"


def table(rows: list[dict], machine: str, args) -> str:
    lines = [
        f"Tasks {args.tasks}; {args.max_train} train / {args.max_test} test per task, {args.epochs:g} epochs, "
        f"batch {args.batch_size}, lr {args.lr:g}, {args.precision}, seed {args.seed}, evaluation scope "
        f"{args.eval_scope}; {args.model} on {machine}.",
        "",
        "| method | lambda | AA | BWT | ACR (%) | mean nuclear norm | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['lambda'] if r['lambda'] is not None else '-'} | {fmt(r['aa'])} | "
            f"{fmt(r['bwt'])} | {fmt(r['acr'], 100, 3)} | {fmt(r['nuclear_norm_mean'], 1, 4)} | "
            f"{r['wall_time_s']:.0f}{' (resumed)' if r['resumed'] else ''} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--model", default="smollm2")
    p.add_argument("--data-dir", default=str(SHARED))
    p.add_argument("--tasks", default="agnews,amazon,MNLI,QQP")
    p.add_argument("--max-train", type=int, default=500)
    p.add_argument("--max-test", type=int, default=200)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-batch-size", type=int, default=None, help="default: 128 on a GPU, 32 on a CPU")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--eval-scope",
        choices=["seen", "needed"],
        default="needed",
        help="needed (default): only what AA and BWT use; seen: the whole lower triangle",
    )
    p.add_argument("--save-every", type=int, default=10, help="step checkpoints, so a stopped table loses little")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    machine = machine_name(device)
    rows = [run_method(m, args) for m in args.methods.split(",")]
    out = Path(args.out)
    write_json(out / "results.json", {"settings": vars(args), "machine": machine, "runs": rows})
    text = table(rows, machine, args)
    write_text(out / "table.md", text)
    print(text)


if __name__ == "__main__":
    main()
