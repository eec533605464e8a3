"""Method registry: adding a method is one module plus one line in the import below (docs/adding-a-method.md)."""

from __future__ import annotations

from ..errors import NloraError
from .base import Method
from .options import RunFacts

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls
    return cls


# Each module registers its methods with @register when imported (after `register` exists, hence down here).
from . import (  # noqa: E402, F401
    clora,
    ewc,
    gainlora,
    inclora,
    inflora,
    l2,
    l2p,
    lwf,
    migu,
    mtl,
    nlora,
    olora,
    pertask,
    progprompt,
    replay,
    route,
    sapt,
    seqft,
    seqlora,
    seqprompt,
    slao,
)


def get_method(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise NloraError(f"unknown method '{name}' (available: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


def make_method(name: str, options: dict | None = None, run: RunFacts | None = None) -> Method:
    """Method ``name`` built directly: ``options`` by key or alias ({"lambda": 0.1}; an alias the method has no
    option for is ignored), ``run`` the facts it may use (default RunFacts())."""
    cls = get_method(name)
    return cls(cls.options_from(options or {}), run)


def build_method(cfg) -> Method:
    """The method a resolved RunConfig names, with its options and the run facts it may use."""
    cls = get_method(cfg.method)
    return cls(cls.options_from(cfg.method_options), RunFacts.of(cfg))
