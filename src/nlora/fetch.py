"""``nlora data fetch`` and ``nlora data check``: get CL_Benchmark and say what a folder can serve."""

from __future__ import annotations

import http.client
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .errors import NloraError
from .io import read_json

# The public copy: the CL_Benchmark folder of the O-LoRA repository (Wang et al., 2023).
DEFAULT_URL = "https://raw.githubusercontent.com/cmnfriend/O-LoRA/main/CL_Benchmark"

# <Category> -> datasets, the 15 tasks of the benchmark (REFERENCE.md section 3).
LAYOUT = {
    "SC": ["amazon", "yelp", "IMDB", "SST-2"],
    "TC": ["agnews", "dbpedia", "yahoo"],
    "NLI": ["MNLI", "CB", "RTE"],
    "QQP": ["QQP"],
    "BoolQA": ["BoolQA"],
    "COPA": ["COPA"],
    "MultiRC": ["MultiRC"],
    "WiC": ["WiC"],
}
FILES = ("labels.json", "train.json", "dev.json", "test.json")
NEEDED = ("labels.json", "train.json", "test.json")  # what a run reads; dev.json is a copy of test.json
URL_SCHEMES = ("http", "https")
MAX_TIMEOUT = 86400.0  # a day; the socket layer overflows on values far beyond any useful wait


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
        return [ds for cat, names in LAYOUT.items() for ds in names if all(f"{cat}/{ds}/{f}" in good for f in NEEDED)]


def _problem(path: Path, name: str) -> str | None:
    """Why a present file is unusable, or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the data"
    try:
        data = read_json(path)
    except NloraError as e:
        return f"not valid JSON ({str(e).removeprefix(f'{path}: ')})"
    if name == "labels.json":
        ok = isinstance(data, list) and data and all(isinstance(x, str) for x in data)
        return None if ok else "expected a non-empty list of label strings"
    if not isinstance(data, list) or not data:
        return "expected a non-empty list of examples"
    bad = next(
        (
            i
            for i, row in enumerate(data)
            if not isinstance(row, dict)
            or not isinstance(row.get("sentence"), str)
            or not isinstance(row.get("label"), str)
        ),
        None,
    )
    return None if bad is None else f"example {bad} needs string fields 'label' and 'sentence'"


def check_dir(root: str | Path) -> CheckResult:
    root = Path(root)
    if not root.exists():
        raise NloraError(f"data directory not found: {root}")
    if not root.is_dir():
        raise NloraError(f"data directory {root} is not a directory (a file of that name exists)")
    result = CheckResult(root)
    # disable=None: no bar when stderr is not a terminal, so a log or a caller reading stderr gets only messages
    for rel in tqdm(expected_files(), desc="check", unit="file", leave=False, disable=None):
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
    return {name: [t["name"] for t in load_preset(name)["tasks"] if t["name"] not in usable] for name in preset_names()}


def check_source(base_url: str, timeout: float) -> None:
    """--url and --timeout make sense: checked before anything is created or fetched."""
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT):
        raise NloraError(f"--timeout must be a number of seconds > 0 and <= {MAX_TIMEOUT:g}, got {timeout}")
    try:
        parts = urllib.parse.urlsplit(base_url)
        parts.port  # noqa: B018 -- parsing the port is what finds a malformed one
    except ValueError as e:
        raise NloraError(f"--url {base_url!r} is not a valid URL ({e})") from None
    if parts.scheme not in URL_SCHEMES:
        raise NloraError(
            f"--url {base_url!r}: unsupported scheme {parts.scheme or '(none)'!r}; use an http:// "
            "or https:// address (for a local copy, point --data-dir at it)"
        )
    if not parts.hostname:
        raise NloraError(f"--url {base_url!r} is not a valid URL (no host name)")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in base_url):
        raise NloraError(f"--url {base_url!r} is not a valid URL (it contains whitespace or control characters)")


def _download(url: str, dest: Path, timeout: float) -> bool:
    """Fetch url to dest through a temporary name, renamed into place only once the body is complete (as many
    bytes as the server's Content-Length); False when the server has no such file."""
    tmp = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NloraError(f"cannot create folder {dest.parent}: {e.strerror or e}") from None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as fh:
            expected = response.headers.get("Content-Length")
            got = 0
            while chunk := response.read(1 << 20):
                fh.write(chunk)
                got += len(chunk)
        if expected is not None and expected.strip().isdigit() and got != int(expected):
            raise NloraError(
                f"{url}: download cut short ({got} of {int(expected)} bytes); nothing was saved "
                "under its name, run the fetch again to retry"
            )
        os.replace(tmp, dest)
        return True
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise NloraError(f"{url}: HTTP {e.code} {e.reason}") from None
    except http.client.IncompleteRead as e:
        raise NloraError(
            f"{url}: download cut short ({len(e.partial)} bytes, {e.expected} more expected); "
            "nothing was saved under its name, run the fetch again to retry"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e.__class__.__name__ + (f": {e}" if str(e) else "")
        raise NloraError(
            f"cannot download {url}: {reason} (no network? use --url for a mirror, or copy the "
            "folder by hand and run `nlora data check DIR`)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)  # whatever stopped the download, no partial file stays behind


def fetch(dest: str | Path, base_url: str = DEFAULT_URL, timeout: float = 60.0) -> CheckResult:
    """Download every expected file not already valid in ``dest``, then check the whole folder."""
    from .rundir import check_path_usable

    check_source(base_url, timeout)
    dest = Path(dest)
    check_path_usable(dest, "--dest")
    before = check_dir(dest) if dest.is_dir() else CheckResult(dest, missing=expected_files())
    todo = before.missing + list(before.invalid)
    for rel in tqdm(todo, desc="fetch", unit="file", disable=None):
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
