"""The CL_Benchmark prompt format (REFERENCE.md section 4); it must match for comparable numbers."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .errors import NloraError
from .io import read_json

ANSWER_MARKER = "Answer:"


def load_instructions(path: str | Path | None = None) -> dict[str, str]:
    """Category -> instruction text. The shipped file by default; a user file overrides it.

    Accepts our flat ``{"TC": "..."}`` form and the reference's
    ``{"TC": [{"instruction_type": ..., "instruction": "..."}]}`` form (its first entry is used).
    """
    if path is None:
        raw = json.loads(resources.files("nlora.resources").joinpath("instructions.json").read_text("utf-8"))
        source = "built-in instructions.json"
    else:
        raw, source = read_json(path, "instruction file"), str(path)
    shape = 'a JSON object {"<Category>": "<instruction>"} or {"<Category>": [{"instruction": "<instruction>"}]}'
    if not isinstance(raw, dict):
        raise NloraError(f"{source}: expected {shape}, got a JSON {type(raw).__name__}")
    out = {}
    for category, entry in raw.items():
        if isinstance(entry, list):
            first = entry[0] if entry else {"instruction": ""}
            entry = first.get("instruction") if isinstance(first, dict) else None
        if not isinstance(entry, str):
            raise NloraError(f"{source}: instruction for category '{category}' must be a string (file format: {shape})")
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
    return text[idx + len(ANSWER_MARKER) :] if idx >= 0 else text
