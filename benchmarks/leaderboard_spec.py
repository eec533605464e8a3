"""What issue 18's leaderboard is (benchmarks/leaderboard.py runs it): the sequences, the named budgets and the
tags that keep them apart, each method's knob and grid and how selection goes on beyond a grid's end, the plan's
seeds, and where each record lives. Every other leaderboard module reads these settings from here, so a test
that changes one (monkeypatch on this module) changes it for all of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from nlora.methods import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "benchmarks" / "records"
RUNS = ROOT / "runs" / "leaderboard"

SEQUENCES = {
    "4task": "agnews,amazon,MNLI,QQP",
    # in the spirit of the paper's order 4, with the complete tasks of ../shared/CL_Benchmark
    "10task": "MNLI,CB,WiC,COPA,QQP,BoolQA,RTE,amazon,SST-2,agnews",
}

# Per-task budgets, by name (--budget). "main": 1000 training examples per task (125 steps of batch 8, five
# times the 25 steps after which MNLI and QQP sat at their majority-class rate in docs/results-3seed) and 200
# test examples (tasks with fewer rows use all of theirs: CB 250 / 56, COPA 400 / 100). fp32: this CPU has no
# bf16 instructions. "pilot": the budget of docs/results.md, to compare with it.
BUDGETS = {
    "main": dict(model="smollm2", max_train=1000, max_test=200, epochs=1.0, batch_size=8, lr=2e-3, precision="fp32"),
    "pilot": dict(model="smollm2", max_train=200, max_test=100, epochs=1.0, batch_size=8, lr=2e-3, precision="fp32"),
}
VAL_ROWS = 200  # validation rows carved from each task's training data ...
VAL_MAX_SHARE = 0.25  # ... at most this share of the task's training rows
VAL_SPLIT_SEED = 0  # which training rows become validation rows (the same for every method)
SELECT_SEQUENCE, SELECT_SEED = "4task", 1

# The main knob of each method with one (the `lambda` override: each method's main coefficient), 3-4 values
# around its default (`nlora methods NAME`). n-lora: paper form, where the default 0.4 (the reference code's, for
# its r x r form) is far too strong on SmolLM2; docs/results.md chose 1e-5 from 1e-5..1e-3, so the grid is
# centred there. Methods not listed have no such knob and get no selection (gainlora keeps the released
# thresholds: its three 4-task seeds ran at them, and its gates, a_t(x_old) = 0, keep old inputs off new branches
# beside its bases).
GRIDS = {
    "n-lora": [3e-6, 1e-5, 5e-5, 2e-4],  # L1 weight on s*B*A
    "o-lora": [0.1, 0.5, 1.0],  # lambda1, orthogonality of A_t to earlier A's (default 0.5)
    "ewc": [1e3, 1e4, 1e5],  # Fisher penalty weight (default 1e4)
    "l2": [0.1, 1.0, 10.0],  # squared-distance pull weight (default 1)
    "lwf": [0.3, 1.0, 3.0],  # distillation weight (default 1)
    "replay": [0.01, 0.02, 0.05],  # share of each earlier task's training examples kept (default 0.02)
    "l2p": [2e-3, 2e-2, 2e-1],  # learning rate (LR_KNOB)
    "clora": [0.3, 1.0, 3.0],  # subspace penalty weight (default 1)
    "migu": [2e-5, 1e-4, 5e-4],  # learning rate (LR_KNOB); its quantile at the paper's 0.7
    "migu-lora": [0.5, 0.7, 0.9],
    # GPM energy threshold (default 0.995, the released scripts'). Its energy is C's squared singular values
    # (sigma^4 of the inputs): on SmolLM2's agnews rows 0.995 keeps 4 of 576 directions per layer (67% of
    # trace C), 0.999 keeps 17, 0.9999 keeps 83 (91%), so the grid reaches past the T5-large value.
    "inflora": [0.995, 0.999, 0.9999],
    "sapt-arm": [0.03, 0.1, 0.3],  # KL weight of the generated-replay gate loss (default 0.1)
    "seq-ft": [2e-5, 1e-4, 5e-4],  # learning rate (LR_KNOB)
    "progprompt": [2e-3, 2e-2, 2e-1],
    "seq-prompt": [2e-3, 2e-2, 2e-1],
}
# Methods whose grid is the learning rate instead of a coefficient. The budget's lr (2e-3) suits LoRA; soft
# prompts barely move at it (l2p stayed near its start in docs/leaderboard.md's pilot) and are commonly trained
# at 1e-2..3e-1, while full fine-tuning of every weight at 2e-3 wrecks a pretrained model (its sources use
# 1e-4 and below). A single lr for all would make straw men of them; the same data and steps stay fixed.
LR_KNOB = {"l2p", "progprompt", "seq-prompt", "seq-ft", "migu"}
# A best value on an end of its grid says the grid was too narrow on that side: selection then runs the next value
# beyond that end, a step of the grid's own ratio there, up to EDGE_STEPS values per end, inside the option's
# limits. Only geometric grids are extended (neighbours at least MIN_EDGE_RATIO apart): migu-lora's quantile grid
# (0.5, 0.7, 0.9) is a range of its own, not a scale to go on along.
EDGE_STEPS = 2
MIN_EDGE_RATIO = 2.0
# Knobs that set how much of the earlier tasks' data a method keeps: a memory budget, not a strength to tune. More
# memory buys accuracy all the way to training on every earlier example (the mtl bound's regime), so a best value
# on the upper end says only that, and selection never goes beyond it: the grid is the memory range compared (replay:
# 1-5% of each earlier task, around the 2% the N-LoRA paper's Replay baseline and Recurrent-KIF keep). Below the
# lower end it still may, since less memory is no unfair advantage.
MEMORY_KNOBS = {"replay"}


def knob_of(method: str) -> str:
    """What a method's grid varies: "lr" (LR_KNOB) or "lambda" (its main coefficient)."""
    return "lr" if method in LR_KNOB else "lambda"


