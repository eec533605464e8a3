"""``nlora status RUN_DIR``: where a run stands, read from its directory alone (also while it runs).

Read-only: it opens files for reading and nothing else, so it can be pointed at a run that another process
is writing. What it reads: ``config.yaml`` (the task list), per task ``train_stats.json`` (trained),
``predict_results.json`` (evaluated), ``train_log.jsonl`` (the step reached, loss, speed) and
``checkpoint/``; ``summary.json`` once the run is complete; and whether a process holds the directory's lock
(``/proc/locks``, Linux).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import NloraError
from .trainlog import LOG_FILE, read_log


@dataclass
class TaskState:
    index: int
    name: str
    trained: bool = False
    evaluated: bool = False
    steps: int | None = None  # the task's optimizer steps (from train_stats.json or the log)
    step: int = 0  # steps logged so far
    last: dict | None = None  # the last log line
    train_seconds: float | None = None
    eval_seconds: float | None = None
    checkpoint: bool = False


@dataclass
class RunStatus:
    run_dir: Path
    method: str
    model: str
    tasks: list[TaskState]
    started: float  # Unix time config.yaml was written
    summary: dict | None = None
    holder: int | None = None  # pid holding the directory's lock
    last_activity: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> list[TaskState]:
        """Tasks trained and evaluated (or trained, with a later task under way: nothing evaluated them)."""
        later_started = [
            any(u.trained or u.step or u.checkpoint for u in self.tasks[t.index + 1 :]) for t in self.tasks
        ]
        return [t for t in self.tasks if t.trained and (t.evaluated or later_started[t.index] or self.summary)]

    @property
    def current(self) -> TaskState | None:
        done = {t.index for t in self.done}
        return next((t for t in self.tasks if t.index not in done), None)


def _json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):  # absent, or being replaced this very moment
        return None
    return value if isinstance(value, dict) else None


def _lock_holder(run_dir: Path) -> int | None:
    try:
        from .rundir import lock_holder
    except ImportError:
        return None
    return lock_holder(run_dir)


def _task_dir(run_dir: Path, index: int, name: str) -> Path:
    """tasks/NN-<name> (recipe.task_dir), found by its number so that this module needs no torch."""
    found = sorted(run_dir.glob(f"tasks/{index + 1:02d}-*"))
    return found[0] if found else run_dir / "tasks" / f"{index + 1:02d}-{name}"


def read_status(run_dir: str | Path) -> RunStatus:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise NloraError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise NloraError(f"{run_dir} is not a directory")
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise NloraError(f"{run_dir} is not an nlora run directory (no config.yaml)")
    try:
        cfg = yaml.safe_load(config.read_text("utf-8"))
        names = [t["name"] for t in cfg["tasks"]]
        method, model = str(cfg.get("method", "?")), str(cfg.get("model", "?"))
    except (yaml.YAMLError, TypeError, KeyError, UnicodeDecodeError):
        raise NloraError(f"{config}: not a readable nlora config") from None
    status = RunStatus(
        run_dir, method, model, [], config.stat().st_mtime, _json(run_dir / "summary.json"), _lock_holder(run_dir)
    )
    times = [status.started]
    for i, name in enumerate(names):
        tdir = _task_dir(run_dir, i, name)
        state = TaskState(i, name)
        stats = _json(tdir / "train_stats.json")
        results = _json(tdir / "predict_results.json")
        rows = read_log(tdir / LOG_FILE)
        if stats is not None:
            state.trained, state.steps = True, stats.get("train_steps")
            state.train_seconds = stats.get("train_seconds")
            times.append((tdir / "train_stats.json").stat().st_mtime)
        if results is not None:
            state.evaluated, state.eval_seconds = True, results.get("predict_runtime")
            times.append((tdir / "predict_results.json").stat().st_mtime)
        if rows:
            state.last, state.step = rows[-1], rows[-1]["step"]
            state.steps = state.steps if state.steps is not None else rows[-1].get("total_steps")
            times.append(rows[-1].get("time") or 0)
        state.checkpoint = (tdir / "checkpoint").is_dir()
        status.tasks.append(state)
    status.last_activity = max(times)
    return status


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def estimate_left(status: RunStatus) -> float | None:
    """Seconds still needed: the current task's remaining steps at its speed so far, its evaluation, and the
    remaining tasks at the mean time of the finished ones (or, with none finished, at the current task's)."""
    current = status.current
    if current is None:
        return 0.0
    finished = [t for t in status.done if t.train_seconds is not None]
    mean_eval = (sum(t.eval_seconds or 0.0 for t in finished) / len(finished)) if finished else 0.0
    per_task = (
        sum((t.train_seconds or 0.0) + (t.eval_seconds or 0.0) for t in finished) / len(finished) if finished else None
    )
    if current.trained:  # being evaluated
        left_now = mean_eval
        per_task = per_task if per_task is not None else (current.train_seconds or 0.0) + mean_eval
    elif current.last and current.steps:
        per_step = current.last["elapsed_s"] / max(current.step, 1)
        left_now = per_step * (current.steps - current.step) + mean_eval
        per_task = per_task if per_task is not None else per_step * current.steps
    else:
        left_now = per_task
    remaining = len(status.tasks) - current.index - 1
    if left_now is None or (remaining and per_task is None):
        return None
    return left_now + remaining * (per_task or 0.0)


def describe(status: RunStatus, now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    n = len(status.tasks)
    lines = [
        (
            f"{status.run_dir}: {status.method} on {n} task(s) ({' -> '.join(t.name for t in status.tasks)}), "
            f"model {status.model}"
        )
    ]
    if status.summary is not None:
        s = status.summary
        bwt = "" if s.get("bwt") is None else f", BWT {s['bwt']:.2f}"
        aa = "-" if s.get("aa") is None else f"{s['aa']:.2f}"
        lines.append(
            f"complete: {n} of {n} tasks, AA {aa}{bwt}, wall time {_duration(s.get('wall_time_s'))} "
            f"({status.run_dir / 'summary.json'})"
        )
        return lines
    if status.holder is not None:
        lines.append(f"running: process {status.holder} holds the run directory")
    else:
        lines.append(
            f"not running (no process holds the directory; last activity {_duration(now - status.last_activity)}"
            " ago): `nlora run` with the same settings resumes it"
        )
    done = status.done
    lines.append(f"tasks done: {len(done)} of {n}" + (f" ({', '.join(t.name for t in done)})" if done else ""))
    current = status.current
    if current is not None:
        where = f"task {current.index + 1} {current.name}: "
        if current.trained:
            where += f"trained ({current.steps} steps), evaluating"
        elif current.last is not None:
            row = current.last
            pct = f" ({100 * current.step / current.steps:.0f}%)" if current.steps else ""
            penalty = f", penalty {row['penalty']:.4g}" if row.get("penalty") else ""
            speed = f", {row['examples_per_s']:.1f} examples/s" if row.get("examples_per_s") else ""
            ago = f", {_duration(now - row['time'])} ago" if row.get("time") else ""
            where += (
                f"step {current.step} of {current.steps or '?'}{pct}, loss {row['loss']:.4f}{penalty}{speed}"
                f" (last log line{ago})"
            )
        elif current.checkpoint:
            where += "training (a step checkpoint, no log lines)"
        else:
            where += "not started (loading the model or the data)" if not done else "starting"
        lines.append("now: " + where)
    left = estimate_left(status)
    lines.append(
        f"elapsed: {_duration(now - status.started)} since the run began (config.yaml written); "
        + (
            "estimated time left: unknown until a task has trained a step"
            if left is None
            else f"estimated time left: about {_duration(left)}" + _basis(status)
        )
    )
    return lines


def expand(run_dir: str | Path) -> list[Path]:
    """A run directory, or a folder of them (the demo's runs/demo, a benchmark's output): its runs, in order."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and not (run_dir / "config.yaml").is_file():
        runs = sorted(p.parent for p in run_dir.glob("*/config.yaml"))
        if runs:
            return runs
    return [run_dir]


def _basis(status: RunStatus) -> str:
    current = status.current
    if current is None or current.index + 1 == len(status.tasks):
        return ""
    if any(t.train_seconds is not None for t in status.done):
        return " (the remaining tasks at the mean time of the finished ones)"
    return " (the remaining tasks as long as this one)"


def main(run_dirs: list[str]) -> None:
    # every directory checked before anything is printed
    statuses = [read_status(d) for given in run_dirs for d in expand(given)]
    for i, status in enumerate(statuses):
        if i:
            print()
        print("\n".join(describe(status)))
