"""CL_Benchmark reading and checking: ``<Category>/<dataset>/{train,dev,test}.json`` + ``labels.json``."""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import NloraError
from .io import read_json
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


def task_folders(data_dir: str | Path) -> dict[str, list[Path]]:
    """Dataset name -> every ``<Category>/<dataset>/`` folder of that name under data_dir (sorted)."""
    root = Path(data_dir)
    if not root.exists():
        raise NloraError(f"data directory not found: {root}")
    if not root.is_dir():
        raise NloraError(f"data directory {root} is not a directory (a file of that name exists)")
    found: dict[str, list[Path]] = {}
    for cat in sorted(p for p in root.iterdir() if p.is_dir()):
        for ds in sorted(p for p in cat.iterdir() if p.is_dir()):
            found.setdefault(ds.name, []).append(ds)
    return found


def index_tasks(data_dir: str | Path) -> dict[str, Path]:
    """Task name -> its folder: ``Category/dataset`` for every dataset, and the bare dataset name where a
    single category holds it (a name under two categories must be given with its category)."""
    index = {}
    for name, dirs in task_folders(data_dir).items():
        if len(dirs) == 1:
            index[name] = dirs[0]
        for d in dirs:
            index[f"{d.parent.name}/{name}"] = d
    return index


def resolve_task_dirs(data_dir: str | Path, tasks: list[str], splits=SPLITS) -> dict[str, Path]:
    """Check every task's files exist before any work starts; name all missing ones in one message."""
    folders = task_folders(data_dir)
    ambiguous = [t for t in tasks if len(folders.get(t, [])) > 1]
    if ambiguous:
        t = ambiguous[0]
        raise NloraError(
            f"task '{t}' is in more than one category: {' and '.join(map(str, folders[t]))}; "
            f"name the one you mean with its category, e.g. {folders[t][0].parent.name}/{t}"
        )
    index = index_tasks(data_dir)
    unknown = [t for t in tasks if t not in index]
    if unknown:
        raise NloraError(
            f"unknown task(s) {', '.join(unknown)} in data directory {data_dir} "
            f"(found: {', '.join(sorted(folders)) or 'none'})"
        )
    missing = [
        str(index[t] / f)
        for t in tasks
        for f in ("labels.json", *(f"{s}.json" for s in splits))
        if not (index[t] / f).is_file()
    ]
    if missing:
        raise NloraError(f"missing data files: {', '.join(missing)}")
    return {t: index[t] for t in tasks}


def read_labels(path: Path) -> list[str]:
    labels = read_json(path)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise NloraError(f"{path}: expected a non-empty JSON list of label strings")
    return labels


def read_split(path: Path, labels: list[str], unknown_labels: str = "error") -> list[dict]:
    """Rows of a split. A label outside labels.json is an error, or dropped, or kept (scored as the
    reference does: MNLI marks its unlabelled examples '-', which normalises to "" and so matches an empty or
    punctuation-only prediction, in the release as here)."""
    rows = read_json(path)
    if not isinstance(rows, list):
        raise NloraError(f'{path}: expected a JSON list of {{"label", "sentence"}} objects')
    if not rows:
        raise NloraError(f"{path}: split is empty")
    allowed = set(labels)
    kept = []
    for i, row in enumerate(rows):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("sentence"), str)
            or not isinstance(row.get("label"), str)
        ):
            raise NloraError(f"{path}: example {i} needs string fields 'label' and 'sentence'")
        if row["label"] not in allowed:
            if unknown_labels == "error":
                raise NloraError(
                    f"{path}: example {i} has label {row['label']!r}, not in labels.json {labels} "
                    "(--unknown-labels drop skips such examples, keep scores them as the reference)"
                )
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


def load_task(
    task_dir: Path,
    instructions: dict[str, str],
    caps: dict[str, int | None],
    seed: int,
    splits=SPLITS,
    unknown_labels: str = "error",
    name: str | None = None,
) -> TaskData:
    """``name``: what the run calls the task (``Category/dataset`` where the dataset name alone is ambiguous);
    the prompt always names the dataset folder, as the reference's does."""
    dataset, category = task_dir.name, task_dir.parent.name
    name = name or dataset
    labels = read_labels(task_dir / "labels.json")
    task = TaskData(name=name, category=category, labels=labels)
    instruction = instructions.get(category)
    for split in splits:
        rows = read_split(task_dir / f"{split}.json", labels, unknown_labels)
        keep = cap_indices(len(rows), caps.get(split), seed, name, split)
        task.splits[split] = [
            Example(build_prompt(category, dataset, rows[i]["sentence"], labels, instruction), rows[i]["label"])
            for i in keep
        ]
    return task


def load_tasks(
    data_dir,
    tasks: list[str],
    instructions: dict[str, str],
    *,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
    unknown_labels: str = "error",
    splits=SPLITS,
) -> dict[str, TaskData]:
    """Check all files first, then read and validate every task; raises NloraError on any problem.
    ``max_train``/``max_test``: rows kept per split (None: all), drawn with ``seed``."""
    dirs = resolve_task_dirs(data_dir, tasks, splits)
    caps = {"train": max_train, "test": max_test}
    return {t: load_task(d, instructions, caps, seed, splits, unknown_labels, name=t) for t, d in dirs.items()}
