"""Dropout whose mask costs a third of torch's on the CPU, for the LoRA branches (``banks/lora.py``).

A LoRA layer drops entries of its input x (the layer's whole input, not its rank-r side) before A, so each of
a training step's LoRA branches draws one Bernoulli variable per input entry: for SmolLM2 at batch 8 x ~150
tokens, 60 branches of 691k entries a step, and one more set per live earlier adapter (GainLoRA's gates keep
every task's adapter live). On the CPU torch's dropout fills a float mask with ``bernoulli_`` at about 5 ns an
entry, divides it by 1 - p and multiplies: 4.2 ms of a forward and backward per branch, twice the q_proj
matmul it sits beside (``benchmarks/dropout.py``). Here the mask comes from 32 random bits an entry, taken two
at a time from torch's 64-bit draws, and x is multiplied by it as uint8, then scaled in place: the same
distribution (each entry kept with probability 1 - p, to within 2^-32), drawn from torch's default generator,
so seeding and the step checkpoints' RNG states cover it as before. It is a different draw from the same
distribution than ``nn.Dropout``'s, so a run's numbers differ from the older code's as another seed's would.

Other devices keep ``nn.Dropout``: their fused kernels already cost a fraction of the matmuls.
"""

from __future__ import annotations

import math

import torch


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """A bool CPU tensor of ``shape``, each entry True (kept) with probability 1 - p, independently: entry i
    is kept when its 32 random bits, read as a signed integer, are at least round(p * 2^32) - 2^31."""
    threshold = round(p * 2**32) - 2**31
    if threshold >= 2**31:  # p within 2^-33 of 1: nothing kept (and the bound would not fit an int32)
        return torch.zeros(shape, dtype=torch.bool)
    count = math.prod(shape)
    # random_ over the full int64 range fills every one of the 64 bits; viewed as int32 it gives two entries
    words = torch.empty((count + 1) // 2, dtype=torch.int64).random_(-(2**63), None)
    return (words.view(torch.int32)[:count] >= threshold).view(shape)


class _MaskedScale(torch.autograd.Function):
    """y = x * keep / (1 - p), and the same map on the way back; saves only the bool mask, as torch's own
    dropout does. The mask is read as uint8 (0 or 1), which the CPU multiplies in at 2x a bool's speed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return (x * keep.view(torch.uint8)).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return (grad * keep.view(torch.uint8)).mul_(ctx.scale), None


def _compiling() -> bool:
    """Inside torch.compile (``--compile``), where the compiler fuses torch's own dropout into its kernels and
    an autograd.Function with its own draws would only break the graph. (torch < 2.3 has no such check.)"""
    check = getattr(torch.compiler, "is_compiling", None)
    return bool(check is not None and check())


class CpuDropout(torch.nn.Dropout):
    """``nn.Dropout`` (same ``p``, same module type for whoever checks it) with ``keep_mask`` on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0 or x.device.type != "cpu" or self.inplace or _compiling():
            return super().forward(x)
        return _MaskedScale.apply(x, self.p)


def swap_dropout(modules: torch.nn.ModuleDict, name: str) -> None:
    """Replace ``modules[name]`` by a ``CpuDropout`` of the same rate if it is a plain ``nn.Dropout``."""
    old = modules[name]
    if type(old) is torch.nn.Dropout and old.p > 0.0:
        modules[name] = CpuDropout(old.p)
        modules[name].train(old.training)
