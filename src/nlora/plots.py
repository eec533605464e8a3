"""Figures as PNG (matplotlib, no display needed), each written atomically beside the JSON it shows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_write  # noqa: E402


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def _heatmap(matrix, rows, cols, title, path, *, fmt="{:.1f}", cmap="viridis", xlabel="", ylabel="", vrange=None):
    import numpy as np

    data = np.array([[float("nan") if v is None else v for v in r] for r in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cols), 1.0 + 0.7 * len(rows)))
    lo, hi = vrange or (np.nanmin(data), np.nanmax(data))
    im = ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi)
    mid = (lo + hi) / 2
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(data[i, j]):
                color = "black" if data[i, j] > mid else "white"  # readable on light and dark cells
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def accuracy_heatmap(summary: dict, path: Path) -> Path:
    tasks = summary["tasks"]
    return _heatmap(
        summary["accuracy_matrix"],
        [f"after {t}" for t in tasks],
        tasks,
        f"Exact match, {summary['method']}",
        path,
        xlabel="evaluated on",
        ylabel="trained up to",
        vrange=(0, 100),
    )


def collision_heatmap(analysis: dict, path: Path) -> Path:
    tasks = analysis["tasks"]
    m = [[100 * v for v in row] for row in analysis["collision_matrix"]]
    return _heatmap(
        m,
        tasks,
        tasks,
        f"Collision rate % (|dW| > {analysis['threshold']:g}), {analysis['method']}",
        path,
        fmt="{:.2f}",
        cmap="magma",
    )


def nuclear_norm_per_layer(analyses: list[tuple[str, dict]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for label, a in analyses:
        by_module: dict[str, list[float]] = {}  # one line per projection (q, v, ...), x = block in model order
        for name, layer in a["layers"].items():
            values = layer["nuclear_norm"]
            by_module.setdefault(name.rsplit(".", 1)[-1], []).append(sum(values) / len(values))
        for module, values in by_module.items():
            ax.plot(
                range(len(values)),
                values,
                marker=".",
                label=f"{label} {module} (run mean {a['nuclear_norm']['mean']:.3g})",
            )
    ax.set_yscale("log")
    return _finish(
        fig, ax, path, "block (model order)", "nuclear norm of dW, mean over tasks", "Nuclear norm per layer"
    )


def collision_curves(analyses: list[tuple[str, dict]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, a in analyses:
        pts = [(p["threshold"], 100 * p["acr"]) for p in a["acr_curve"] if p["acr"] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log")
    return _finish(fig, ax, path, "threshold on |dW|", "average collision rate %", "Collision rate against threshold")


def aa_bwt_bars(runs: list[tuple[str, dict]], path: Path) -> Path:
    import numpy as np

    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(runs), 3.5))
    x = np.arange(len(runs))
    # a missing figure (MTL has no BWT) is no bar, not a bar at 0
    aa = [float("nan") if s["aa"] is None else s["aa"] for _, s in runs]
    bwt = [float("nan") if s["bwt"] is None else s["bwt"] for _, s in runs]
    ax.bar(x - 0.2, aa, 0.4, label="AA")
    ax.bar(x + 0.2, bwt, 0.4, label="BWT")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(x, [label for label, _ in runs], rotation=20, ha="right")
    return _finish(fig, ax, path, None, "exact match (points)", "Average accuracy and backward transfer")


def loss_curves(runs: list[tuple[str, list[tuple[str, list[dict]]]]], path: Path) -> Path:
    """One panel per run: each task's training loss (train_log.jsonl) against the run's global optimizer step,
    a colour per task, the task boundaries dotted."""
    n = len(runs)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.6 * n), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (label, tasks) in zip(axes[:, 0], runs):
        offset = 0
        for i, (task, rows) in enumerate(tasks):
            if rows:
                ax.plot(
                    [offset + r["step"] for r in rows],
                    [r["loss"] for r in rows],
                    lw=1,
                    color=colors[i % len(colors)],
                    label=task,
                )
                offset += rows[-1].get("total_steps") or rows[-1]["step"]
                ax.axvline(offset, color="0.6", lw=0.6, ls=":")
        if all(r["loss"] > 0 for _, rows in tasks for r in rows):
            ax.set_yscale("log")
        ax.set_title(f"Training loss, {label}", fontsize=10)
        ax.set_ylabel("task loss")
        ax.legend(fontsize=7, ncol=min(len(tasks), 5))
    axes[-1, 0].set_xlabel("optimizer step (all tasks in order)")
    fig.tight_layout()
    return _save(fig, path)


def _finish(fig, ax, path: Path, xlabel: str | None, ylabel: str, title: str) -> Path:
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)
