"""Training logs: ``tasks/NN-<task>/train_log.jsonl`` (one line per optimizer step, or per ``log_every`` steps)
and the experiment trackers of ``--report-to`` (TensorBoard, W&B, ... through Accelerate's tracker classes).

Only rank 0 writes. A resumed task first cuts its log back to the step its checkpoint holds, so the lines of
a killed process past that step (which the resumed process trains again) are not kept twice; TensorBoard is
told the same through ``purge_step``. The lines are appended and flushed one at a time, so ``nlora status``
and ``tail -f`` can read the log while the task trains.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path

from .errors import NloraError

LOG_FILE = "train_log.jsonl"
LOGS_DIR = "logs"  # RUN_DIR/logs/<tracker>/: the trackers' own files (TensorBoard events, W&B offline runs)

# --report-to name -> the module it needs (the names are Accelerate's, accelerate.tracking.LOGGER_TYPE_TO_CLASS)
TRACKER_MODULES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "comet_ml": "comet_ml",
    "mlflow": "mlflow",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}
INSTALL_HINT = {"tensorboard": "pip install 'nlora[tensorboard]'"}


def check_report_to(names: list[str]) -> None:
    """Known tracker names whose package is installed; otherwise a one-line NloraError."""
    for name in names:
        if name not in TRACKER_MODULES:
            raise NloraError(f"report_to: unknown tracker {name!r} (choose from {', '.join(TRACKER_MODULES)}, or none)")
        if importlib.util.find_spec(TRACKER_MODULES[name]) is None:
            raise NloraError(
                f"report_to {name}: the {TRACKER_MODULES[name]} package is not installed: "
                f"{INSTALL_HINT.get(name, f'pip install {TRACKER_MODULES[name]}')}"
            )


def read_log(path: Path) -> list[dict]:
    """The log's complete lines (a line cut short by a kill is skipped)."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def run_logs(run_dir: Path, task_names: list[str]) -> list[tuple[str, list[dict]]]:
    """Each task's log lines, in task order ([] for a task without a log: nothing trained, or an older run)."""
    out = []
    for i, name in enumerate(task_names):
        found = sorted(Path(run_dir).glob(f"tasks/{i + 1:02d}-*/{LOG_FILE}"))
        out.append((name, read_log(found[0]) if found else []))
    return out


def _flat_config(cfg) -> dict:
    """The run settings as scalars (what TensorBoard's hparams and W&B's config accept)."""
    out = {}
    for key, value in cfg.to_dict().items():
        if key == "tasks":
            out["tasks"] = ",".join(t["name"] for t in value)
        elif isinstance(value, dict):  # lora, method_options: one setting each, prefixed
            out.update({f"{key}_{k}": _scalar(v) for k, v in value.items()})
        else:
            out[key] = _scalar(value)
    return {k: ("" if v is None else v) for k, v in out.items()}


def _scalar(value):
    """A setting as a value the trackers accept: lists joined by commas, anything else not scalar as text."""
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return value if value is None or isinstance(value, int | float | str | bool) else str(value)


class RunLog:
    """What one ``nlora run`` process logs: the per-task JSONL files and the trackers of ``--report-to``.

    Steps sent to the trackers are global: task t's step s is the steps of tasks 1..t-1 plus s, so a run's
    curves are one line across its tasks. The trackers are started at the first value logged, TensorBoard
    with ``purge_step`` at that step: after a resume, the killed process's events from there on are hidden.
    """

    def __init__(self, out: Path, cfg, is_main: bool = True):
        self.out, self.cfg, self.is_main = Path(out), cfg, is_main
        self.offset = 0  # optimizer steps of the tasks before the current one
        self.trackers: list = []
        self.started = False

    def task_log(self, index: int, name: str, tdir: Path) -> TaskLog:
        return TaskLog(tdir / LOG_FILE, self.cfg.log_every, self, index, name, self.is_main)

    def task_finished(self, steps: int) -> None:
        self.offset += int(steps or 0)

    def _start(self, purge_step: int | None) -> None:
        self.started = True
        if not self.is_main or not self.cfg.report_to:
            return
        from accelerate import PartialState
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        from .rundir import record

        PartialState()  # the trackers log through Accelerate's logger, which needs its state (one process: no-op)

        record(self.out, LOGS_DIR)  # in the run's manifest before it is written: --overwrite clears it
        logs = self.out / LOGS_DIR
        label = self.out.resolve().name
        for name in self.cfg.report_to:
            cls = LOGGER_TYPE_TO_CLASS[name]
            if name == "tensorboard":
                tracker = cls("tensorboard", logs, **({"purge_step": purge_step} if purge_step else {}))
            elif name == "wandb":  # one W&B run per process; WANDB_MODE=offline keeps it on disk
                logs.mkdir(parents=True, exist_ok=True)
                tracker = cls("nlora", name=label, group=label, dir=str(logs), config=_flat_config(self.cfg))
            elif cls.requires_logging_directory:
                tracker = cls(label, logs / name)
            else:
                tracker = cls(label)
            try:
                tracker.start()
                if name == "tensorboard":
                    tracker.store_init_configuration(_flat_config(self.cfg))
            except Exception as e:  # noqa: BLE001 -- a tracker's own failure (no login, no network) as one line
                raise NloraError(
                    f"report_to {name}: could not start ({e.__class__.__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})"
                    + ("; for W&B without network set WANDB_MODE=offline" if name == "wandb" else "")
                ) from None
            self.trackers.append(tracker)

    def log(self, values: dict, step: int, purge: bool = False) -> None:
        if not self.started:
            self._start(step if purge else None)
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def log_eval(self, scores: dict[str, float]) -> None:
        """Exact match after a task, at the task's last global step."""
        self.log({f"eval/exact_match/{task}": value for task, value in scores.items()}, step=max(self.offset, 1))

    def finish(self, summary: dict | None = None) -> None:
        if summary is not None and self.trackers:
            final = {f"final/{k}": summary[k] for k in ("aa", "bwt", "fwt") if summary.get(k) is not None}
            if final:
                self.log(final, step=max(self.offset, 1))
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


