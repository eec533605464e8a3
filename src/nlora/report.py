"""``nlora analyze`` and ``nlora report``: numbers and figures for one or more run directories."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from . import plots, rundir
from .analysis import DEFAULT_THRESHOLD, analyze_run, check_run_dir, check_threshold, read_summary
from .errors import NloraError
from .io import read_json, write_json, write_text
from .trainlog import run_logs

ANALYSIS_OUTPUTS = ("analysis.json", "collision.png", "nuclear_norm.png", "accuracy_matrix.png")


def analyze(run_dir: str | Path, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Write analysis.json and the run's own figures into the run directory."""
    run_dir = Path(run_dir)
    result = analyze_run(run_dir, threshold)
    write_analysis(run_dir, result)
    return result


def write_analysis(run_dir: str | Path, result: dict) -> None:
    """analysis.json and the run's own figures, from analyze_run's result (which read and checked the run)."""
    run_dir = Path(run_dir)
    summary = _summary(run_dir, required=False)  # read before anything is written
    rundir.record(run_dir, *ANALYSIS_OUTPUTS)  # so a later --overwrite removes them, and only them
    write_json(run_dir / "analysis.json", result)
    plots.collision_heatmap(result, run_dir / "collision.png")
    plots.nuclear_norm_per_layer([(run_dir.name, result)], run_dir / "nuclear_norm.png")
    if summary:
        plots.accuracy_heatmap(summary, run_dir / "accuracy_matrix.png")


def _summary(run_dir: Path, required: bool = True) -> dict | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        if required:
            raise NloraError(f"{run_dir}: no summary.json (the run is not complete)")
        return None
    return read_summary(path)


def _is_current_analysis(cached, threshold: float) -> bool:
    """Whether analysis.json holds a complete analysis at this threshold: it is only a cache, so anything
    else (damaged, older, hand-edited) is computed again rather than trusted."""
    try:
        return (
            cached["threshold"] == threshold
            and isinstance(cached["tasks"], list)
            and len(cached["collision_matrix"]) == len(cached["tasks"])
            and all(
                isinstance(cached[k]["total"], (int, float)) for k in ("orthogonality_update", "orthogonality_lora_A")
            )
            and isinstance(cached["nuclear_norm"]["mean"], (int, float))
            and (cached["acr"] is None or isinstance(cached["acr"], (int, float)))
            and all(isinstance(p["threshold"], (int, float)) for p in cached["acr_curve"])
            and all(isinstance(layer["nuclear_norm"], list) for layer in cached["layers"].values())
        )
    except (KeyError, TypeError, AttributeError):
        return False


def _cached_analysis(run_dir: Path, threshold: float) -> tuple[dict, bool]:
    """The run's analysis at ``threshold`` and whether it was computed now (and so is still to be written)."""
    path = run_dir / "analysis.json"
    if path.is_file():
        try:
            cached = read_json(path)
        except NloraError:
            cached = None
        if _is_current_analysis(cached, threshold):
            return cached, False
    return analyze_run(run_dir, threshold), True


def paper_results() -> dict:
    return json.loads(resources.files("nlora.resources").joinpath("paper_results.json").read_text("utf-8"))


