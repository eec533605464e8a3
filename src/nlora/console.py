"""The one-line progress messages of a run (``[nlora] ...``), written once under a multi-process launcher."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def log(msg: str) -> None:
    if os.environ.get("RANK", "0") in ("0", ""):  # under a launcher, one copy of each message
        tqdm.write(f"[nlora] {msg}")
