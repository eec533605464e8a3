"""File input and output. Reading: every reason a file cannot be read or parsed is one NloraError naming the
file. Writing: to a temporary name in the same folder, then rename."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import NloraError


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file's contents; missing, unreadable or not UTF-8 is one NloraError naming the file."""
    path = Path(path)
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        raise NloraError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise NloraError(f"{what} {path} is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise NloraError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:  # permissions, a name too long, an I/O error
        raise NloraError(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_json(path: str | Path, what: str = "file") -> Any:
    """A JSON file's value. Besides syntax errors, Python's JSON parser fails on nesting deeper than the
    recursion limit and on integers longer than sys.get_int_max_str_digits(); each is one NloraError."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise NloraError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}"
        ) from None
    except RecursionError:
        raise NloraError(f"{path}: JSON nested too deeply to read") from None
    except ValueError:  # the only other ValueError json raises: an integer over the digit limit
        limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
        raise NloraError(f"{path}: holds an integer of more than {limit} digits, too long to read") from None


def error_line(e: BaseException) -> str:
    """The first line of an exception's message (third-party messages run to paragraphs), or its type."""
    text = str(e).strip()
    return text.splitlines()[0] if text else e.__class__.__name__


def read_safetensors(path: str | Path, what: str = "weights file") -> dict:
    """All tensors of a safetensors file; missing, truncated or damaged is one NloraError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise NloraError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:  # a bad header, a file shorter than its header says, unreadable
        raise NloraError(f"{path}: not a readable safetensors file, truncated or damaged ({error_line(e)})") from None


def check_safetensors(path: str | Path, what: str = "weights file") -> None:
    """Like read_safetensors, reading only the header (which must cover the whole file): cheap for large files."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise NloraError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        raise NloraError(f"{path}: not a readable safetensors file, truncated or damaged ({error_line(e)})") from None


def check_saved_weights(folder: str | Path) -> None:
    """A saved adapter or model folder: it holds safetensors weights, each complete, and its JSON files parse."""
    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise NloraError(f"{folder}: no saved weights (*.safetensors)")
    for path in weights:
        check_safetensors(path)
    for path in sorted(folder.glob("*.json")):
        read_json(path)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename tmp_path onto ``path``; a crash leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
