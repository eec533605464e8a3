"""The CL_Benchmark prompt format (REFERENCE.md section 4); it must match for comparable numbers."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .errors import NloraError

ANSWER_MARKER = "Answer:"


def load_instructions(path: str | Path | None = None) -> dict[str, str]:
    """Category -> instruction text. The shipped file by default; a user file overrides it.

    Accepts our flat ``{"TC": "..."}`` form and the reference's
    ``{"TC": [{"instruction_type": ..., "instruction": "..."}]}`` form.
    """
    if path is None:
        text = resources.files("nlora.resources").joinpath("instructions.json").read_text("utf-8")
        source = "built-in instructions.json"
    else:
        path = Path(path)
        if not path.is_file():
            raise NloraError(f"instruction file not found: {path}")
        text, source = path.read_text("utf-8"), str(path)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise NloraError(f"{source}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    out = {}
    for category, entry in raw.items():
        if isinstance(entry, list):
            entry = entry[0]["instruction"] if entry else ""
        if not isinstance(entry, str):
            raise NloraError(f"{source}: instruction for category '{category}' must be a string")
        out[category] = entry
    return out


def build_prompt(category: str, dataset: str, sentence: str, labels: list[str], instruction: str | None) -> str:
    """``Task:{Category}\\nDataset:{dataset}\\n{instruction}Option: {labels} \\n{sentence}\\nAnswer:``.

    A category without an instruction (COPA in CL_Benchmark) gets neither instruction nor option line.
    """
    head = f"Task:{category}\nDataset:{dataset}\n"
    if instruction:
        head += f"{instruction}Option: {', '.join(labels)} \n"
    return f"{head}{sentence}\n{ANSWER_MARKER}"


def answer_from_generation(text: str) -> str:
    """Decoder-only prediction: the text after the last "Answer:" (the whole text if absent)."""
    idx = text.rfind(ANSWER_MARKER)
    return text[idx + len(ANSWER_MARKER):] if idx >= 0 else text
