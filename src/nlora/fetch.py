"""``nlora data fetch`` and ``nlora data check``: get CL_Benchmark and say what a folder can serve."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .errors import NloraError

# The public copy: the CL_Benchmark folder of the O-LoRA repository (Wang et al., 2023).
DEFAULT_URL = "https://raw.githubusercontent.com/cmnfriend/O-LoRA/main/CL_Benchmark"

# <Category> -> datasets, the 15 tasks of the benchmark (REFERENCE.md section 3).
LAYOUT = {
    "SC": ["amazon", "yelp", "IMDB", "SST-2"], "TC": ["agnews", "dbpedia", "yahoo"], "NLI": ["MNLI", "CB", "RTE"],
    "QQP": ["QQP"], "BoolQA": ["BoolQA"], "COPA": ["COPA"], "MultiRC": ["MultiRC"], "WiC": ["WiC"],
}
FILES = ("labels.json", "train.json", "dev.json", "test.json")
NEEDED = ("labels.json", "train.json", "test.json")  # what a run reads; dev.json is a copy of test.json


def expected_files() -> list[str]:
    return [f"{cat}/{ds}/{f}" for cat, names in LAYOUT.items() for ds in names for f in FILES]


@dataclass
class CheckResult:
    root: Path
    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)  # relative path -> why

    def usable_tasks(self) -> list[str]:
        good = set(self.ok)
        return [ds for cat, names in LAYOUT.items() for ds in names
                if all(f"{cat}/{ds}/{f}" in good for f in NEEDED)]


def _problem(path: Path, name: str) -> str | None:
    """Why a present file is unusable, or None."""
    head = path.read_bytes()[:64]
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the data"
    try:
        data = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"not valid JSON ({e.__class__.__name__}: {str(e).splitlines()[0]})"
    if name == "labels.json":
        ok = isinstance(data, list) and data and all(isinstance(x, str) for x in data)
        return None if ok else "expected a non-empty list of label strings"
    if not isinstance(data, list) or not data:
        return "expected a non-empty list of examples"
    bad = next((i for i, row in enumerate(data) if not isinstance(row, dict)
                or not isinstance(row.get("sentence"), str) or not isinstance(row.get("label"), str)), None)
    return None if bad is None else f"example {bad} needs string fields 'label' and 'sentence'"


def check_dir(root: str | Path) -> CheckResult:
    root = Path(root)
    if not root.is_dir():
        raise NloraError(f"data directory not found: {root}")
    result = CheckResult(root)
    for rel in tqdm(expected_files(), desc="check", unit="file", leave=False):
        path = root / rel
        if not path.is_file():
            result.missing.append(rel)
        elif (why := _problem(path, path.name)) is not None:
            result.invalid[rel] = why
        else:
            result.ok.append(rel)
    return result


def servable_presets(result: CheckResult) -> dict[str, list[str]]:
    """Preset name -> the tasks it lacks (empty list: the folder can serve it)."""
    from .config import load_preset, preset_names

    usable = set(result.usable_tasks())
    return {name: [t["name"] for t in load_preset(name)["tasks"] if t["name"] not in usable]
            for name in preset_names()}


def _download(url: str, dest: Path, timeout: float) -> bool:
    """Fetch url to dest through a temporary name; False when the server has no such file."""
    tmp = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as fh:
            while chunk := response.read(1 << 20):
                fh.write(chunk)
    except urllib.error.HTTPError as e:
        tmp.unlink(missing_ok=True)
        if e.code == 404:
            return False
        raise NloraError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise NloraError(f"cannot download {url}: {reason} (no network? use --url for a mirror, or copy the "
                         "folder by hand and run `nlora data check DIR`)") from None
    os.replace(tmp, dest)
    return True


def fetch(dest: str | Path, base_url: str = DEFAULT_URL, timeout: float = 60.0) -> CheckResult:
    """Download every expected file not already valid in ``dest``, then check the whole folder."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise NloraError(f"--dest exists and is not a directory: {dest}")
    before = check_dir(dest) if dest.is_dir() else CheckResult(dest, missing=expected_files())
    todo = before.missing + list(before.invalid)
    for rel in tqdm(todo, desc="fetch", unit="file"):
        _download(f"{base_url.rstrip('/')}/{rel}", dest / rel, timeout)
    return check_dir(dest)


def describe(result: CheckResult) -> list[str]:
    """Human-readable lines: counts, each missing or invalid file, usable tasks and presets."""
    total = len(expected_files())
    lines = [f"{result.root}: {len(result.ok)} of {total} expected files present and valid"]
    lines += [f"  missing: {rel}" for rel in result.missing]
    lines += [f"  invalid: {rel}: {why}" for rel, why in result.invalid.items()]
    usable = result.usable_tasks()
    lines.append(f"tasks with labels, train and test: {', '.join(usable) or 'none'} ({len(usable)} of 15)")
    presets = servable_presets(result)
    ok = [name for name, lacking in presets.items() if not lacking]
    lines.append(f"presets it can serve: {', '.join(ok) or 'none'}")
    for name, lacking in presets.items():
        if lacking:
            lines.append(f"  {name}: lacks {', '.join(lacking)}")
    return lines
