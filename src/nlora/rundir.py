"""The run directory's lifecycle: what nlora made there, overwriting only that, and one process at a time.

- A manifest (``.nlora-run.json``) names the top-level entries nlora created in the directory. ``--overwrite``
  removes those and nothing else, so a user's own files beside a run survive, and a folder without a manifest
  (and without an older nlora run's readable ``config.yaml``) is never cleared: it is refused in one line.
- An OS lock (``flock`` on the directory itself, so nothing is written to take it) is held for the whole
  run. The kernel drops it when the process ends in any way, SIGKILL included, so a stale lock cannot exist;
  a second process is told which process holds it.
- Every JSON file nlora reads back on resume is checked before the model loads, so a damaged run directory
  is one line, not a traceback halfway through.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .config import RunConfig, save_config
from .data import resolve_task_dirs
from .errors import NloraError
from .io import check_saved_weights, read_json, write_json

if TYPE_CHECKING:  # the run directory's checks import no torch: dist is only passed through
    from .dist import Dist

MANIFEST = ".nlora-run.json"
DEMO_MANIFEST = ".nlora-demo.json"
# What runs made before the manifest existed wrote (adopted when their config.yaml is an nlora config).
LEGACY_OUTPUTS = (
    "config.yaml",
    "summary.json",
    "tasks",
    "zero_shot",
    "eval",
    "analysis.json",
    "collision.png",
    "nuclear_norm.png",
    "accuracy_matrix.png",
)
FINGERPRINT = "data_fingerprint.json"


def check_path_usable(out: Path, what: str = "output directory") -> None:
    """The path can be (or is) a directory: no existing ancestor is a file, the name is not too long."""
    try:
        if out.exists() and not out.is_dir():
            raise NloraError(f"{what} {out} exists and is not a directory")
        for parent in out.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    raise NloraError(f"{what} {out} is under {parent}, which is a file")
                break
    except OSError as e:  # a name over the file system's limit, a loop of links...
        raise NloraError(f"{what} {out}: {e.strerror or e}") from None


def _read_manifest(out: Path, name: str = MANIFEST) -> dict | None:
    path = out / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise NloraError(f"{path}: damaged nlora manifest; move the run's files elsewhere and start over") from None
    if not isinstance(data, dict) or not isinstance(data.get("outputs"), list):
        raise NloraError(f"{path}: damaged nlora manifest; move the run's files elsewhere and start over")
    return data


def _is_legacy_run(out: Path) -> bool:
    path = out / "config.yaml"
    if not path.is_file():
        return False
    try:
        RunConfig.from_dict(yaml.safe_load(path.read_text("utf-8")))
        return True
    except (yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return False  # anything unreadable is not a run nlora can vouch for


def nlora_outputs(out: Path, manifest: str = MANIFEST) -> list[str] | None:
    """Top-level names nlora wrote in ``out``; None when ``out`` holds no nlora run."""
    data = _read_manifest(out, manifest)
    if data is not None:
        return [str(n) for n in data["outputs"]]
    if manifest == MANIFEST and _is_legacy_run(out):
        return [n for n in LEGACY_OUTPUTS if (out / n).exists()]
    return None


def record(out: Path, *names: str, manifest: str = MANIFEST) -> None:
    """Add ``names`` (top-level entries nlora is about to write) to the manifest; call before writing them."""
    data = _read_manifest(out, manifest) or {"outputs": []}
    new = [n for n in names if n not in data["outputs"]]
    if new or not (out / manifest).is_file():
        data["outputs"] = data["outputs"] + new
        write_json(out / manifest, data)


def is_empty(out: Path) -> bool:
    return not out.is_dir() or not any(out.iterdir())


def refuse_foreign(out: Path, manifest: str = MANIFEST, kind: str = "nlora run") -> None:
    """A non-empty folder that nlora did not make is never used (and so never cleared)."""
    if not is_empty(out) and nlora_outputs(out, manifest) is None:
        raise NloraError(
            f"output directory {out} is not empty and holds no {kind}; nlora never writes into or "
            "deletes from a folder it did not make: choose another --output-dir"
        )


def clear(out: Path, manifest: str = MANIFEST) -> None:
    """Remove what nlora wrote in ``out`` (the manifest's entries), then the manifest; the user's files stay."""
    for name in nlora_outputs(out, manifest) or []:
        path = out / name
        if path.resolve().parent != out.resolve():  # a manifest never names anything outside its folder
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    (out / manifest).unlink(missing_ok=True)


# -- one process per run directory ---------------------------------------------------------------------------


class DirectoryLock:
    """An exclusive ``flock`` on the directory, held until ``release`` or the process ends."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> DirectoryLock:
        try:
            import fcntl
        except ImportError:  # no flock on this platform: run unlocked rather than not at all
            return self
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                pid = lock_holder(self.path)
                who = f"process {pid}" if pid else "another process"
                raise NloraError(
                    f"{self.path} is in use by {who} (an nlora run or eval holds it); wait for it to "
                    "end, or stop it, then run again (the run resumes where it stopped)"
                ) from None
            return self  # a file system without flock (some network mounts): unlocked
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None


def lock_holder(path: Path) -> int | None:
    """The pid holding a flock on ``path``, read from /proc/locks (Linux); None where that cannot be told."""
    try:
        inode = os.stat(path).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and len(fields) >= 6 and fields[-3].rsplit(":", 1)[-1] == str(inode):
            try:
                return int(fields[-4])
            except ValueError:
                return None
    return None


# -- files read back on resume -------------------------------------------------------------------------------


def check_run_files(out: Path) -> None:
    """Every file a resume reads back must be whole: the JSON records parse to objects and each finished task's
    saved weights are complete. Names the first that is not, before the model loads."""
    candidates = [
        out / "summary.json",
        *sorted(out.glob("tasks/*/train_stats.json")),
        *sorted(out.glob("tasks/*/predict_results.json")),
        *sorted(out.glob("tasks/*/routing.json")),
        out / "zero_shot" / "predict_results.json",
    ]
    advice = "delete it to redo that step, or pass --overwrite to start the run over"
    for path in candidates:
        if not path.is_file():
            continue
        try:
            value = read_json(path)
        except NloraError as e:
            raise NloraError(f"{e}; {advice}") from None
        if not isinstance(value, dict):
            raise NloraError(f"{path}: damaged (expected a JSON object); {advice}")
    for stats in sorted(out.glob("tasks/*/train_stats.json")):  # a task counts as trained: its adapter is read
        if (stats.parent / "adapter").is_dir():
            try:
                check_saved_weights(stats.parent / "adapter")
            except NloraError as e:
                raise NloraError(f"{e}; delete {stats} to train that task again, or pass --overwrite") from None


def data_fingerprint(files: dict[str, list[Path]]) -> dict[str, dict[str, str]]:
    """sha256 of every data file a run reads, per task, so a resume can tell that its data changed."""
    out: dict[str, dict[str, str]] = {}
    for task, paths in files.items():
        out[task] = {}
        for path in paths:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            out[task][path.name] = digest.hexdigest()
    return out


def check_fingerprint(out: Path, now: dict[str, dict[str, str]]) -> None:
    """Refuse a resume whose data files differ from those the run started with."""
    path = out / FINGERPRINT
    if not path.is_file():
        return  # a run from before fingerprints: nothing to compare with
    try:
        before = json.loads(path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise NloraError(f"{path}: damaged; delete it to resume without the data check, or pass --overwrite") from None
    for task, files in now.items():
        for name, digest in files.items():
            old = before.get(task, {}).get(name) if isinstance(before.get(task), dict) else None
            if old is not None and old != digest:
                raise NloraError(
                    f"task {task}: {name} changed since this run started (its contents differ); "
                    "restore it, or pass --overwrite to start over with the new data"
                )


# -- a run's directory: planned (read-only, every rank), then made (rank 0) -----------------------------------

# Settings that may change between a run and its resumption: where it runs, how it batches evaluation (a
# resumed run may land on another GPU), how it logs, what it may load: none changes what is trained.
RESUME_FREE = (
    "output_dir",
    "device",
    "save_every",
    "eval_batch_size",
    "report_to",
    "log_every",
    "trust_remote_code",
    "allow_pickle_weights",
)
# What a run writes at the top of its directory (recorded in the manifest before it is written).
RUN_OUTPUTS = ("config.yaml", FINGERPRINT, "tasks", "zero_shot", "summary.json", "logs")


def check_resumable(saved: Path, cfg: RunConfig) -> None:
    """A run directory is resumed only with the settings it was made with."""
    try:
        before = RunConfig.from_dict(yaml.safe_load(saved.read_text("utf-8"))).to_dict()
    except (yaml.YAMLError, TypeError, KeyError, AttributeError, ValueError) as e:
        raise NloraError(
            f"{saved}: not a readable nlora config ({e.__class__.__name__}); pass --overwrite to start over"
        ) from None
    now = cfg.to_dict()
    diff = [k for k in sorted(set(before) | set(now)) if k not in RESUME_FREE and before.get(k) != now.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {before.get(k)!r} there, {now.get(k)!r} now" for k in diff[:3])
        raise NloraError(
            f"{saved.parent} holds a run with different settings ({shown}"
            f"{'; ...' if len(diff) > 3 else ''}); resume it with the same settings, choose another "
            "--output-dir, or pass --overwrite to start over"
        )


def data_files(cfg: RunConfig) -> dict[str, list[Path]]:
    """Every file the run's data comes from, per task (the instruction file under its own key)."""
    dirs = resolve_task_dirs(cfg.data_dir, cfg.task_names)
    files = {name: [d / "labels.json", d / "train.json", d / "test.json"] for name, d in dirs.items()}
    if cfg.instructions:
        files["(instructions)"] = [Path(cfg.instructions)]
    return files


def plan_run_dir(cfg: RunConfig, overwrite: bool, dist: Dist, held: ExitStack) -> bool:
    """Read-only checks of the output directory (every rank); True if an earlier run there is resumed.

    Rank 0 takes the directory's lock first when it exists, so nothing it reads is being written by another
    process. A non-empty folder nlora did not make is refused, with --overwrite too."""
    out = Path(cfg.output_dir)
    check_path_usable(out)
    refuse_foreign(out)
    if out.is_dir() and dist.is_main:
        held.callback(DirectoryLock(out).acquire().release)
    if not overwrite and (out / "config.yaml").is_file():
        check_resumable(out / "config.yaml", cfg)
        check_run_files(out)
        check_fingerprint(out, data_fingerprint(data_files(cfg)))
        return True
    if not overwrite and not is_empty(out):
        raise NloraError(
            f"output directory {out} holds the start of an nlora run but no config.yaml; pass --overwrite to start over"
        )
    return False


def make_run_dir(cfg: RunConfig, overwrite: bool, dist: Dist, held: ExitStack) -> Path:
    """Called once every check has passed: clear what nlora wrote before (--overwrite), record and write the
    config and the data fingerprint."""
    out = Path(cfg.output_dir)
    if dist.is_main:
        try:
            existed = out.is_dir()
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NloraError(f"cannot create output directory {out}: {e.strerror or e}") from None
        if not existed:  # made just now: lock it, and make sure no other process got here first
            held.callback(DirectoryLock(out).acquire().release)
            if not is_empty(out):
                raise NloraError(
                    f"output directory {out} was filled by another process meanwhile; choose another --output-dir"
                )
        try:
            if overwrite:
                clear(out)
            record(out, *RUN_OUTPUTS)
            write_json(out / FINGERPRINT, data_fingerprint(data_files(cfg)))
            save_config(cfg, out / "config.yaml")
        except OSError as e:  # a full or read-only disk: leave no half-made run directory behind
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
            raise NloraError(f"cannot write the run directory {out}: {e.strerror or e}") from None
    dist.barrier()
    return out
