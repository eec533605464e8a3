"""What the leaderboard's missing runs cost: seconds per step and per answer measured from the budget's own CPU
records, a run's estimate from its sequence's sizes, how far a stopped run got, and whether a run fits before
--until (a session's end)."""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import re
import statistics
import sys
from pathlib import Path

import torch

from nlora.dist import machine_name
from nlora.errors import NloraError
from nlora.status import read_status

sys.path.insert(0, str(Path(__file__).resolve().parent))
import leaderboard_spec as spec  # noqa: E402

# Rough cost for `plan` (SmolLM2-135M fp32, batch 8, on this 2-core Xeon): seconds per optimizer step with 2
# threads (one thread: about twice), seconds per generated test answer, and the model load.
SEC_PER_STEP, SEC_PER_TEST, SEC_PER_RUN = 2.5, 0.05, 20.0
# --until turns a run's CPU seconds (the records' rates, as one thread spends them) into wall seconds at T threads:
# / T ** THREAD_SCALING (measured on the 2-core EPYC: a run alone at 2 threads took 1,499-1,529 s where its
# 1-thread CPU time is about 2,700 s, 1.78x, 2 ** 0.83), then x UNTIL_MARGIN for other load and the estimate's
# own error (1-thread runs side by side took 1.04-1.08x their CPU time).
THREAD_SCALING, UNTIL_MARGIN = 0.8, 1.2


def host_of(machine: str | None) -> str | None:
    """A record's machine without its thread count ("AMD EPYC CPU (x86_64, AVX2), 2 threads" -> "AMD EPYC CPU
    (x86_64, AVX2)"): the same host at another thread count is the same machine."""
    return re.sub(r", \d+ threads?$", "", machine) if machine else None


def one_thread(cpu_seconds: float, threads: int | None) -> float:
    """CPU seconds spent at T threads as one thread would spend them: T threads run the same work T **
    THREAD_SCALING times faster while all T are busy, so they spend T ** (1 - THREAD_SCALING) times the CPU time."""
    return cpu_seconds / max(threads or 1, 1) ** (1 - THREAD_SCALING)


def measured_rates(
    records: Path, tag: str, on_gpu: bool = False, here: str | None = None, scale: float = 1.0
) -> dict[str, tuple[float, float]]:
    """Per method, from its records at budget TAG (runs and selection points): the median seconds per training
    step and per evaluated test answer, as one thread spends them (``rate_samples``). ``here``: this machine
    (``host_of(machine_name(...))``): a method's records made here are its pace as they are; a method without
    any goes at the pace of other machines' records times ``scale`` (--pace-scale: how much slower this machine
    is than the one that made them). ``on_gpu``: GPU records by their wall seconds, no scale."""
    return rates_of(rate_samples(records, tag, on_gpu, here), 1.0 if on_gpu else scale)


def rates_of(samples: dict[str, tuple[str, list[tuple[float, float]]]], scale: float) -> dict[str, tuple[float, float]]:
    """Per method, the median of its samples (``rate_samples``), times ``scale`` unless they were measured here."""
    return {
        m: (statistics.median(a for a, _ in v) * f, statistics.median(b for _, b in v) * f)
        for m, (where, v) in samples.items()
        for f in [1.0 if where == "here" else scale]
    }


def rate_samples(
    records: Path, tag: str, on_gpu: bool = False, here: str | None = None
) -> dict[str, tuple[str, list[tuple[float, float]]]]:
    """Per method, where its pace comes from ("here": records this machine made; "elsewhere": CPU-timed records
    of other machines; "wall": wall seconds only) and each such record's seconds per training step and per
    evaluated test answer. CPU seconds count as one thread spends them (a record made at T threads through
    ``one_thread``). A soft-prompt method that has not learnt to stop generates to the length limit: its own
    figure says so, where a flat rate would not. A record with wall seconds only (early versions) counts only
    for a method with no CPU-timed record: its wall time holds every pause and every other process on the
    machine (clora's three such records ran 2.5 times slower than its CPU-timed one). ``on_gpu``: the records of
    runs on a GPU instead, by their wall seconds (a GPU process's CPU time says nothing of its pace), which hold
    the other workers sharing the GPU as the next run will."""
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for path in sorted((records / tag).rglob("*.json")) if (records / tag).is_dir() else []:
        r = spec.read(path)
        if not r or r.get("kind") not in ("run", "selection") or spec.ran_on_gpu(r) != on_gpu:
            continue
        steps = sum(x or 0 for x in r.get("train_steps_per_task") or [])
        cells = sum(v is not None for row in r.get("accuracy_matrix") or [] for v in row)
        answers = cells * r.get("settings", {}).get("max_test", 0)  # a task with fewer test rows counts max_test
        train, test, timed = paced_seconds(r, on_gpu)
        if not (steps and answers and train and test):
            continue
        if timed and not on_gpu:
            train, test = one_thread(train, r.get("threads")), one_thread(test, r.get("threads"))
        same = here is not None and not on_gpu and host_of(r.get("machine")) == here
        where = "wall" if not timed else "here" if same else "elsewhere"
        samples.setdefault(r["method"], {}).setdefault(where, []).append((train / steps, test / answers))
    # the best source a method has: this machine's records, then other machines' CPU-timed ones, then wall time
    return {m: next((w, by[w]) for w in ("here", "elsewhere", "wall") if w in by) for m, by in samples.items()}


