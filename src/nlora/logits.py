"""The model's answer logits and the task loss on them, shared by training, label scoring and methods."""

from __future__ import annotations

import inspect
from contextlib import nullcontext

import torch
import torch.nn.functional as F


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _logits_to_keep_parameter(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inspect.signature(base.forward).parameters.get("logits_to_keep")


def accepts_logits_to_keep(model) -> bool:
    return _logits_to_keep_parameter(model) is not None


def last_logits(model, n: int, device) -> int | torch.Tensor:
    """``logits_to_keep`` for the last ``n`` positions: their indices counted from the end (soft prompts may
    be prepended inside the model), where the model takes an index tensor (transformers documents
    ``int | torch.Tensor``), else ``n``. Indexing hands the LM head a
    contiguous input; the int's slice hands it a strided view, on which ``F.linear`` falls back to a batched
    matmul over a broadcast weight: 5-13x slower on a CPU for SmolLM2's 49,152-row head (docs/benchmarks.md).
    The logits are the same up to float rounding."""
    annotation = getattr(_logits_to_keep_parameter(model), "annotation", None)
    if "Tensor" in str(annotation):
        return torch.arange(-n, 0, device=device)
    return n


def answer_logits(
    model, batch: dict[str, torch.Tensor], family, keep_logits: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict answer tokens, and those tokens (-100 elsewhere), aligned
    (``families.ModelFamily.answer_logits``; ``family`` may be an older caller's seq2seq flag)."""
    from .families import as_family  # imported here: the families build on this module

    return as_family(family).answer_logits(model, batch, keep_logits)


def loss_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over answer tokens, and their number (so ranks can weight by a global count)."""
    total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
    return total, int((targets != -100).sum())


def task_loss_sum(model, batch: dict[str, torch.Tensor], family, keep_logits: bool) -> tuple[torch.Tensor, int]:
    return loss_from_logits(*answer_logits(model, batch, family, keep_logits))


def task_loss(model, batch: dict[str, torch.Tensor], family, keep_logits: bool) -> torch.Tensor:
    """Mean cross-entropy over answer tokens."""
    total, count = task_loss_sum(model, batch, family, keep_logits)
    return total / max(count, 1)
