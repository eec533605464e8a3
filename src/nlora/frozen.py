"""Frozen linear weights stored once in the autocast dtype, instead of cast on every call.

Under autocast, ``F.linear`` casts its fp32 weight to bf16 on every forward. For a weight that trains, autocast
caches that copy for the step; for a frozen one (``requires_grad`` False: the base model under LoRA or a soft
prompt) it casts again on every call, reading the fp32 weight and writing a bf16 copy each time. Storing such a
weight in bf16 once removes that work and halves its memory. The results do not change: autocast's cast and
``Tensor.to`` round the same way, so the layer computes with the same bf16 values (tests/test_frozen_weights.py
checks a whole run, predictions and adapters, bit for bit).

Only the model's own plain ``nn.Linear`` layers whose every parameter is frozen are cast, and of those not:
- a LoRA layer's base layer: folding and merging add the adapters' B @ A into it, which needs fp32;
- earlier adapters' frozen factors and the methods' own modules: methods read them as fp32 matrices;
- a weight shared with another module (an LM head tied to the input embeddings: embeddings are not autocast);
- anything under sharding (FSDP/ZeRO keep one flat dtype per parameter group).
Methods that run forwards of their own outside autocast (InfLoRA's input statistics, route's pooled states)
declare ``Method.fp32_forwards``; with them nothing is cast, since an fp32 input meets a bf16 weight there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft.tuners.tuners_utils import BaseTunerLayer  # every adapter layer of PEFT derives from it

from .banks.files import EXTRAS_MODULE


@dataclass(frozen=True)
class FrozenCast:
    layers: int = 0  # linear layers whose weights are now stored in the autocast dtype
    saved_bytes: int = 0  # memory saved by that

    def describe(self, dtype: torch.dtype) -> str:
        name = str(dtype).removeprefix("torch.")
        return f"{self.layers} frozen linear layers stored in {name} ({self.saved_bytes / 2**20:.0f} MiB saved)"


def castable_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The model's own plain, wholly frozen, unshared fp32 ``nn.Linear`` layers, by name. Not cast: anything
    inside a PEFT adapter layer (the base layer adapters fold into, and the frozen factors of earlier adapters,
    which methods read as fp32 matrices) and the methods' own modules (``cl_extras``: gates, queries, keys)."""
    inside = set()
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) or name.split(".")[-1] == EXTRAS_MODULE:
            inside.update(id(m) for m in module.modules())
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    found = {}
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or id(module) in inside:
            continue
        params = list(module.parameters(recurse=False))
        if all(not p.requires_grad and p.dtype == torch.float32 and uses[id(p)] == 1 for p in params):
            found[name] = module
    return found


def cast_frozen_linears(model: torch.nn.Module, dtype: torch.dtype) -> FrozenCast:
    """Store the weights (and biases) of ``castable_linears(model)`` in ``dtype``, in place."""
    layers = list(castable_linears(model).values())
    saved = sum(p.numel() * (p.element_size() - dtype.itemsize) for m in layers for p in m.parameters(recurse=False))
    for module in layers:
        module.to(dtype)
    return FrozenCast(len(layers), saved)


def frozen_cast_applies(amp_dtype: torch.dtype | None, method, sharded: bool) -> bool:
    """Whether a run's frozen linear weights are stored in its autocast dtype: under autocast, with a method
    whose forwards all run under it and whose base model stays frozen, and not under sharding."""
    return amp_dtype is not None and not sharded and method.bank != "full" and not method.fp32_forwards
