"""The training loop for one task: task loss + the method's penalty, AdamW at a constant rate."""

from __future__ import annotations

import inspect
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .adapters import ContinualLoRA
from .batching import Encoded, batch_order, collate_train
from .config import TaskSettings
from .errors import NloraError
from .methods.base import Method


@dataclass
class TrainStats:
    steps: int
    examples: int
    final_loss: float
    mean_loss: float
    mean_penalty: float
    seconds: float


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def task_loss(model, batch: dict[str, torch.Tensor], seq2seq: bool, keep_logits: bool) -> torch.Tensor:
    """Mean cross-entropy over answer tokens."""
    if seq2seq:
        return model(**batch).loss
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    # Answers sit at the end (left padding): keep only the logits that predict them.
    answer_span = int((labels != -100).sum(-1).max()) + 1
    if keep_logits:
        logits = model(**inputs, logits_to_keep=answer_span).logits
    else:
        logits = model(**inputs).logits[:, -answer_span:]
    targets = labels[:, -answer_span + 1:]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def train_task(lora: ContinualLoRA, method: Method, data: list[Encoded], settings: TaskSettings, *,
               pad_id: int, seq2seq: bool, device: torch.device, amp_dtype: torch.dtype | None, seed: int,
               desc: str = "train") -> TrainStats:
    model = lora.model
    model.train()
    params = lora.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    keep_logits = not seq2seq and _accepts_logits_to_keep(model)
    lengths = [len(e.source) + len(e.target) for e in data]

    per_epoch = math.ceil(len(data) / settings.batch_size)
    total_micro = math.ceil(settings.epochs * per_epoch)
    schedule = []
    for epoch in range(math.ceil(settings.epochs)):
        schedule += batch_order(lengths, settings.batch_size, seed * 1000 + epoch)
    schedule = schedule[:total_micro]
    total_steps = math.ceil(total_micro / settings.grad_accum)

    start, losses, penalties = time.perf_counter(), [], []
    bar = tqdm(total=total_steps, desc=desc, unit="step", dynamic_ncols=True, leave=False)
    optimizer.zero_grad(set_to_none=True)
    for micro, indices in enumerate(schedule):
        batch = {k: v.to(device) for k, v in collate_train([data[i] for i in indices], pad_id, seq2seq).items()}
        with autocast(device, amp_dtype):
            loss = task_loss(model, batch, seq2seq, keep_logits)
        extra = method.penalty(lora, settings)  # fp32: a sum over millions of |dW| entries would lose bits in bf16
        total = loss + extra if extra is not None else loss
        step = micro // settings.grad_accum + 1
        if not torch.isfinite(total):
            bar.close()
            raise NloraError(f"non-finite loss ({float(total)}) at step {step} of task {settings.name}; "
                             "lower --lr or --lambda")
        (total / settings.grad_accum).backward()
        losses.append(loss.item())
        penalties.append(extra.item() if extra is not None else 0.0)
        if (micro + 1) % settings.grad_accum == 0 or micro + 1 == len(schedule):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", pen=f"{penalties[-1]:.3g}")
    bar.close()
    tail = losses[-max(1, per_epoch // 10):]
    return TrainStats(steps=total_steps, examples=sum(len(b) for b in schedule),
                      final_loss=sum(tail) / len(tail), mean_loss=sum(losses) / len(losses),
                      mean_penalty=sum(penalties) / len(penalties), seconds=time.perf_counter() - start)
