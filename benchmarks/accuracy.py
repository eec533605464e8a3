"""Accuracy benchmark on a real model: do N-LoRA's claims hold at small scale?

    python benchmarks/accuracy.py --out runs/accuracy                      # SmolLM2, 4- and 8-task sequences
    python benchmarks/accuracy.py --out runs/acc-small --sequence mini=SST-2,RTE --seeds 1 --max-train 64

For every method with a coefficient, lambda is chosen first, on seed 1 of the first sequence, from a grid,
by AA on a validation split carved from each task's training data (never the test data): OUT/valdata holds
those tasks with the held-out training rows as their test.json. Then every method runs every sequence with
every seed at the same budget. Each run is an ordinary `nlora run` directory, so the script resumes: finished
runs are reused, an interrupted one continues. Writes OUT/results.json and OUT/table.md (AA and BWT as mean
and standard deviation over seeds, ACR and mean nuclear norm, wall time), and prints the table.
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
from common import add_run_args, carve_validation, mean_sd, paired, run_one  # noqa: E402

SEQUENCES = {"4task": "agnews,amazon,MNLI,QQP", "8task": "agnews,amazon,MNLI,QQP,BoolQA,RTE,SST-2,WiC"}
GRIDS = {"n-lora": [1e-5, 5e-5, 2e-4, 1e-3], "o-lora": [0.1, 0.5, 1.0]}
ANALYSED = {"n-lora", "o-lora", "seq-lora", "inc-lora"}


def choose_lambdas(args, methods: list[str], tasks: str) -> tuple[dict[str, float | None], dict[str, list]]:
    """The chosen lambda per method, and every grid point's validation AA/BWT."""
    val_data = carve_validation(Path(args.data_dir), tasks.split(","), Path(args.out) / "valdata", args.val, 0)
    chosen, tried = {}, {}
    for method in methods:
        if method in args.fixed_lambda:
            chosen[method] = args.fixed_lambda[method]
            continue
        grid = GRIDS.get(method)
        if not grid:
            chosen[method] = None
            continue
        scores = []
        for lam in grid:
            s = run_one(args, method, tasks, 1, Path(args.out) / "select" / method / f"lambda-{lam:g}", val_data, lam)
            scores.append(((s["aa"], s["bwt"] if s["bwt"] is not None else 0.0), lam))
        chosen[method] = max(scores)[1]
        tried[method] = [{"lambda": lam, "val_aa": aa, "val_bwt": bwt} for (aa, bwt), lam in scores]
        print(
            f"[accuracy] {method}: lambda {chosen[method]:g} (validation AA/BWT: "
            + ", ".join(f"{lam:g} -> {aa:.1f}/{bwt:.1f}" for (aa, bwt), lam in scores)
            + ")",
            flush=True,
        )
    return chosen, tried


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--sequence", action="append", help="NAME=task,task,... (default: 4task and 8task)")
    p.add_argument("--methods", default="seq-lora,inc-lora,o-lora,n-lora,mtl")
    p.add_argument("--seeds", default="1,2,3")
    add_run_args(p)
    p.add_argument("--val", type=int, default=200, help="validation rows carved from each task's training data")
    p.add_argument(
        "--lambda",
        dest="fixed_lambda",
        action="append",
        default=[],
        metavar="METHOD=VALUE",
        help="use this lambda for METHOD instead of choosing it on validation data (repeatable)",
    )
    args = p.parse_args(argv)
    try:
        args.fixed_lambda = {m: float(v) for m, v in (x.split("=", 1) for x in args.fixed_lambda)}
    except ValueError:
        p.error("--lambda takes METHOD=VALUE, e.g. n-lora=1e-5")
    sequences = dict(s.split("=", 1) for s in args.sequence) if args.sequence else SEQUENCES
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    lambdas, tried = choose_lambdas(args, methods, next(iter(sequences.values())))
    rows = []
    for name, tasks in sequences.items():
        for method in methods:
            runs = []
            for seed in seeds:
                out = Path(args.out) / "runs" / name / method / f"seed-{seed}"
                s = run_one(args, method, tasks, seed, out, Path(args.data_dir), lambdas[method])
                a = analyze(out) if method in ANALYSED else None
                runs.append(
                    {
                        "seed": seed,
                        "aa": s["aa"],
                        "bwt": s["bwt"],
                        "wall_time_s": s["wall_time_s"],
                        "acr": a["acr"] if a else None,
                        "nuclear_norm": a["nuclear_norm"]["mean"] if a else None,
                        "accuracy_matrix": s["accuracy_matrix"],
                    }
                )
            rows.append(
                {
                    "sequence": name,
                    "method": method,
                    "lambda": lambdas[method],
                    "runs": runs,
                    **{
                        f"{k}_mean_sd": mean_sd([r[k] for r in runs])
                        for k in ("aa", "bwt", "acr", "nuclear_norm", "wall_time_s")
                    },
                }
            )
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    machine = machine_name(device)
    write_json(
        Path(args.out) / "results.json",
        {
            "settings": vars(args),
            "machine": machine,
            "lambdas": lambdas,
            "selection": tried,
            "rows": rows,
            "comparisons": paired_comparisons(rows),
        },
    )
    text = table(rows, args, machine, tried)
    write_text(Path(args.out) / "table.md", text)
    print(text)


