"""Method registry: adding a method is one module plus one line in ``_MODULES``."""

from __future__ import annotations

import importlib

from ..errors import NloraError
from .base import Method

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls
    return cls


_MODULES = [
    "clora",
    "ewc",
    "gainlora",
    "inclora",
    "inflora",
    "l2p",
    "lwf",
    "migu",
    "mtl",
    "nlora",
    "olora",
    "pertask",
    "progprompt",
    "replay",
    "route",
    "sapt",
    "seqft",
    "seqlora",
    "seqprompt",
    "slao",
]
for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")


def get_method(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise NloraError(f"unknown method '{name}' (available: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]