def _fmt(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _labels(run_dirs: list[Path]) -> list[str]:
    """The shortest trailing paths that tell the runs apart, the same depth for all (runs/a/seed-1, runs/b/seed-1
    -> a/seed-1, b/seed-1)."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    for depth in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(d) for d in run_dirs]  # the same folder given twice


def build_report(run_dirs: list[str | Path], out_dir: str | Path, threshold: float = DEFAULT_THRESHOLD) -> Path:
    """A Markdown report comparing runs, with its figures, in out_dir/report.md."""
    threshold = check_threshold(threshold)
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        check_run_dir(d)
    out = Path(out_dir)
    rundir.check_path_usable(out, "--out")
    labels = _labels(dirs)
    summaries = [_summary(d) for d in dirs]
    computed = [_cached_analysis(d, threshold) for d in dirs]
    for d, (a, fresh) in zip(dirs, computed):  # every run read and checked: only now is anything written
        if fresh:
            write_analysis(d, a)
    analyses = [a for a, _ in computed]
    figs = {
        "bars": plots.aa_bwt_bars(list(zip(labels, summaries)), out / "aa_bwt.png"),
        "nuclear": plots.nuclear_norm_per_layer(list(zip(labels, analyses)), out / "nuclear_norm.png"),
        "curve": plots.collision_curves(list(zip(labels, analyses)), out / "collision_curve.png"),
    }
    logs = [(label, run_logs(d, s["tasks"])) for label, d, s in zip(labels, dirs, summaries)]
    logs = [(label, tasks) for label, tasks in logs if any(rows for _, rows in tasks)]  # older runs have none
    if logs:
        figs["loss"] = plots.loss_curves(logs, out / "loss_curves.png")
    per_run = []
    for label, s, a in zip(labels, summaries, analyses):
        safe = label.replace("/", "_")
        per_run.append(
            (
                plots.accuracy_heatmap(s, out / f"{safe}-accuracy.png"),
                plots.collision_heatmap(a, out / f"{safe}-collision.png"),
            )
        )

    lines = [
        "# nlora report",
        "",
        f"Collision threshold |dW| > {threshold:g}; ACR = mean collision rate over task pairs and layers.",
        "",
        "| run | method | model | tasks | AA | BWT | FWT | ACR % | orth. (dW) | orth. (A) | mean nuclear norm "
        "| wall time s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s, a in zip(labels, summaries, analyses):
        acr = None if a["acr"] is None else 100 * a["acr"]
        lines.append(
            f"| {label} | {s['method']} | {Path(str(s['model'])).name} | {len(s['tasks'])} | {_fmt(s['aa'])} | "
            f"{_fmt(s['bwt'])} | {_fmt(s.get('fwt'))} | {_fmt(acr, 3)} | "
            f"{a['orthogonality_update']['total']:.3g} | {a['orthogonality_lora_A']['total']:.3g} | "
            f"{a['nuclear_norm']['mean']:.3g} | {_fmt(s['wall_time_s'], 0)} |"
        )
    tasks = list(dict.fromkeys(t for s in summaries for t in s["tasks"]))
    lines += [
        "",
        "## Final accuracy per task (exact match after the last task)",
        "",
        "| run | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for label, s in zip(labels, summaries):
        final = dict(zip(s["tasks"], s["accuracy_matrix"][-1]))
        lines.append(f"| {label} | " + " | ".join(_fmt(final.get(t), 1) for t in tasks) + " |")
    paper = paper_results()
    refs = [(label, s) for label, s in zip(labels, summaries) if s.get("preset") in paper]
    if refs:
        lines += [
            "",
            "## Reported in the papers (AA %, T5-large / LLaMA-7B)",
            "",
            "| run | preset | this run AA | N-LoRA reported | O-LoRA reported |",
            "|---|---|---|---|---|",
        ]
        for label, s in refs:
            ref = paper[s["preset"]]
            lines.append(f"| {label} | {s['preset']} | {_fmt(s['aa'])} | {ref['N-LoRA']} | {ref['O-LoRA']} |")
    ref = paper["_analysis"]
    lines += [
        "",
        "For scale, the N-LoRA paper reports on T5-large (threshold unstated): ACR "
        f"{ref['acr_percent']['O-LoRA']}% (O-LoRA) vs {ref['acr_percent']['N-LoRA']}% (N-LoRA), orthogonality "
        f"{ref['orthogonality']['O-LoRA']} vs {ref['orthogonality']['N-LoRA']}, mean nuclear norm "
        f"{ref['mean_nuclear_norm']['O-LoRA']} vs {ref['mean_nuclear_norm']['N-LoRA']}.",
    ]
    lines += [
        "",
        "## Figures",
        "",
        f"![AA and BWT]({figs['bars'].name})",
        "",
        f"![Nuclear norm per layer]({figs['nuclear'].name})",
        "",
        f"![Collision rate against threshold]({figs['curve'].name})",
        "",
    ]
    if "loss" in figs:
        lines += [f"![Training loss of every task (train_log.jsonl)]({figs['loss'].name})", ""]
    for label, (acc, col) in zip(labels, per_run):
        lines += [f"### {label}", "", f"![accuracy matrix]({acc.name}) ![collision]({col.name})", ""]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path