# issue 18's plan
PLAN_SEEDS = {"4task": [1, 2, 3], "10task": [1, 2]}
TEN_TASK_FIXED = ["seq-lora", "inc-lora", "o-lora", "n-lora", "mtl"]
TEN_TASK_BEST = 5  # ... and the best five of the 4-task table
# Past the plan, the queue's last lines (benchmarks/leaderboard_queue.sh): more seeds for the best method and
# those not distinguishable from it (`--methods tied`), the next step toward a method ahead beyond the spread
TIE_BREAK_SEEDS = {"4task": [4, 5], "10task": [3]}
BUDGET_METHODS, BUDGET_EPOCHS = ["n-lora", "o-lora"], [1.0, 3.0]


EPOCHS_IN_TAG = re.compile(r"-n\d+-t\d+-e([0-9.]+)-")
GATED_BY_INPUT = {"gainlora", "sapt-arm", "sapt-sals"}  # learnt gates on the input choose the adapters' mix
# Trained on every task's data at once, so not continual: the upper bound the others are measured against. Its
# row stays in the table (with its paired gap to the best), but it is never the best nor one of the best five.
UPPER_BOUNDS = {"mtl"}


def settings_of(args) -> dict:
    """The budget of a run: the named budget, then any flag given."""
    s = dict(BUDGETS[args.budget])
    for key in ("model", "max_train", "max_test", "epochs", "batch_size", "lr", "precision", "lora_r", "lora_alpha"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    if s.get("lora_r") and not s.get("lora_alpha"):
        s["lora_alpha"] = 4.0 * s["lora_r"]
    s.setdefault("lora_r", None)
    s.setdefault("lora_alpha", None)
    s["nlora_form"] = getattr(args, "nlora_form", None) or "paper"
    return s


def budget_tag(s: dict) -> str:
    """Everything that changes what is trained or tested, in a folder name."""
    model = re.sub(r"[^A-Za-z0-9.]+", "-", Path(str(s["model"]).rstrip("/")).name).strip("-") or "model"
    tag = (
        f"{model}-n{s['max_train']}-t{s['max_test']}-e{s['epochs']:g}-b{s['batch_size']}-lr{s['lr']:g}-{s['precision']}"
    )
    if s.get("lora_r"):
        tag += f"-r{s['lora_r']}-a{s['lora_alpha']:g}"
    if s.get("nlora_form", "paper") != "paper":
        tag += f"-{s['nlora_form']}"
    return tag


def run_path(records: Path, tag: str, seq: str, method: str, seed: int) -> Path:
    return records / tag / seq / method / f"seed-{seed}.json"


def selection_dir(records: Path, tag: str, seq: str, method: str) -> Path:
    return records / tag / "selection" / seq / method


def point_path(records: Path, tag: str, seq: str, method: str, value: float) -> Path:
    return selection_dir(records, tag, seq, method) / f"{knob_of(method)}-{value:g}.json"


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def choose(points: list[dict]) -> float:
    """Highest validation AA, then BWT (a missing BWT ranks last among ties); still tied: the earlier grid value."""
    best = max(points, key=lambda p: (p["aa"], p["bwt"] if p["bwt"] is not None else float("-inf")))
    return best["value"]


def knob_allows(method: str, value: float) -> bool:
    """Whether ``value`` is inside the limits of what the method's grid varies (an lr: above 0)."""
    if knob_of(method) == "lr":
        return value > 0
    from nlora.config import within_limit
    from nlora.methods.options import find_spec

    option = find_spec(REGISTRY[method].Options, "lambda")
    return option is None or option.limit is None or within_limit(value, option.limit)


def beyond_edge(method: str, points: list[dict]) -> float | None:
    """The value selection must still run for ``method``, whose grid and extensions so far are all recorded in
    ``points``: the next one beyond the end where the best lies (see EDGE_STEPS), or None when the choice is
    final."""
    grid, values = sorted(GRIDS[method]), sorted(p["value"] for p in points)
    if len(values) < 2:
        return None
    best = choose(points)
    if best == values[-1]:
        if method in MEMORY_KNOBS:
            return None
        edge, inner, added = values[-1], values[-2], sum(v > grid[-1] for v in values)
    elif best == values[0]:
        edge, inner, added = values[0], values[1], sum(v < grid[0] for v in values)
    else:
        return None
    if added >= EDGE_STEPS or edge <= 0 or inner <= 0 or max(edge, inner) / min(edge, inner) < MIN_EDGE_RATIO:
        return None
    value = float(f"{edge * edge / inner:.2g}")  # round: 2e-4 after 5e-5 gives 8e-4, not 7.9999e-4
    return value if knob_allows(method, value) else None


def selection_values(records: Path, tag: str, seq: str, method: str) -> tuple[list[float], list[dict]]:
    """The knob values selection needs for ``method`` and the recorded points among them: its grid, then, while
    every value so far is recorded and the best lies on an end, the next one beyond it (``beyond_edge``)."""
    values = sorted(GRIDS[method])
    while True:
        points = recorded_points(records, tag, seq, method, values)
        more = beyond_edge(method, points) if len(points) == len(values) else None
        if more is None or more in values:
            return values, points
        values = sorted([*values, more])


def recorded_points(records: Path, tag: str, seq: str, method: str, values: list[float]) -> list[dict]:
    """The selection records of ``values`` that exist, in value order (read anew: another process may have
    finished some meanwhile)."""
    points = []
    for value in sorted(values):
        path = point_path(records, tag, seq, method, value)
        rec = read(path)
        if rec is not None:
            points.append({"value": value, "aa": rec["aa"], "bwt": rec["bwt"], "record": path.name})
    return points


def ran_on_gpu(r: dict) -> bool:
    """Whether a record's run used an accelerator (records made before the field ran on this project's CPU)."""
    return r.get("device_type", "cpu") != "cpu"


def same_budget_but_epochs(tag: str, other: str) -> bool:
    """Whether two budget tags differ at most in their epochs (the budget question's runs)."""
    a, b = EPOCHS_IN_TAG.search(tag), EPOCHS_IN_TAG.search(other)
    return bool(a and b) and tag[: a.start(1)] + tag[a.end(1) :] == other[: b.start(1)] + other[b.end(1) :]
