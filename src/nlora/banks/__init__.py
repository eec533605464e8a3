"""What trains: a bank of trainable parts around the model, one interface with three implementations.

- ``LoraBank`` (``kind = "lora"``): one PEFT LoRA adapter per task; earlier ones frozen, kept in the forward
  pass or folded into the base weights; merged into the weights for evaluation.
- ``PromptBank`` (``"prompt"``): PEFT soft prompts, one active at a time, the model frozen.
- ``FullModel`` (``"full"``): the plain model, every weight trains.

A method names the kind it needs (``Method.bank``); ``make_bank`` builds it; methods and the training loop
then ask the bank (start, activate, merged, snapshot/using, save/load...), and only the bank modules read
PEFT's internals (adapter dicts, configs, prompt encoders).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import torch

from ..config import LoraSettings
from ..families import ModelFamily
from .files import EXTRA_FILE, MethodState, load_extra
from .full import FullModel
from .lora import AdaptedLayer, LayerFactors, LoraBank
from .prompt import PromptBank

KINDS = ("lora", "prompt", "full")

__all__ = [
    "EXTRA_FILE",
    "KINDS",
    "AdaptedLayer",
    "Bank",
    "FullModel",
    "LayerFactors",
    "LoraBank",
    "MethodState",
    "PromptBank",
    "load_extra",
    "make_bank",
]


class Bank(Protocol):
    """What every bank offers. ``adapters`` are the trainable parts in creation order (for a full model, its
    one name); ``current`` the newest, the one that trains. Kind-specific operations (LoRA's ``fold``,
    ``factors``, ``adapted_layers``, ``freeze_A``; prompts' ``prompt_embedding``...) live on the classes."""

    kind: str
    base_model: torch.nn.Module  # the model the bank was built around (PEFT wraps it in place)
    model: torch.nn.Module | None  # what runs forward and trains; None before the first ``start``
    adapters: list[str]

    @property
    def current(self) -> str: ...

    @property
    def extras(self) -> dict[str, torch.nn.Module]: ...

    def start(self, name: str, *args) -> None:
        """Create trainable part ``name`` (or make it current again); only it trains."""

    def activate(self, names: list[str]) -> None:
        """Which parts take part in the forward pass; only the current one stays trainable."""

    def active(self) -> list[str]: ...

    def live_adapters(self) -> list[str]: ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def attach_extra(self, adapter: str, module: torch.nn.Module) -> torch.nn.Module:
        """Method state saved and loaded with ``adapter``."""

    def merged(self, names: list[str]) -> AbstractContextManager[None]:
        """The model with ``names`` merged into its weights where that is possible (for evaluation)."""

    def snapshot(self, source: str, name: str) -> str:
        """A frozen copy of part ``source`` as it is now, kept as ``name``."""

    def using(self, name: str) -> AbstractContextManager[None]:
        """Run the model as snapshot ``name``, in eval mode; everything comes back afterwards."""

    def save(self, adapter: str, dest: Path) -> None: ...

    def load(self, adapter: str, src: Path) -> None: ...


def make_bank(
    kind: str,
    base_model: torch.nn.Module,
    lora: LoraSettings,
    target_modules: list[str],
    family: ModelFamily,
    sharded: bool = False,
) -> Bank:
    """The bank of ``kind`` around ``base_model``, a model of ``family`` (which sets PEFT's task type).

    ``lora`` and ``target_modules`` are read by LoRA only; ``sharded``: FSDP-sharded base weights, which only a
    LoRA bank trains with."""
    if kind == "lora":
        return LoraBank(base_model, lora, target_modules, family, sharded=sharded)
    if kind == "prompt":
        return PromptBank(base_model, family)
    if kind == "full":
        return FullModel(base_model)
    raise ValueError(f"unknown bank kind {kind!r} (one of {', '.join(KINDS)})")
