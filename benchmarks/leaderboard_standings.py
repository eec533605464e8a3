"""The leaderboard's records read as standings: run records grouped per method with their seed spread, the best
method and every other one paired against it by seed, the best five and the methods tied with the best, and the
records issue 18's plan expects (which depend on those standings: the 10-task runs take the 4-task best five)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nlora.methods import REGISTRY

sys.path.insert(0, str(Path(__file__).resolve().parent))
import leaderboard_spec as spec  # noqa: E402
from common import T_CRIT_5, mean_sd, paired  # noqa: E402


def best_of(records: Path, tag: str, seq: str, k: int) -> list[str]:
    """The k continual methods (not UPPER_BOUNDS) with the highest mean AA in the records of (tag, seq)."""
    rows = group_rows(load_runs(records).get((tag, seq), []))
    have = (r for r in rows.values() if r["aa"][0] is not None and r["method"] not in spec.UPPER_BOUNDS)
    ranked = sorted(have, key=lambda r: -r["aa"][0])
    return [r["method"] for r in ranked[:k]]


def tied_with_best(records: Path, tag: str, seq: str) -> list[str]:
    """The best continual method of (TAG, SEQ) and every continual method whose AA it does not beat beyond the
    seed spread (paired t within the two-sided 5% value) over at least the plan's seeds for SEQ: the runs that
    more seeds could still tell apart (the goal of issue 18 is a method ahead of every other beyond the spread).
    Empty while no method is best, or none is tied with it."""
    rows = group_rows(load_runs(records).get((tag, seq), []))
    best = best_method(rows)
    if best is None:
        return []
    tied = [
        m
        for m, c in comparisons(rows, best).items()
        if m not in spec.UPPER_BOUNDS
        and c["aa"] is not None
        # a method still short of the plan's seeds gets those first
        and len(c["aa"]["diffs"]) >= len(spec.PLAN_SEEDS.get(seq, [1, 2]))
        and beyond_spread(c["aa"]) is False
    ]
    return [best, *sorted(tied)] if tied else []


def plan_entries(records: Path, s: dict) -> list[tuple[str, Path]]:
    """issue 18's plan at budget s: (group, record path) for every record it needs."""
    tag = spec.budget_tag(s)
    out = []
    for method in spec.GRIDS:
        for value in spec.selection_values(records, tag, spec.SELECT_SEQUENCE, method)[0]:
            path = spec.point_path(records, tag, spec.SELECT_SEQUENCE, method, value)
            out.append(("selection (4task, seed 1, validation)", path))
    for method in sorted(REGISTRY):
        for seed in spec.PLAN_SEEDS["4task"]:
            out.append(("4task x every method", spec.run_path(records, tag, "4task", method, seed)))
    best = best_of(records, tag, "4task", spec.TEN_TASK_BEST)
    for method in dict.fromkeys(spec.TEN_TASK_FIXED + best):
        for seed in spec.PLAN_SEEDS["10task"]:
            out.append(("10task", spec.run_path(records, tag, "10task", method, seed)))
    for epochs in spec.BUDGET_EPOCHS:
        t = spec.budget_tag(dict(s, epochs=epochs))
        for method in spec.BUDGET_METHODS:
            for seed in spec.PLAN_SEEDS["4task"]:
                out.append((f"budget: 4task at {epochs:g} epoch(s)", spec.run_path(records, t, "4task", method, seed)))
    seen, unique = set(), []
    for group, path in out:  # the 1-epoch budget runs are the main runs when the budget is 1 epoch
        if path not in seen:
            seen.add(path)
            unique.append((group, path))
    return unique


