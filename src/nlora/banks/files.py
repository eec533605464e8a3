"""What every bank shares on disk: the atomic write of a saved folder, and the method-owned modules (gates,
keys, prototypes, GPM bases) that are saved and loaded with an adapter."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import NloraError
from ..io import read_safetensors

EXTRA_FILE = "method_state.safetensors"


def write_folder(dest: Path, fill: Callable[[Path], Path]) -> None:
    """Create folder ``dest`` whole or not at all: ``fill(tmp)`` writes into a fresh folder next to it and
    returns the folder to move into place (``tmp`` or one inside it)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        saved = fill(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(saved, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


EXTRAS_MODULE = "cl_extras"  # the submodule of the model that holds the methods' own modules


class MethodState:
    """Method-owned modules that belong to an adapter: registered under the model as ``cl_extras.<adapter>``
    (so they move and checkpoint with it), frozen unless the method says otherwise, and saved/loaded with the
    adapter (``EXTRA_FILE``)."""

    def __init__(self):
        self.modules: dict[str, torch.nn.Module] = {}

    def attach(self, model: torch.nn.Module, adapter: str, module: torch.nn.Module) -> torch.nn.Module:
        if EXTRAS_MODULE not in model._modules:
            model.add_module(EXTRAS_MODULE, torch.nn.ModuleDict())
        device = next(model.parameters()).device
        model.get_submodule(EXTRAS_MODULE)[adapter] = module.to(device)
        self.modules[adapter] = module
        for p in module.parameters():
            p.requires_grad = False
        return module

    def save(self, adapter: str, folder: Path) -> None:
        if adapter in self.modules:
            from safetensors.torch import save_file

            save_file(
                {k: v.detach().cpu().contiguous() for k, v in self.modules[adapter].state_dict().items()},
                str(Path(folder) / EXTRA_FILE),
            )

    def load(self, adapter: str, folder: Path) -> None:
        if adapter in self.modules:
            load_extra(self.modules[adapter], Path(folder) / EXTRA_FILE)


def load_extra(module: torch.nn.Module, path: Path) -> None:
    """Load a method's saved state into ``module``; buffers take the saved shape (a GPM basis grows with
    tasks), parameters must match."""
    state = read_safetensors(path, "the method's saved state")
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        try:
            sub = module.get_submodule(owner) if owner else module
        except AttributeError:
            continue  # not this method's: load_state_dict names it
        if leaf in sub._buffers and sub._buffers[leaf] is not None and sub._buffers[leaf].shape != value.shape:
            sub._buffers[leaf] = value.to(sub._buffers[leaf].device, sub._buffers[leaf].dtype)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise NloraError(f"{path}: does not fit this method's state ({str(e).splitlines()[0]})") from None


def save_peft_adapter(model, state: MethodState, adapter: str, dest: Path) -> None:
    """Write one adapter of a PEFT model (LoRA or prompt) in PEFT format, with the method state kept for it, as
    the folder ``dest``, atomically."""

    def fill(tmp: Path) -> Path:
        model.save_pretrained(str(tmp), selected_adapters=[adapter], safe_serialization=True)
        saved = tmp / adapter if (tmp / adapter).is_dir() else tmp  # PEFT nests adapters other than "default"
        state.save(adapter, saved)
        return saved

    write_folder(dest, fill)


def load_peft_adapter(model, state: MethodState, adapter: str, src: Path):
    """Put the adapter saved by ``save_peft_adapter`` in folder ``src`` back into the model's existing adapter
    ``adapter``, with its method state. Returns the saved tensors and PEFT's load result, for the bank's own check
    that they landed."""
    from peft import set_peft_model_state_dict

    state.load(adapter, src)
    tensors = read_safetensors(Path(src) / "adapter_model.safetensors", "saved adapter")
    return tensors, set_peft_model_state_dict(model, tensors, adapter_name=adapter)
