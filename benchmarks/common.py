"""What the benchmark scripts share: the run flags, the overrides they build, one `nlora run` per call, the
validation split carved from training data, and paired statistics over seeds.

Used by accuracy.py, leaderboard.py and methods_table.py (import it after putting this folder on sys.path, so
the scripts also load when a test imports them from their file).
"""

from __future__ import annotations

import json
import random
import re
import statistics
from pathlib import Path

from nlora.config import resolve
from nlora.data import index_tasks
from nlora.io import write_json
from nlora.recipe import run

SHARED = Path(__file__).resolve().parents[2] / "shared" / "CL_Benchmark"
# Two-sided 5% critical values of Student's t by degrees of freedom (n seeds - 1).
T_CRIT_5 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def add_run_args(p, *, max_train=500, max_test=200, epochs=1.0, lr=2e-3, precision="bf16") -> None:
    """The flags of one run's budget and machine, shared by the accuracy scripts."""
    p.add_argument("--model", default="smollm2")
    p.add_argument("--data-dir", default=str(SHARED))
    p.add_argument("--max-train", type=int, default=max_train)
    p.add_argument("--max-test", type=int, default=max_test)
    p.add_argument("--epochs", type=float, default=epochs)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument(
        "--eval-scope",
        choices=["seen", "needed"],
        default="needed",
        help="needed (default): only what AA and BWT use; seen: the whole lower triangle",
    )
    p.add_argument("--save-every", type=int, default=10, help="step checkpoints, so a stopped run loses little")
    p.add_argument("--lora-r", type=int, help="LoRA rank for every method (default: nlora's 8)")
    p.add_argument("--lora-alpha", type=float, help="LoRA alpha (default with --lora-r: 4 x r, the scale of r 8 / 32)")
    p.add_argument("--precision", default=precision)
    p.add_argument("--nlora-form", default="paper", choices=["paper", "reference"])
    p.add_argument("--device", default="auto")


def run_overrides(args, method: str, tasks, seed: int, out: Path, data_dir, lam: float | None) -> dict:
    """The `resolve` overrides of one run; ``lambda`` is each method's main coefficient (None: its default)."""
    overrides = dict(
        model=args.model,
        data_dir=str(data_dir),
        output_dir=str(out),
        task_names=tasks.split(",") if isinstance(tasks, str) else list(tasks),
        method=method,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=seed,
        max_train_per_task=args.max_train,
        max_test_per_task=args.max_test,
        precision=args.precision,
        unknown_labels="drop",
        device=args.device,
        nlora_form=getattr(args, "nlora_form", None),
        eval_scope=args.eval_scope,
        eval_batch_size=getattr(args, "eval_batch_size", None),
        save_every=args.save_every,
    )
    if lam is not None:
        overrides["lambda"] = lam
    if getattr(args, "lora_r", None) is not None:  # the default r 8 / alpha 32 stays out of the config when not asked
        overrides.update(r=args.lora_r, alpha=args.lora_alpha or 4.0 * args.lora_r)
    return {k: v for k, v in overrides.items() if v is not None}


def run_one(args, method: str, tasks, seed: int, out: Path, data_dir, lam: float | None) -> dict:
    """One `nlora run` (resumed if its directory holds part of it, reused if complete); its summary."""
    return run(resolve(overrides=run_overrides(args, method, tasks, seed, out, data_dir, lam)))


def row_key(row: dict) -> str:
    """A row's content for comparisons: its input text, lower-cased, with punctuation and spacing collapsed, so
    the same sentence written twice (another spacing, a different label) is recognised as the same row."""
    return re.sub(r"\W+", " ", str(row.get("sentence", ""))).strip().lower()


def carve_validation(
    data_dir: Path, tasks: list[str], dest: Path, n_val: int, seed: int, max_share: float | None = None
) -> Path:
    """Copy each task with ``n_val`` training rows moved into its test.json (and none of its real test rows).

    Rows are compared by content (``row_key``), not by position:
    - a training row whose text also appears in the task's test.json or dev.json is left out of both sides;
    - training rows with the same text form one group that goes whole to validation or to training, so no
      validation row is also trained on.
    ``max_share`` caps the validation rows at that share of a task's training rows (small tasks such as CB keep
    most of theirs for training). DEST/validation.json records, per task, how many rows went where and why.
    """
    index = index_tasks(data_dir)
    report = {}
    for task in tasks:
        src = index[task]
        rows = json.loads((src / "train.json").read_text())
        held_out = set()
        for split in ("test", "dev"):
            if (src / f"{split}.json").is_file():
                held_out |= {row_key(r) for r in json.loads((src / f"{split}.json").read_text())}
        groups: dict[str, list] = {}
        for r in rows:
            groups.setdefault(row_key(r), []).append(r)
        overlap = [k for k in groups if k in held_out]
        keys = [k for k in groups if k not in held_out]
        random.Random(seed).shuffle(keys)
        want = n_val if max_share is None else min(n_val, int(len(rows) * max_share))
        val, train = [], []
        for k in keys:
            (val if len(val) < want else train).extend(groups[k])
        out = dest / src.parent.name / task
        write_json(out / "labels.json", json.loads((src / "labels.json").read_text()))
        write_json(out / "train.json", train)
        write_json(out / "test.json", val)
        report[task] = {
            "validation_rows": len(val),
            "training_rows": len(train),
            "left_out_same_text_as_test": sum(len(groups[k]) for k in overlap),
            "duplicate_texts_in_train": sum(len(g) - 1 for g in groups.values()),
            "seed": seed,
        }
    write_json(dest / "validation.json", report)
    return dest


def mean_sd(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that exist (None: missing, never counted as 0)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def paired(first: dict, second: dict) -> dict | None:
    """first - second over the seeds both have a value for ({seed: value}); mean, sd, t = mean / (sd / sqrt n).

    None when no seed is shared; t is None with one pair or no spread."""
    seeds = sorted(s for s in set(first) & set(second) if first[s] is not None and second[s] is not None)
    if not seeds:
        return None
    diffs = [first[s] - second[s] for s in seeds]
    mean = statistics.mean(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    t = mean / (sd / len(diffs) ** 0.5) if len(diffs) > 1 and sd > 0 else None
    return {"seeds": seeds, "diffs": diffs, "mean": mean, "sd": sd, "t": t}
