"""The model's answer logits and the task loss on them, shared by training, label scoring and methods."""

from __future__ import annotations

import inspect
from contextlib import nullcontext

import torch
import torch.nn.functional as F


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def answer_logits(
    model, batch: dict[str, torch.Tensor], seq2seq: bool, keep_logits: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict answer tokens, and those tokens (-100 elsewhere), aligned."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if seq2seq:
        return model(**inputs, labels=labels).logits, labels
    # Answers sit at the end (left padding): keep only the logits that predict them.
    answer_span = int((labels != -100).sum(-1).max()) + 1
    if keep_logits:
        logits = model(**inputs, logits_to_keep=answer_span).logits
    else:
        logits = model(**inputs).logits[:, -answer_span:]
    # (from the width, not -answer_span + 1: a batch with no answer token left, as --compat reference's cut
    # inputs give, has answer_span 1, and labels[:, 0:] would be every column)
    return logits[:, :-1], labels[:, labels.shape[1] - answer_span + 1 :]


def loss_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over answer tokens, and their number (so ranks can weight by a global count)."""
    total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
    return total, int((targets != -100).sum())


def task_loss_sum(model, batch: dict[str, torch.Tensor], seq2seq: bool, keep_logits: bool) -> tuple[torch.Tensor, int]:
    return loss_from_logits(*answer_logits(model, batch, seq2seq, keep_logits))


def task_loss(model, batch: dict[str, torch.Tensor], seq2seq: bool, keep_logits: bool) -> torch.Tensor:
    """Mean cross-entropy over answer tokens."""
    total, count = task_loss_sum(model, batch, seq2seq, keep_logits)
    return total / max(count, 1)
