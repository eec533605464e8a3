"""How a method declares its settings, and what it may know of the run.

A method's options are one dataclass, ``Options``, nested in its class: each field is a knob a researcher may
tune, declared with ``option(default, help, ...)`` so its default, help text, YAML/CLI key, allowed values and
whether it may differ per task live in one place. The config reads them under ``method:`` (``method: {name:
n-lora, lambda: 0.4, form: reference}``), ``--method-arg KEY=VALUE`` sets them from the command line, and
``nlora methods NAME`` lists them. A method gets its options and a ``RunFacts``, never the whole run config.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ..errors import NloraError

# Run-level names of earlier versions that still set the option marked with them (``alias=``): the top-level
# settings and flags ``lambda`` / ``lambda2`` (the method's main and second coefficient, also in task entries)
# and ``nlora_form`` (n-lora's ``form``). A method without such an option ignores them, as before.
ALIASES = ("lambda", "lambda2", "nlora_form")


def option(
    default: Any,
    help: str,
    *,
    key: str | None = None,
    alias: str | None = None,
    per_task: bool = False,
    choices: tuple | None = None,
    limit: tuple | None = None,
):
    """A field of a method's ``Options``.

    ``key``: its name in YAML and ``--method-arg`` when the Python name cannot be it (``lambda``);
    ``alias``: one of ALIASES that also sets it (``--lambda`` for the main coefficient);
    ``per_task``: a task entry may override it (``tasks: [{name: a, lambda: 0.2}]``);
    ``choices``: the allowed values; ``limit``: (lowest, highest) or (lowest, highest, lowest excluded,
    highest excluded), None for unbounded, as config.LIMITS."""
    if alias is not None and alias not in ALIASES:
        raise ValueError(f"alias must be one of {ALIASES}, got {alias!r}")
    meta = {"help": help, "key": key, "alias": alias, "per_task": per_task, "choices": choices, "limit": limit}
    return field(default=default, metadata=meta)


def coefficient(default: float, help: str, *, key: str = "lambda"):
    """A method's weight of one loss term: at least 0, may differ per task, and set under ``key`` (``lambda``, the
    main coefficient, or ``lambda2``), which is also the run-level alias (``--lambda``). Most regularised methods
    declare their main knob this way."""
    return option(default, help, key=key, alias=key, per_task=True, limit=(0, None))


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none."""


@dataclass(frozen=True)
class OptionSpec:
    """One option as the config, the CLI and ``nlora methods`` see it."""

    name: str  # the dataclass field
    key: str  # the YAML / --method-arg key
    hint: Any  # the field's type
    default: Any
    help: str
    alias: str | None
    per_task: bool
    choices: tuple | None
    limit: tuple | None  # (lowest, highest, lowest excluded, highest excluded)

    def type_name(self) -> str:
        return getattr(self.hint, "__name__", str(self.hint))


@cache
def option_specs(options_cls: type) -> tuple[OptionSpec, ...]:
    hints = typing.get_type_hints(options_cls)
    specs = []
    for f in dataclasses.fields(options_cls):
        meta = f.metadata
        limit = meta.get("limit")
        if limit is not None and len(limit) == 2:
            limit = (*limit, False, False)
        specs.append(
            OptionSpec(
                name=f.name,
                key=meta.get("key") or f.name,
                hint=hints[f.name],
                default=f.default,
                help=meta.get("help", ""),
                alias=meta.get("alias"),
                per_task=bool(meta.get("per_task")),
                choices=meta.get("choices"),
                limit=limit,
            )
        )
    return tuple(specs)


def find_spec(options_cls: type, key: str, *, aliases: bool = True) -> OptionSpec | None:
    """The option named ``key`` (its key or, with ``aliases``, its alias); None if there is none."""
    for spec in option_specs(options_cls):
        if spec.key == key or (aliases and spec.alias == key):
            return spec
    return None


def describe_keys(options_cls: type) -> str:
    keys = [s.key for s in option_specs(options_cls)]
    return ", ".join(keys) if keys else "none"


def field_values(options_cls: type, values: dict[str, Any], method: str = "") -> dict[str, Any]:
    """{option key or alias: value} -> {dataclass field: value}; an unknown key is one NloraError, an alias the
    method has no option for is ignored (as the config ignores ``lambda`` for a method without a coefficient)."""
    out = {}
    for key, value in values.items():
        spec = find_spec(options_cls, key)
        if spec is None and key in ALIASES:
            continue
        if spec is None:
            raise NloraError(
                f"method {method or '?'} has no option '{key}' (its options: {describe_keys(options_cls)})"
            )
        out[spec.name] = value
    return out


def key_values(options: Any) -> dict[str, Any]:
    """An Options instance as {option key: value}: what a run's config.yaml records."""
    return {s.key: getattr(options, s.name) for s in option_specs(type(options))}


@dataclass(frozen=True)
class RunFacts:
    """What a method may know of the run beyond its own options."""

    seed: int = 42  # the run's seed: methods draw their own random numbers from it
    n_tasks: int = 1  # tasks in the sequence (inflora's threshold schedule)
    fold_adapters: bool = True  # whether finished adapters may be folded into the base weights

    @classmethod
    def of(cls, cfg) -> RunFacts:
        return cls(seed=cfg.seed, n_tasks=len(cfg.tasks), fold_adapters=cfg.fold_adapters)