class TaskLog:
    """One task's ``train_log.jsonl``. A line per ``every`` optimizer steps (and the task's last step):

    ``step`` (1-based, optimizer steps), ``total_steps``, ``epoch``, ``loss`` and ``penalty`` (means over the
    micro-batches since the previous line), ``lr``, ``grad_norm`` (L2 norm of the summed gradient of the
    trained parameters at this step, before any clipping), ``examples_per_s`` (training examples over wall
    time since the previous line of this process), ``elapsed_s`` (the task's training time, across resumes),
    ``time`` (Unix time of the line).
    """

    def __init__(self, path: Path, every: int, run: RunLog | None, index: int, name: str, is_main: bool = True):
        self.path, self.every, self.run, self.index, self.name, self.is_main = path, every, run, index, name, is_main

    def begin(self, steps_done: int, total_steps: int, batch_sizes: list[int], grad_accum: int, epochs: float) -> None:
        """Keep the lines up to ``steps_done`` (the checkpoint's step; 0 for a fresh start), then append."""
        self.total, self.batch_sizes, self.grad_accum, self.epochs = total_steps, batch_sizes, grad_accum, epochs
        kept = [row for row in read_log(self.path) if row["step"] <= steps_done] if steps_done and self.is_main else []
        # the next line covers the micro-batches after the last kept line (--log-every may differ on resume)
        last = kept[-1]["step"] if kept else (steps_done // self.every) * self.every
        self.logged_micro = last * grad_accum
        self.mark_micro, self.mark_time = steps_done * grad_accum, time.perf_counter()
        if not self.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def wants(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total

    def step(
        self,
        step: int,
        micro_done: int,
        losses: list[float],
        penalties: list[float],
        lr: float,
        grad_norm: float | None,
        elapsed: float,
    ) -> None:
        """Called after every optimizer step; writes a line when the interval ends."""
        if not self.wants(step):
            return
        lo = self.logged_micro
        now = time.perf_counter()
        examples = sum(self.batch_sizes[self.mark_micro : micro_done])
        row = {
            "step": step,
            "total_steps": self.total,
            "epoch": round(self.epochs * micro_done / len(self.batch_sizes), 4),
            "loss": _mean(losses[lo:micro_done]),
            "penalty": _mean(penalties[lo:micro_done]),
            "lr": _sig(lr),
            "grad_norm": None if grad_norm is None or not math.isfinite(grad_norm) else _sig(grad_norm),
            "examples_per_s": round(examples / max(now - self.mark_time, 1e-9), 3),
            "elapsed_s": round(elapsed, 3),
            "time": round(time.time(), 3),
        }
        self.logged_micro, self.mark_micro, self.mark_time = micro_done, micro_done, now
        if not self.is_main:
            return
        with open(self.path, "a", encoding="utf-8") as f:  # a line at a time: readable while the task trains
            f.write(json.dumps(row) + "\n")
        if self.run is not None and self.run.cfg.report_to:
            values = {
                f"train/{k}": row[k]
                for k in ("loss", "penalty", "lr", "grad_norm", "examples_per_s", "epoch")
                if row[k] is not None
            }
            self.run.log({**values, "train/task": self.index + 1}, step=self.run.offset + step, purge=True)


def _sig(x: float) -> float:
    return float(f"{x:.6g}")


def _mean(values: list[float]) -> float | None:
    return _sig(sum(values) / len(values)) if values else None
