"""The leaderboard document from the records alone (`python benchmarks/leaderboard.py table`): per sequence and
budget a table of AA and BWT over seeds with paired differences against the best, the sentences on what holds
(the paper's claims among them), the per-task table, the AA-against-BWT figure; the budget question's section,
the selections, and the main budget's part copied into docs/results.md between its markers."""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

from nlora.io import write_text
from nlora.methods import REGISTRY

sys.path.insert(0, str(Path(__file__).resolve().parent))
import leaderboard_spec as spec  # noqa: E402
import leaderboard_standings as standings  # noqa: E402
from common import mean_sd, paired  # noqa: E402


def _ms(pair, digits=2, scale=1.0) -> str:
    m, sd = pair
    if m is None:
        return "-"
    return f"{m * scale:.{digits}f}" + ("" if sd is None else f" ± {sd * scale:.{digits}f}")


def _diff(c: dict | None) -> str:
    if c is None:
        return "-"
    t = "-" if c["t"] is None else f"{c['t']:.2f}"
    sig = "*" if standings.beyond_spread(c) else ""
    return f"{c['mean']:+.2f} (t {t}{sig}, n {len(c['diffs'])})"


def _hp(hp: dict | None) -> str:
    if hp and "mixed" in hp:
        return "mixed: " + " / ".join(_hp(h) for h in hp["mixed"])
    if not hp or hp.get("value") is None:
        return "-"
    src = hp.get("source", "")
    mark = " (chosen)" if "choice.json" in src else " (default)" if "default" in src else ""
    name = "lr " if hp.get("name") == "lr" else ""
    return f"{name}{hp['value']:g}{mark}"


def machine_keys(rows: list[dict]) -> dict[str, str]:
    """A short key per machine the rows' CPU seeds ran on ("A", "B", ... in the rows' order), or none where one
    machine ran them all."""
    machines = list(dict.fromkeys(m for r in rows if r["seeds"] for m in r["cpu_machines"]))
    return {m: chr(ord("A") + i) for i, m in enumerate(machines)} if len(machines) > 1 else {}


def _time(r: dict, keys: dict[str, str]) -> str:
    """The row's CPU time, or its wall time marked as such where a seed's record has no CPU time, with the keys of
    the machines it ran on (``keys``); seeds run on a GPU apart, as their wall time."""
    cpu = _ms(r["cpu_min"], 1) if r["cpu_min"][0] is not None else None
    if cpu is None and r["wall_min"][0] is not None:
        cpu = f"{_ms(r['wall_min'], 1)} (wall)"
    if cpu and keys:
        cpu += " [" + ", ".join(keys[m] for m in r["cpu_machines"]) + "]"
    gpu = f"{_ms(r['gpu_wall_min'], 1)} (GPU wall)" if r["gpu_wall_min"][0] is not None else None
    return "; ".join(x for x in (cpu, gpu) if x) or "-"


def _task_id(r: dict) -> str:
    if r["method"] in spec.UPPER_BOUNDS:
        return "no, upper bound §"
    if r["needs_task_id"]:
        return "yes"
    if r["routes_by_input"]:
        return "no, routes by input ‡"
    if r["gated"]:
        return "no, gates by input ‡"
    return "no"