def load_runs(records: Path) -> dict[tuple[str, str], list[dict]]:
    """Run records by (budget tag, sequence); selection records are elsewhere and never mix in."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(Path(records).glob("*/*/*/seed-*.json")):
        rec = spec.read(path)
        if rec is None or rec.get("kind") != "run":
            continue
        tag, seq, method, name = path.relative_to(records).parts
        if (rec.get("budget_tag"), rec.get("sequence"), rec.get("method"), f"seed-{rec.get('seed')}") != (
            tag,
            seq,
            method,
            path.stem,
        ):
            continue  # a record in the wrong folder is not trusted
        groups.setdefault((tag, seq), []).append(rec)
    return groups


def load_choices(records: Path) -> list[dict]:
    """Every selection: its choice.json, or, for one still running, its grid points so far (``chosen`` None).
    ``outside``: points recorded in its folder that are not candidates (an earlier version's run beyond the upper
    end of a memory knob's grid, spec.MEMORY_KNOBS, or a value since taken off a grid): shown apart, never
    chosen."""
    out = []
    for folder in sorted(p for p in Path(records).glob("*/selection/*/*") if p.is_dir()):
        tag, _, seq, method = folder.relative_to(records).parts
        recorded = []
        for path in sorted(folder.glob("*.json")):
            rec = spec.read(path)
            if rec and rec.get("kind") == "selection":
                recorded.append({"value": rec["hyperparameter"]["value"], "aa": rec["aa"], "bwt": rec["bwt"]})
        recorded.sort(key=lambda q: q["value"])
        choice = spec.read(folder / "choice.json")
        if choice and not (method in spec.GRIDS and spec.beyond_edge(method, choice["points"]) is not None):
            used = {p["value"] for p in choice["points"]}
            out.append(choice | {"outside": [p for p in recorded if p["value"] not in used]})
            continue  # a choice written before selection went on beyond its grid's end is shown as running
        values = spec.selection_values(records, tag, seq, method)[0] if method in spec.GRIDS else []
        points = [p for p in recorded if not values or p["value"] in values]
        if points:
            out.append(
                {"method": method, "budget_tag": tag, "sequence": seq, "knob": spec.knob_of(method), "points": points}
                | {"chosen": None, "grid": spec.GRIDS.get(method, []), "grid_size": len(values)}
                | {"outside": [p for p in recorded if p not in points]}
            )
    return out


def mean_sd1(values: list) -> tuple[float | None, float | None]:
    """common.mean_sd, with no sd (None) from a single value."""
    m, sd = mean_sd(values)
    return m, (sd if sum(v is not None for v in values) > 1 else None)


def group_rows(recs: list[dict], expected: dict[str, list[int]] | None = None) -> dict[str, dict]:
    """Per method: seeds present and missing, AA/BWT mean and sd, per-seed values for pairing."""
    by_method: dict[str, dict[int, dict]] = {}
    for r in recs:
        by_method.setdefault(r["method"], {})[r["seed"]] = r
    all_seeds = sorted({r["seed"] for r in recs})
    expected = expected or {}
    rows = {}
    for method in sorted(set(by_method) | set(expected)):
        runs = by_method.get(method, {})
        want = sorted(set(expected.get(method, all_seeds)) | set(runs))
        hps = list(
            {
                json.dumps(r.get("hyperparameter"), sort_keys=True): r.get("hyperparameter") for r in runs.values()
            }.values()
        )
        hp = hps[0] if len(hps) == 1 else {"mixed": hps} if hps else None  # seeds that ran with different values
        cls = REGISTRY.get(method)
        on_cpu = [r for r in runs.values() if not spec.ran_on_gpu(r)]
        on_gpu = [r for r in runs.values() if spec.ran_on_gpu(r)]
        rows[method] = {
            "method": method,
            "seeds": sorted(runs),
            "missing": [s for s in want if s not in runs],
            "aa_by_seed": {s: r["aa"] for s, r in runs.items()},
            "bwt_by_seed": {s: r["bwt"] for s, r in runs.items()},
            "aa": mean_sd1([r["aa"] for r in runs.values()]),
            "bwt": mean_sd1([r["bwt"] for r in runs.values()]),
            "acr": mean_sd1([r.get("acr") for r in runs.values()]),
            "nuclear_norm": mean_sd1([r.get("nuclear_norm_mean") for r in runs.values()]),
            "acr_by_seed": {s: r.get("acr") for s, r in runs.items()},
            "nuclear_norm_by_seed": {s: r.get("nuclear_norm_mean") for s, r in runs.items()},
            "stored_kib": mean_sd1(
                [
                    sum(r["stored_bytes_per_task"]) / len(r["stored_bytes_per_task"]) / 1024
                    for r in runs.values()
                    if r.get("stored_bytes_per_task")
                ]
            ),
            # this CPU's seeds and a GPU's apart: a GPU process's CPU seconds say nothing of its cost
            "wall_min": mean_sd1([r["wall_time_s"] / 60 for r in on_cpu if r.get("wall_time_s") is not None]),
            # CPU time only when every seed has it (records of earlier versions do not): never a mix of the two
            "cpu_min": mean_sd1([r["cpu_time_s"] / 60 for r in on_cpu])
            if on_cpu and all(r.get("cpu_time_s") is not None for r in on_cpu)
            else (None, None),
            "gpu_wall_min": mean_sd1([r["wall_time_s"] / 60 for r in on_gpu if r.get("wall_time_s") is not None]),
            # the machines (CPU model, vector instructions, threads) its CPU seeds ran on: one method's minutes on
            # one host and another's on a host twice as fast are not a comparison of the two methods' cost
            "cpu_machines": sorted({r.get("machine") or "machine not recorded" for r in on_cpu}),
            "routing": mean_sd1([(r.get("routing") or {}).get("accuracy") for r in runs.values()]),
            "hp": hp,
            "needs_task_id": cls.needs_task_id if cls else None,
            "routes_by_input": cls.routes_by_input if cls else False,
            "gated": method in spec.GATED_BY_INPUT,
        }
    return rows


def best_method(rows: dict[str, dict]) -> str | None:
    """Highest mean AA among the continual methods (not UPPER_BOUNDS) with the most seeds."""
    have = [r for r in rows.values() if r["aa"][0] is not None and r["method"] not in spec.UPPER_BOUNDS]
    if not have:
        return None
    most = max(len(r["seeds"]) for r in have)
    return max((r for r in have if len(r["seeds"]) == most), key=lambda r: r["aa"][0])["method"]


def comparisons(rows: dict[str, dict], best: str) -> dict[str, dict]:
    """Every method against the best, paired by seed (only the seeds both have)."""
    out = {}
    for m, r in rows.items():
        if m == best:
            continue
        out[m] = {k: paired(r[f"{k}_by_seed"], rows[best][f"{k}_by_seed"]) for k in ("aa", "bwt")}
    return out


def t_critical(diff: dict) -> float:
    """The two-sided 5% t value for a paired difference (``paired``'s dict) over its seeds."""
    return T_CRIT_5.get(len(diff["diffs"]) - 1, 99)


def beyond_spread(diff: dict) -> bool | None:
    """Whether a paired difference (``paired``'s dict) lies beyond the seed spread: |t| above the two-sided 5%
    value for its seeds. None where it has no t (one seed, or the same difference on every seed)."""
    return None if diff["t"] is None else abs(diff["t"]) > t_critical(diff)


def expected_seeds(records: Path, s: dict | None) -> dict[tuple[str, str], dict[str, list[int]]]:
    """What the plan expects per (tag, sequence): method -> seeds."""
    if s is None:
        return {}
    exp: dict[tuple[str, str], dict[str, list[int]]] = {}
    for _, path in plan_entries(records, s):
        tag, seq, method = path.relative_to(records).parts[:3]
        if seq == "selection":
            continue
        exp.setdefault((tag, seq), {}).setdefault(method, []).append(int(path.stem.split("-")[1]))
    return exp


def chosen_for(choices: list[dict], tag: str, seq: str) -> dict[str, dict]:
    """Per method, the selection a run of (TAG, SEQ) would use, as `hyperparameter` finds it: this budget or the
    same one at other epochs, this sequence or the selection sequence (the closest first)."""
    out: dict[str, dict] = {}
    ranked = sorted(
        (c for c in choices if c.get("chosen") is not None and spec.same_budget_but_epochs(c["budget_tag"], tag)),
        key=lambda c: (c["budget_tag"] != tag, c["sequence"] != seq),
    )
    for c in ranked:
        if c["sequence"] in (seq, spec.SELECT_SEQUENCE):
            out.setdefault(
                c["method"], {"name": c.get("knob", "lambda"), "value": c["chosen"], "source": "choice.json"}
            )
    return out
