"""The methods table a researcher chooses from: `nlora methods` (terminal), `nlora methods NAME` (one entry in
full) and `nlora methods --markdown` (the table in docs/methods.md), all from the methods' class attributes."""

from __future__ import annotations

import inspect
import sys
import textwrap

from ..errors import NloraError
from .base import Method
from .options import option_specs

COLUMNS = [  # (header, attribute, terminal width)
    ("method", "name", 10),
    ("year, venue", "venue", 12),
    ("trains", "trains", 24),
    ("stored per task (memory)", "stored_per_task", 25),
    ("task id", "needs_task_id", 7),
    ("replay", "uses_replay", 6),
    ("source", "source", 24),
]
GAP = 2


def _cell(cls: type[Method], attribute: str) -> str:
    value = getattr(cls, attribute)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value or "-"


def text_table(registry: dict[str, type[Method]]) -> str:
    """Fixed-width columns, long cells wrapped onto further lines, a blank line between methods (fits 120
    columns)."""

    def row(cells: list[str]) -> list[str]:
        wrapped = [textwrap.wrap(c, w) or [""] for c, (_, _, w) in zip(cells, COLUMNS)]
        height = max(len(w) for w in wrapped)
        return [
            (" " * GAP)
            .join(f"{(w[i] if i < len(w) else ''):{width}s}" for w, (_, _, width) in zip(wrapped, COLUMNS))
            .rstrip()
            for i in range(height)
        ]

    lines = row([h for h, _, _ in COLUMNS])
    lines.append((" " * GAP).join("-" * w for _, _, w in COLUMNS))
    for i, name in enumerate(sorted(registry)):
        if i:
            lines.append("")
        lines += row([_cell(registry[name], a) for _, a, _ in COLUMNS])
    return "\n".join(lines)


def markdown_table(registry: dict[str, type[Method]]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name in sorted(registry):
        cells = [f"`{name}`"] + [_cell(registry[name], a) for _, a, _ in COLUMNS[1:]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def options_table(cls: type[Method]) -> list[str]:
    """The method's options (methods/options.py) as config files and --method-arg name them: key, type, default
    and help, with the older flag that also sets one (--lambda, --lambda2, --nlora-form) and whether a task
    entry may override it."""
    specs = option_specs(cls.Options)
    if not specs:
        return ["options: none"]
    rows = [("key", "type", "default", "help")]
    for s in specs:
        notes = [f"one of {', '.join(map(str, s.choices))}" if s.choices else ""]
        notes += [f"--{s.alias.replace('_', '-')} sets it" if s.alias else "", "per task" if s.per_task else ""]
        extra = "; ".join(n for n in notes if n)
        rows.append((s.key, s.type_name(), _shown(s.default), s.help + (f" ({extra})" if extra else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    out = [f"options (config: method: {{name: {cls.name}, KEY: VALUE}}; command line: --method-arg KEY=VALUE):"]
    for row in rows:
        head = "  " + "  ".join(f"{c:{w}s}" for c, w in zip(row[:3], widths)) + "  "
        wrapped = textwrap.wrap(row[3], max(118 - len(head), 30)) or [""]
        out.append(head + wrapped[0])
        out += [" " * len(head) + more for more in wrapped[1:]]
    return out


def entry(registry: dict[str, type[Method]], name: str) -> str:
    """One method in full: the table's fields, then its docstring (sources, equations, choices made)."""
    if name not in registry:
        raise NloraError(f"unknown method '{name}' (available: {', '.join(sorted(registry))})")
    cls = registry[name]
    fields = [("summary", cls.summary)] + [(h, _cell(cls, a)) for h, a, _ in COLUMNS[1:]]
    width = max(len(k) for k, _ in fields) + 2
    lines = [name, ""]
    for key, value in fields:
        wrapped = textwrap.wrap(value, 118 - width) or [""]
        lines.append(f"{key + ':':{width}s}{wrapped[0]}")
        lines += [" " * width + more for more in wrapped[1:]]
    lines += ["", *options_table(cls)]
    # the class's own docstring, else its module's (where the methods keep sources and choices)
    text = inspect.cleandoc(cls.__doc__) if cls.__doc__ else (inspect.getdoc(sys.modules[cls.__module__]) or "")
    if text:
        lines += ["", text]
    return "\n".join(lines)
