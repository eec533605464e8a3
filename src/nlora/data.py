"""CL_Benchmark reading and checking: ``<Category>/<dataset>/{train,dev,test}.json`` + ``labels.json``."""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import NloraError
from .prompts import build_prompt

SPLITS = ("train", "test")


@dataclass
class Example:
    prompt: str
    label: str


@dataclass
class TaskData:
    name: str
    category: str
    labels: list[str]
    splits: dict[str, list[Example]] = field(default_factory=dict)


def index_tasks(data_dir: str | Path) -> dict[str, Path]:
    """Dataset name -> its folder, for every ``<Category>/<dataset>/`` under data_dir."""
    root = Path(data_dir)
    if not root.is_dir():
        raise NloraError(f"data directory not found: {root}")
    found = {}
    for cat in sorted(p for p in root.iterdir() if p.is_dir()):
        for ds in sorted(p for p in cat.iterdir() if p.is_dir()):
            found.setdefault(ds.name, ds)
    return found


def resolve_task_dirs(data_dir: str | Path, tasks: list[str], splits=SPLITS) -> dict[str, Path]:
    """Check every task's files exist before any work starts; name all missing ones in one message."""
    index = index_tasks(data_dir)
    unknown = [t for t in tasks if t not in index]
    if unknown:
        raise NloraError(
            f"unknown task(s) {', '.join(unknown)} in data directory {data_dir} "
            f"(found: {', '.join(sorted(index)) or 'none'})"
        )
    missing = [str(index[t] / f) for t in tasks for f in ("labels.json", *(f"{s}.json" for s in splits))
               if not (index[t] / f).is_file()]
    if missing:
        raise NloraError(f"missing data files: {', '.join(missing)}")
    return {t: index[t] for t in tasks}


def read_json(path: Path):
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise NloraError(f"{path}: malformed JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise NloraError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_labels(path: Path) -> list[str]:
    labels = read_json(path)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise NloraError(f"{path}: expected a non-empty JSON list of label strings")
    return labels


UNKNOWN_LABEL_POLICIES = ("error", "drop", "keep")


def read_split(path: Path, labels: list[str], unknown_labels: str = "error") -> list[dict]:
    """Rows of a split. A label outside labels.json is an error, or dropped, or kept (scored as the
    reference does, where it can never be matched: MNLI marks its unlabelled examples '-')."""
    rows = read_json(path)
    if not isinstance(rows, list):
        raise NloraError(f"{path}: expected a JSON list of {{\"label\", \"sentence\"}} objects")
    if not rows:
        raise NloraError(f"{path}: split is empty")
    allowed = set(labels)
    kept = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("sentence"), str) or not isinstance(row.get("label"), str):
            raise NloraError(f"{path}: example {i} needs string fields 'label' and 'sentence'")
        if row["label"] not in allowed:
            if unknown_labels == "error":
                raise NloraError(f"{path}: example {i} has label {row['label']!r}, not in labels.json {labels} "
                                 "(--unknown-labels drop skips such examples, keep scores them as the reference)")
            if unknown_labels == "drop":
                continue
        kept.append(row)
    if not kept:
        raise NloraError(f"{path}: no examples left after dropping unknown labels")
    return kept


def cap_indices(n: int, cap: int | None, seed: int, task: str, split: str) -> list[int]:
    """A deterministic subset of size ``cap`` (original order kept), independent of task order."""
    if cap is None or cap >= n:
        return list(range(n))
    rng = random.Random(seed * 1_000_003 + zlib.crc32(f"{task}/{split}".encode()))
    return sorted(rng.sample(range(n), cap))


def load_task(task_dir: Path, instructions: dict[str, str], caps: dict[str, int | None], seed: int,
              splits=SPLITS, unknown_labels: str = "error") -> TaskData:
    name, category = task_dir.name, task_dir.parent.name
    labels = read_labels(task_dir / "labels.json")
    task = TaskData(name=name, category=category, labels=labels)
    instruction = instructions.get(category)
    for split in splits:
        rows = read_split(task_dir / f"{split}.json", labels, unknown_labels)
        keep = cap_indices(len(rows), caps.get(split), seed, name, split)
        task.splits[split] = [
            Example(build_prompt(category, name, rows[i]["sentence"], labels, instruction), rows[i]["label"])
            for i in keep
        ]
    return task


def load_tasks(data_dir, tasks: list[str], instructions: dict[str, str], max_train: int | None,
               max_test: int | None, seed: int, unknown_labels: str = "error", splits=SPLITS) -> dict[str, TaskData]:
    """Check all files first, then read and validate every task; raises NloraError on any problem."""
    dirs = resolve_task_dirs(data_dir, tasks, splits)
    caps = {"train": max_train, "test": max_test}
    return {t: load_task(d, instructions, caps, seed, splits, unknown_labels) for t, d in dirs.items()}