def group_table(
    tag: str, seq: str, recs: list[dict], expected: dict[str, list[int]], chosen: dict[str, dict] | None = None
) -> tuple[list[str], dict]:
    """One sequence's table; ``chosen``: the selections of methods without a run yet, shown in their knob cell."""
    rows = standings.group_rows(recs, expected)
    for method, hp in (chosen or {}).items():
        if method in rows and rows[method]["hp"] is None:
            rows[method]["hp"] = hp
    best = standings.best_method(rows)
    comp = standings.comparisons(rows, best) if best else {}
    n_max = max((len(r["seeds"]) for r in rows.values()), default=0)
    lines = [
        f"### {seq} ({spec.SEQUENCES.get(seq, '?').replace(',', ' → ')}), budget {tag}",
        "",
        f"Best by mean AA: **{best or '-'}**. Differences are method minus {best or 'the best'}, paired by seed "
        "(only seeds both have); * marks |t| above the two-sided 5% value for that n.",
        "",
        "| method | task id | λ or lr | seeds | AA | BWT | ΔAA vs best | ΔBWT vs best | ACR (%) | nuclear norm "
        "| saved per task (KiB) | CPU time (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(rows.values(), key=lambda r: (r["aa"][0] is None, -(r["aa"][0] or 0.0), r["method"]))
    keys = machine_keys(order)
    for r in order:
        n, miss = len(r["seeds"]), len(r["missing"])
        seeds = f"{n}" + (f" (missing {miss})" if miss else "") + (" †" if 0 < n < n_max else "")
        c = comp.get(r["method"], {})
        lines.append(
            f"| {r['method']} | {_task_id(r)} | {_hp(r['hp'])} | {seeds} | {_ms(r['aa'])} | {_ms(r['bwt'])} "
            f"| {'(best)' if r['method'] == best else _diff(c.get('aa'))} "
            f"| {'(best)' if r['method'] == best else _diff(c.get('bwt'))} "
            f"| {_ms(r['acr'], 1, 100)} | {_ms(r['nuclear_norm'], 3)} | {_ms(r['stored_kib'], 0)} "
            f"| {_time(r, keys)} |"
        )
    missing = sum(len(r["missing"]) for r in rows.values())
    lines += [
        "",
        "Mean ± sd over seeds; `-`: no record (a missing run is never a zero); † fewer seeds than the most in "
        f"this table; {missing} run(s) missing here. ‡ CL_Benchmark prompts name their task "
        "(`Dataset:agnews`), so a method that routes or gates by input gets the task id nearly free. § trains "
        "on every task's data at once, not one after another: the upper bound, shown with its gap to the best "
        "but never the best itself. CPU time: the run's process time in training and evaluation, across "
        "resumes, at the record's thread count (pauses, other load on the machine and work lost to an "
        "interruption do not count); `(wall)`: records made before nlora measured it, their wall time "
        "instead; `(GPU wall)`: seeds run on a lent GPU (tools/device/leaderboard.sh), their wall time with "
        "other runs sharing the GPU; [A], [B], ...: the machines a row's seeds ran on (below), so that minutes "
        "are compared between rows of one machine only. Saved per task: the files a run keeps in each task's "
        "directory (the adapter that evaluation after that task loads, with any method state saved beside it; "
        "not predictions, logs or "
        "step checkpoints), the same for every method that trains one LoRA of the same shape; it is not what a "
        "method must keep to go on, which the next table gives.",
    ]
    if keys:
        lines.append("Machines: " + "; ".join(f"[{k}] {m}" for m, k in keys.items()) + ".")
    routed = [r for r in rows.values() if r["routing"][0] is not None]
    if routed:
        lines.append(
            "Routing accuracy (share of test prompts sent where the task id would send them): "
            + ", ".join(f"{r['method']} {_ms(r['routing'], 1)}%" for r in routed)
            + "."
        )
    kept = keeps_per_task([r["method"] for r in order if r["seeds"]])
    if kept:
        lines += [
            "",
            "| method | what it keeps from task to task, in its own words (`nlora methods <name>`) |",
            "|---|---|",
        ]
        lines += kept
    lines += ["", *summary_sentences(rows, best, comp), ""]
    claims = paper_claims(rows)
    if claims:
        lines += ["The N-LoRA paper's claims on this table (n-lora against each, paired by seed):", "", *claims, ""]
    lines += per_task_table(recs, [r["method"] for r in order])
    return lines, rows


def keeps_per_task(methods: list[str]) -> list[str]:
    """The methods' own statements of the memory they carry from task to task (``stored_per_task``, at their
    default options): replay's kept examples, ewc's Fisher and anchor, o-lora's earlier A matrices. These are not
    files in a task's directory (replay draws its sample from the training data again, ewc and l2 rebuild theirs
    on resume), so the saved-per-task column cannot show them."""
    return [
        f"| {m} | {REGISTRY[m].stored_per_task} |" for m in methods if getattr(REGISTRY.get(m), "stored_per_task", "")
    ]


def per_task_table(recs: list[dict], methods: list[str]) -> list[str]:
    """Where each method learns and forgets: per task, the mean over seeds of its accuracy right after training
    on it (the matrix's diagonal) and after the last task (its last row); METHODS gives the row order."""
    with_matrix = [r for r in recs if r.get("accuracy_matrix") and r.get("tasks")]
    if not with_matrix:
        return []
    tasks = max((r["tasks"] for r in with_matrix), key=len)
    by_method: dict[str, list[list]] = {}  # the matrices of the records over these tasks, per method
    for r in with_matrix:
        by_method.setdefault(r["method"], [])
        if r["tasks"] == tasks and len(r["accuracy_matrix"]) == len(tasks):
            by_method[r["method"]].append(r["accuracy_matrix"])

    def mean_at(matrices: list[list], row: int | None, j: int) -> float | None:
        return mean_sd([m[j if row is None else row][j] for m in matrices])[0]

    lines = [
        "Per task, mean over seeds: accuracy right after training on it → after the last task (exact match, %; "
        "the last task has one figure, both at once).",
        "",
        "| method | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for method in (m for m in methods if m in by_method):
        rs = by_method[method]
        cells = []
        for j in range(len(tasks)):
            end = _ms((mean_at(rs, -1, j), None), 1)
            # the last task's "right after" is the last row itself: one figure
            cells.append(end if j == len(tasks) - 1 else f"{_ms((mean_at(rs, None, j), None), 1)} → {end}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def summary_sentences(rows: dict, best: str | None, comp: dict) -> list[str]:
    if best is None:
        return ["No finished runs yet."]
    above, below, tied, untested = [], [], [], []
    bounds = []
    for m, c in comp.items():
        a = c.get("aa")
        if m in spec.UPPER_BOUNDS:
            if a is not None:
                t = "" if a["t"] is None else f", t {a['t']:.2f}"
                bounds.append(f"{m} {a['mean']:+.2f} (n {len(a['diffs'])}{t})")
        elif a is None or a["t"] is None:
            untested.append(m)
        elif standings.beyond_spread(a):
            (above if a["mean"] > 0 else below).append(m)  # above: a method with fewer seeds than the best
        else:
            ahead = a["mean"] > 0
            k = sum(d > 0 if ahead else d < 0 for d in a["diffs"])
            # how consistent the sign is, next to the t: a method behind on every seed is not a coin toss
            tied.append(
                f"{m} ({'above' if ahead else 'below'} it on {k} of {len(a['diffs'])} seeds, t {a['t']:.2f}, "
                f"within ±{standings.t_critical(a):.2f})"
            )
    out = [
        f"- {best} has the highest mean AA of the continual methods with the most seeds ({_ms(rows[best]['aa'])} "
        f"over {len(rows[best]['seeds'])} seed(s))."
    ]
    if bounds:
        out.append(f"- The upper bound's gap to it (AA, paired by seed): {', '.join(bounds)}.")
    if above:
        out.append(f"- Above it beyond the seed spread, with fewer seeds so far: {', '.join(sorted(above))}.")
    if below:
        out.append(f"- Below it beyond the seed spread (paired t, 5%): {', '.join(sorted(below))}.")
    if tied:
        out.append(f"- Not distinguishable from it with these seeds: {', '.join(sorted(tied))}.")
    if untested:
        out.append(f"- Not testable (fewer than 2 shared seeds, or no spread): {', '.join(sorted(untested))}.")
    return out


# What the N-LoRA paper claims of n-lora against another method (REFERENCE.md §6: the paper's T5-large figures,
# where a later paper's table gives the other method's, so marked): (row key, the other method, +1 where the
# claim is that n-lora's value is higher, -1 lower, the claim, the paper's figures, how a value prints).
PAPER_CLAIMS = (
    ("aa", "o-lora", +1, "higher AA than o-lora", "78.8 against 75.8, T5-large orders 1-3", "{:.2f}"),
    ("aa", "seq-lora", +1, "higher AA than seq-lora", "78.8 against 43.7, the latter from a later paper", "{:.2f}"),
    ("aa", "inc-lora", +1, "higher AA than inc-lora", "78.8 against 66.4, the latter from a later paper", "{:.2f}"),
    (
        "bwt",
        "o-lora",
        +1,
        "less forgetting than o-lora (higher BWT)",
        "-4.9 against -7.8, from a later paper",
        "{:.2f}",
    ),
    # the paper names no threshold for a collision; here |dW| > 1e-4 (nlora.analysis.DEFAULT_THRESHOLD)
    ("acr", "o-lora", -1, "fewer collisions than o-lora (ACR)", "0.8% against 46.6%", "{:.1%}"),
    ("nuclear_norm", "o-lora", -1, "a lower nuclear norm than o-lora", "0.14 against 6.80", "{:.3f}"),
)


def paper_claims(rows: dict) -> list[str]:
    """One sentence per claim of the paper that this table's records can speak to: n-lora against the other
    method on the seeds both have, and whether the claim holds beyond the seed spread (paired t, two-sided 5%),
    in direction only, or the other way round."""
    out = []
    for key, other, sign, claim, figures, fmt in PAPER_CLAIMS:
        if "n-lora" not in rows or other not in rows:
            continue
        c = paired(rows["n-lora"][f"{key}_by_seed"], rows[other][f"{key}_by_seed"])
        if c is None:
            continue
        n, seeds = len(c["diffs"]), c["seeds"]
        mine = statistics.mean(rows["n-lora"][f"{key}_by_seed"][s] for s in seeds)
        theirs = statistics.mean(rows[other][f"{key}_by_seed"][s] for s in seeds)
        agree = sum(d * sign > 0 for d in c["diffs"])
        if c["t"] is None:
            verdict = f"not testable yet (n {n}, no t); in its direction on {agree} of {n}"
        else:
            beyond = standings.beyond_spread(c)
            stat = f"t {c['t']:.2f} against ±{standings.t_critical(c):.2f}"
            if c["mean"] * sign > 0:
                verdict = f"holds {'beyond the seed spread' if beyond else 'in direction, within the seed spread'}"
                verdict += f" ({agree} of {n} seeds, {stat})"
            else:
                verdict = "the opposite holds beyond the seed spread" if beyond else "does not hold"
                verdict += f": the other way round on {n - agree} of {n} seeds ({stat})"
        on = f"seed {seeds[0]}" if n == 1 else f"seeds {', '.join(map(str, seeds))}"
        out.append(
            f"- {claim} (paper: {figures}): {verdict}; here {fmt.format(mine)} against {fmt.format(theirs)} on {on}."
        )
    return out


def listed_points(points: list[dict], name: str) -> str:
    """Selection points as "value: validation AA / BWT", ``name`` before each value ("lr " for an lr grid)."""
    return ", ".join(
        f"{name}{p['value']:g}: {p['aa']:.2f} / " + ("-" if p["bwt"] is None else f"{p['bwt']:.2f}") for p in points
    )


def selection_table(choices: list[dict]) -> list[str]:
    if not choices:
        return []
    lines = [
        "### Hyperparameter selection (seed 1, validation split carved from training data)",
        "",
        "| budget | sequence | method | knob value: validation AA / BWT | chosen |",
        "|---|---|---|---|---|",
    ]
    for c in choices:
        name = "lr " if c.get("knob") == "lr" else ""  # choices written before the knob was recorded: lambda
        pts = listed_points(c["points"], name)
        if c.get("outside"):
            above = c["method"] in spec.MEMORY_KNOBS and all(p["value"] > max(c["grid"]) for p in c["outside"])
            where = "above its memory range" if above else "off its grid"
            pts += f"; not candidates, {where}: {listed_points(c['outside'], name)}"
        chosen = (
            f"{name}{c['chosen']:g}"
            if c["chosen"] is not None
            else f"running: {len(c['points'])} of {c.get('grid_size') or '?'} points"
        )
        lines.append(f"| {c['budget_tag']} | {c['sequence']} | {c['method']} | {pts} | {chosen} |")
    memory = sorted({c["method"] for c in choices} & spec.MEMORY_KNOBS)
    if memory:
        lines += [
            "",
            f"The knob of {', '.join(memory)} is how much of each earlier task's data it keeps: a memory budget, not a "
            "strength. More memory buys accuracy up to training on every earlier example (the mtl bound's regime), so "
            "its selection stays inside its grid (the memory range compared) and is never extended above it; what "
            "it keeps is said under each sequence's table.",
        ]
    return lines + [""]


def budget_section(groups: dict) -> list[str]:
    """The budget question: n-lora against o-lora on the 4-task sequence at each epoch count of a budget that is
    otherwise the same (AA and BWT, paired by seed), what more epochs do to each method (paired by seed against
    its fewest-epoch runs), and in words whether the ranking on AA holds."""
    fam: dict[str, dict[float, list]] = {}
    for (tag, seq), recs in groups.items():
        m = spec.EPOCHS_IN_TAG.search(tag)
        if seq != "4task" or not m:
            continue
        fam.setdefault(tag[: m.start(1)] + "*" + tag[m.end(1) :], {})[float(m.group(1))] = recs
    a, b = spec.BUDGET_METHODS[:2]
    lines = []
    for base, by_epochs in fam.items():
        if len(by_epochs) < 2:
            continue
        rows = {epochs: standings.group_rows(by_epochs[epochs]) for epochs in sorted(by_epochs)}

        def cell(r: dict, m: str, k: str, seeds: bool) -> str:
            if m not in r:
                return "- (0)" if seeds else "-"
            return _ms(r[m][k]) + (f" ({len(r[m]['seeds'])})" if seeds else "")

        def pair(r: dict, k: str) -> dict | None:
            return paired(r[a][f"{k}_by_seed"], r[b][f"{k}_by_seed"]) if a in r and b in r else None

        lines += [
            f"### The budget question: {a} vs {b} by epochs ({base})",
            "",
            f"Paired by seed, {a} minus {b}; * marks |t| above the two-sided 5% value for that n.",
            "",
            f"| epochs | {a} AA (seeds) | {b} AA (seeds) | ΔAA | {a} BWT | {b} BWT | ΔBWT | ahead on AA |",
            "|---|---|---|---|---|---|---|---|",
        ]
        verdicts = []  # (epochs, the method ahead on AA or "tie", the paired AA difference)
        for epochs, r in rows.items():
            c = pair(r, "aa")
            ahead = "-" if c is None else (a if c["mean"] > 0 else b if c["mean"] < 0 else "tie")
            lines.append(
                f"| {epochs:g} | {cell(r, a, 'aa', True)} | {cell(r, b, 'aa', True)} | {_diff(c)} | "
                f"{cell(r, a, 'bwt', False)} | {cell(r, b, 'bwt', False)} | {_diff(pair(r, 'bwt'))} | {ahead} |"
            )
            if c is not None:
                verdicts.append((epochs, ahead, c))
        # each method's own gain from more epochs: the same seed's runs, so the same initial adapters
        first = min(rows)
        lines += [
            "",
            f"| method | epochs | ΔAA vs {first:g} epoch(s) | ΔBWT vs {first:g} epoch(s) |",
            "|---|---|---|---|",
        ]
        for m in spec.BUDGET_METHODS:
            for epochs, r in rows.items():
                if epochs == first:
                    continue
                d = {
                    k: paired(r[m][f"{k}_by_seed"], rows[first][m][f"{k}_by_seed"])
                    if m in r and m in rows[first]
                    else None
                    for k in ("aa", "bwt")
                }
                lines.append(f"| {m} | {epochs:g} | {_diff(d['aa'])} | {_diff(d['bwt'])} |")
        lines += ["", *budget_sentences(verdicts), ""]
    return lines


def budget_sentences(verdicts: list[tuple[float, str, dict]]) -> list[str]:
    """Plain words on the budget question from (epochs, leader on AA, paired AA difference) per epoch count."""
    if not verdicts:
        return [f"- No seed has both {' and '.join(spec.BUDGET_METHODS[:2])} at any epoch count yet."]
    out = []
    for epochs, ahead, c in verdicts:
        n = len(c["diffs"])
        if c["t"] is None:
            how = f"n {n}, no t"
        else:
            where = "beyond" if standings.beyond_spread(c) else "within"
            how = f"t {c['t']:.2f}, n {n}: {where} the 5% value ±{standings.t_critical(c):.2f}"
        lead = "neither is ahead" if ahead == "tie" else f"{ahead} is ahead by {abs(c['mean']):.2f} AA"
        out.append(f"- At {epochs:g} epoch(s) {lead} ({how}).")
    leaders = {ahead for _, ahead, _ in verdicts}
    if len(verdicts) < 2:
        out.append("- The ranking cannot be compared across epochs yet: one epoch count has both methods.")
    elif len(leaders) == 1:
        out.append(f"- The ranking on AA holds across {', '.join(f'{e:g}' for e, _, _ in verdicts)} epoch(s).")
    else:
        out.append(
            "- The ranking on AA changes with the epochs: "
            + ", ".join(f"{ahead} at {e:g}" for e, ahead, _ in verdicts)
            + "."
        )
    return out


# Ten hues, dark shades first, then light ones (tab20 pairs a dark and a light shade of each hue), and a marker
# per round of them: neighbours in the method list never share a hue.
PALETTE = (*range(0, 20, 2), *range(1, 20, 2))
MARKERS = "osD^v"


def method_style(method: str) -> tuple[tuple, str]:
    """A method's colour and marker, fixed by its place among all registered methods, so it keeps them in every
    figure and as records arrive."""
    import matplotlib.pyplot as plt

    names = sorted(REGISTRY)
    i = names.index(method) if method in names else len(names)
    return plt.cm.tab20(PALETTE[i % len(PALETTE)]), MARKERS[(i // len(PALETTE)) % len(MARKERS)]


def aa_bwt_figure(tag: str, seq: str, rows: dict, path: Path) -> Path | None:
    """AA against BWT per method: each seed a dot, the mean with ± sd bars."""
    have = [r for r in rows.values() if r["aa"][0] is not None and r["bwt"][0] is not None]
    if not have:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in sorted(have, key=lambda r: r["method"]):
        color, marker = method_style(r["method"])
        seeds = [s for s in r["seeds"] if r["bwt_by_seed"][s] is not None]
        ax.scatter(
            [r["bwt_by_seed"][s] for s in seeds],
            [r["aa_by_seed"][s] for s in seeds],
            s=12,
            color=color,
            marker=marker,
            alpha=0.5,
        )
        ax.errorbar(
            r["bwt"][0], r["aa"][0], xerr=r["bwt"][1], yerr=r["aa"][1], fmt=marker, ms=5, color=color, capsize=2
        )
        ax.annotate(r["method"], (r["bwt"][0], r["aa"][0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("BWT")
    ax.set_ylabel("AA")
    ax.set_title(f"{seq}, {tag}", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


RESULTS_BEGIN = "<!-- leaderboard: begin (written by `python benchmarks/leaderboard.py table`; edit outside) -->"
RESULTS_END = "<!-- leaderboard: end -->"


def build_table(records: Path, out: Path, s: dict | None = None, results: Path | None = None) -> str:
    """The leaderboard markdown from the records alone (figures beside it, in OUT's stem folder). ``results``: a
    document whose block between RESULTS_BEGIN and RESULTS_END gets the main budget's part (the budget of ``s``:
    its sequences, the budget question and its selections); the rest of it is left as it is."""
    records, out = Path(records), Path(out)
    groups = standings.load_runs(records)
    expected = standings.expected_seeds(records, s)
    for key in expected:
        groups.setdefault(key, [])
    lines = [
        "# Leaderboard (built by `python benchmarks/leaderboard.py table` from benchmarks/records)",
        "",
        "Each table is one sequence at one budget (the budget tag: model, training examples per task, test "
        "examples per task, epochs, batch, lr, precision); runs of different budgets are never mixed. "
        "Machines and commits are in each record.",
        "",
    ]
    main_tag = spec.budget_tag(s) if s is not None else None
    main: list[str | Path] = []  # the main budget's part, figures as paths (linked relative to each document)
    choices = standings.load_choices(records)
    order = list(spec.SEQUENCES)
    for tag, seq in sorted(groups, key=lambda k: (k[0], order.index(k[1]) if k[1] in order else len(order), k[1])):
        if not groups[(tag, seq)] and not expected.get((tag, seq)):
            continue
        text, rows = group_table(
            tag, seq, groups[(tag, seq)], expected.get((tag, seq), {}), standings.chosen_for(choices, tag, seq)
        )
        fig = aa_bwt_figure(tag, seq, rows, out.parent / out.stem / f"{tag}-{seq}-aa-bwt.png")
        section = [*text, *([fig, ""] if fig else [])]
        lines += section
        if main_tag is not None and spec.same_budget_but_epochs(tag, main_tag):
            main += section
    lines += budget_section({k: v for k, v in groups.items() if v})
    lines += selection_table(choices)
    text = _render(lines, out.parent)
    write_text(out, text)
    if results is not None and main_tag is not None:
        main += budget_section({k: v for k, v in groups.items() if v and spec.same_budget_but_epochs(k[0], main_tag)})
        main += selection_table([c for c in choices if c["budget_tag"] == main_tag])
        fill_results_block(Path(results), _render(main, Path(results).parent))
    return text


def _render(lines: list[str | Path], where: Path) -> str:
    """Markdown lines, a figure's path turned into an image link relative to the folder ``where``."""
    out = []
    for x in lines:
        if isinstance(x, Path):
            stem = x.stem.removesuffix("-aa-bwt")
            out.append(f"![AA against BWT, {stem}]({Path(os.path.relpath(x, where)).as_posix()})")
        else:
            out.append(x)
    return "\n".join(out).rstrip() + "\n"


def fill_results_block(path: Path, body: str) -> bool:
    """Replace what lies between the markers in PATH with BODY; a document without both markers is left alone
    (False)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    if RESULTS_BEGIN not in text or RESULTS_END not in text:
        return False
    head, rest = text.split(RESULTS_BEGIN, 1)
    tail = rest.split(RESULTS_END, 1)[1]
    write_text(path, f"{head}{RESULTS_BEGIN}\n\n{body}\n{RESULTS_END}{tail}")
    return True