def paced_seconds(r: dict, on_gpu: bool) -> tuple[float | None, float | None, bool]:
    """A record's training and evaluation seconds as its pace counts them, and whether they are timed (not wall
    seconds that hold pauses and other load): on a GPU its wall seconds, the pace itself; on the CPU its process
    CPU seconds, or where it has only the run's total (early versions) that total split as its wall seconds
    are, or where it has none (the earliest) its wall seconds, untimed."""
    wall_train, wall_test = r.get("train_seconds"), r.get("eval_seconds")
    if on_gpu:
        return wall_train, wall_test, True
    if r.get("train_cpu_seconds") is not None:
        return r["train_cpu_seconds"] or wall_train, r.get("eval_cpu_seconds") or wall_test, True
    if r.get("cpu_time_s") is not None:
        wall = (wall_train or 0.0) + (wall_test or 0.0)
        if r["cpu_time_s"] and wall_train and wall_test:
            return r["cpu_time_s"] * wall_train / wall, r["cpu_time_s"] * wall_test / wall, True
        return wall_train, wall_test, True
    return wall_train, wall_test, False


def estimate_s(s: dict, seq: str, epochs: float, data_dir: Path, rate: tuple[float, float] | None = None) -> float:
    """Rough seconds for one run: steps x seconds per step + generated answers x seconds per answer (scope
    'needed': each task after its own training, then all tasks once more at the end); ``rate``: those two
    seconds as measured (``measured_rates``), else SEC_PER_STEP and SEC_PER_TEST."""
    per_step, per_test = rate or (SEC_PER_STEP, SEC_PER_TEST)
    steps = tests = 0
    for task in spec.SEQUENCES[seq].split(","):
        rows = task_rows(Path(data_dir), task)
        n_train, n_test = (
            (s["max_train"], s["max_test"]) if rows is None else map(min, (s["max_train"], s["max_test"]), rows)
        )
        steps += -(-int(n_train * epochs) // s["batch_size"])
        tests += 2 * n_test
    return SEC_PER_RUN + steps * per_step + tests * per_test


@functools.cache
def task_rows(data_dir: Path, task: str) -> tuple[int, int] | None:
    """A task's training and test rows in DATA_DIR (None where it is not there): read once per process, since
    `plan` estimates every missing run (the 10-task sequence's files parsed anew for each made half its time)."""
    try:
        d = next(data_dir.glob(f"*/{task}"))
        return len(json.loads((d / "train.json").read_text())), len(json.loads((d / "test.json").read_text()))
    except (StopIteration, OSError, ValueError):
        return None


class Pace:
    """What the runs still missing cost, at the pace of the budget's own CPU records (``measured_rates``; a
    method without records at the median of the others, or SEC_PER_STEP / SEC_PER_TEST when none has any); a
    started run costs only what it has left. Runs at other epochs (the budget question) use the rates of the
    named budget, since their steps cost the same. ``cautious`` (--until) puts a method without records at the
    slowest measured pace instead: its steps may hold more work than the others' (lwf's teacher pass, ewc's
    Fisher), and a run the session's end cuts is lost with the machine. Runs on a GPU (``--device cuda``) go at
    the pace of the budget's GPU records instead, in wall seconds."""

    def __init__(self, args, s: dict):
        self.s, self.data_dir, self.runs, self.records = s, Path(args.data_dir), args.runs, args.records
        self.on_gpu = str(getattr(args, "device", "cpu")).startswith("cuda")
        # the records' CPU rates were measured on whatever machine ran them; a slower one (a new machine without
        # AVX-512 ran the same steps about 1.5 times as slowly) says so here, or --until starts runs its end would
        # cut; a method's records made on this very machine count as they are (``measured_rates``)
        self.scale = 1.0 if self.on_gpu else getattr(args, "pace_scale", 1.0)
        self.here = None if self.on_gpu else host_of(machine_name("cpu"))
        base = spec.budget_tag(dict(s, epochs=spec.BUDGETS[args.budget]["epochs"]))
        samples = rate_samples(args.records, base, on_gpu=self.on_gpu, here=self.here)
        self.rates = rates_of(samples, self.scale)
        self.measured_here = {m for m, (where, _) in samples.items() if where == "here"}
        self.typical = (
            (statistics.median(a for a, _ in self.rates.values()), statistics.median(b for _, b in self.rates.values()))
            if self.rates
            else None
        )
        self.slowest = (
            (max(a for a, _ in self.rates.values()), max(b for _, b in self.rates.values())) if self.rates else None
        )

    def progress(self, record: Path) -> tuple[str, float] | None:
        return run_progress(self.runs, self.records, record)

    def seconds_left(
        self, seq: str, method: str | None, epochs: float, progress: tuple[str, float] | None, cautious: bool = False
    ) -> float:
        """Seconds a run needs from where its run directory stands (``progress``: ``self.progress(record)``, None
        for a run not started): CPU seconds, or on a GPU wall seconds, as the rates are. ``method`` None: a method
        not known yet (the plan's best five), at the pace of a method without records."""
        left = 1.0 - (progress[1] if progress else 0.0)
        rate = self.rates.get(method, self.slowest if cautious else self.typical)
        # measured rates carry the scale already (``measured_rates``); the defaults, used without any, do not
        return left * estimate_s(self.s, seq, epochs, self.data_dir, rate) * (1.0 if self.rates else self.scale)


def pace_scale(text: str) -> float:
    """--pace-scale: a positive number."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"--pace-scale {text!r}: not a positive number")
    return value


def until_time(text: str) -> datetime.datetime:
    """--until: HH:MM (its next occurrence, local time) or an ISO date and time."""
    now = datetime.datetime.now().astimezone()
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}", text):
            hour, minute = map(int, text.split(":"))
            at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
            return at if at > now else at + datetime.timedelta(days=1)
        at = datetime.datetime.fromisoformat(text)
        return at if at.tzinfo else at.astimezone()
    except ValueError:
        raise argparse.ArgumentTypeError(f"--until {text!r}: not HH:MM or an ISO date and time") from None


def fits_before_until(args, pace: Pace, record: Path, seq: str, method: str, epochs: float, what: str) -> bool:
    """Whether the run of ``record`` is expected to finish before --until (always, without it); a run that would
    not is skipped with one line, so a session's last hour never starts a run its end would cut (a stopped run
    resumes only on the machine that has its run directory). On a GPU with no GPU record at this budget yet there
    is nothing to estimate from: the run starts (a lent GPU's first runs measure its pace for the later ones)."""
    if args.until is None:
        return True
    if pace.on_gpu and not pace.rates:
        return True
    left = pace.seconds_left(seq, method, epochs, pace.progress(record), cautious=True)
    if pace.on_gpu:  # the records' wall seconds, with the GPU shared as it is now
        wall, where = left * UNTIL_MARGIN, "on the GPU"
    else:
        threads = args.threads or torch.get_num_threads()
        wall, where = left * UNTIL_MARGIN / threads**THREAD_SCALING, f"at {threads} thread(s)"
    end = datetime.datetime.now().astimezone() + datetime.timedelta(seconds=wall)
    if end <= args.until:
        return True
    print(
        f"[leaderboard] {what}: about {wall / 60:.0f} min {where}, would end {end:%H:%M}, after "
        f"--until {args.until:%H:%M}; not started",
        flush=True,
    )
    return False


def run_progress(runs: Path, records: Path, record: Path) -> tuple[str, float] | None:
    """How far the run directory of a missing ``record`` got (as `nlora status` reads it): a phrase, and the share
    of its work done (tasks done, and the current task's steps); None where it has not started."""
    folder = Path(runs) / record.relative_to(records).with_suffix("")
    if not (folder / "config.yaml").is_file():
        return None
    try:
        status = read_status(folder)
    except NloraError:
        return None
    done, current = len(status.done), status.current
    phrase = f"{done} of {len(status.tasks)} tasks done"
    share = done
    if current is not None and current.step and current.steps:
        phrase += f", {current.name} at step {current.step} of {current.steps}"
        share += current.step / current.steps
    phrase += f", running (pid {status.holder})" if status.holder else ", stopped: resumes where it stopped"
    return phrase, share / max(1, len(status.tasks))