def _ms(pair, scale=1.0, digits=2) -> str:
    m, sd = pair
    return "-" if m is None else f"{m * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def table(rows: list[dict], args, machine: str, tried: dict | None = None) -> str:
    lines = [
        f"{args.model}, {args.max_train} train / {args.max_test} test per task, {args.epochs:g} epoch(s), batch "
        f"{args.batch_size}, lr {args.lr:g}, {args.precision}, seeds {args.seeds}, {machine}; lambda chosen on "
        f"a validation split of {args.val} training rows per task.",
        "",
        "| sequence | method | lambda | AA | BWT | ACR (%) | mean nuclear norm | wall time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lam = "-" if r["lambda"] is None else f"{r['lambda']:g}"
        lines.append(
            f"| {r['sequence']} | {r['method']} | {lam} "
            f"| {_ms(r['aa_mean_sd'])} | {_ms(r['bwt_mean_sd'])} | {_ms(r['acr_mean_sd'], 100, 3)} "
            f"| {_ms(r['nuclear_norm_mean_sd'], 1, 4)} | {_ms(r['wall_time_s_mean_sd'], 1, 0)} |"
        )
    if tried:
        lines += [
            "",
            "Lambda selection (seed 1, validation split; chosen by AA, then BWT):",
            "",
            "| method | lambda | validation AA | validation BWT |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {m} | {x['lambda']:g} | {x['val_aa']:.2f} | {x['val_bwt']:.2f} |" for m, xs in tried.items() for x in xs
        ]
    lines += [
        "",
        "Per seed (AA / BWT):",
        "",
        "| sequence | method | " + " | ".join(f"seed {s}" for s in args.seeds.split(",")) + " |",
        "|---|---|" + "---|" * len(args.seeds.split(",")),
    ]
    for r in rows:
        cells = [f"{x['aa']:.2f} / " + ("-" if x["bwt"] is None else f"{x['bwt']:.2f}") for x in r["runs"]]
        lines.append(f"| {r['sequence']} | {r['method']} | " + " | ".join(cells) + " |")
    comparisons = paired_comparisons(rows)
    if comparisons:
        lines += [
            "",
            "Paired by seed (each seed draws its own training and test samples, the same for every "
            "method), first method minus second; t = mean / (sd / sqrt(n)); with 3 seeds |t| > 4.30 is a "
            "difference at the 5% level (two-sided):",
            "",
            "| sequence | comparison | metric | per-seed differences | mean ± sd | t |",
            "|---|---|---|---|---|---|",
        ]
        for c in comparisons:
            t = "-" if c["t"] is None else f"{c['t']:.2f}"
            lines.append(
                f"| {c['sequence']} | {c['first']} - {c['second']} | {c['metric']} | "
                + ", ".join(f"{d:+.2f}" for d in c["diffs"])
                + f" | {c['mean']:+.2f} ± {c['sd']:.2f} | {t} |"
            )
    return "\n".join(lines) + "\n"


def paired_comparisons(
    rows: list[dict], first: str = "n-lora", others: tuple = ("o-lora", "seq-lora", "inc-lora")
) -> list:
    """N-LoRA against each baseline on AA and BWT, seed by seed (seeds share their data samples)."""
    out = []
    for seq in dict.fromkeys(r["sequence"] for r in rows):
        by_method = {r["method"]: {x["seed"]: x for x in r["runs"]} for r in rows if r["sequence"] == seq}
        for other in others:
            if first not in by_method or other not in by_method:
                continue
            for metric in ("aa", "bwt"):
                c = paired(
                    {s: x[metric] for s, x in by_method[first].items()},
                    {s: x[metric] for s, x in by_method[other].items()},
                )
                if c is None:
                    continue
                out.append(
                    {
                        "sequence": seq,
                        "first": first,
                        "second": other,
                        "metric": metric.upper(),
                        "diffs": c["diffs"],
                        "mean": c["mean"],
                        "sd": c["sd"],
                        "t": c["t"],
                    }
                )
    return out


if __name__ == "__main__":
    main()
