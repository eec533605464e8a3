"""EWC (Kirkpatrick et al., PNAS 2017) on the LoRA parameters: one LoRA trained through the tasks, with a
diagonal Fisher penalty pulling it towards where it was after each earlier task.

L = L_task + lambda / 2 * sum_i F_i (theta_i - theta*_i)^2, F summed over earlier tasks, theta* the
parameters after the last task. F is the empirical Fisher: squared gradients of the task loss over up to
``FISHER_BATCHES`` training batches, averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters import LoraBank
from ..config import TaskSettings
from . import register
from .base import Method, TaskContext
from .options import coefficient, option

FISHER_BATCHES = 32


def diagonal_fisher(params: list[torch.nn.Parameter], ctx: TaskContext, batches: int = FISHER_BATCHES) -> list:
    fisher = [torch.zeros_like(p) for p in params]
    chunks = [ctx.examples[s : s + ctx.batch_size] for s in range(0, len(ctx.examples), ctx.batch_size)][:batches]
    for chunk in chunks:
        grads = torch.autograd.grad(ctx.loss(chunk), params, allow_unused=True)
        for f, g in zip(fisher, grads):
            if g is not None:
                f += g.detach().float() ** 2 / len(chunks)
    return fisher


@register
class EWC(Method):
    name = "ewc"
    summary = "one LoRA through all tasks, diagonal-Fisher pull towards earlier solutions (Kirkpatrick et al., 2017)"
    venue = "2017 PNAS"
    trains = "one LoRA through all tasks"
    stored_per_task = "a Fisher and an anchor (2 x the LoRA): constant"
    source = "arXiv 1612.00796"
    fresh_adapter_per_task = False

    @dataclass(frozen=True)
    class Options:
        lam: float = coefficient(
            1e4,
            "weight of the Fisher penalty (L = L_task + lambda / 2 * sum F (theta - theta*)^2)",
        )
        fisher_batches: int = option(
            FISHER_BATCHES, "training batches whose squared gradients make up each task's Fisher", limit=(1, None)
        )

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.fisher: list[torch.Tensor] | None = None
        self.anchor: list[torch.Tensor] | None = None

    def begin_task(self, lora: LoraBank, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        self.params = lora.trainable_parameters()
        return name

    def penalty(self, lora: LoraBank, settings: TaskSettings) -> torch.Tensor | None:
        if self.fisher is None:
            return None
        total = sum((f * (p.float() - a) ** 2).sum() for f, p, a in zip(self.fisher, self.params, self.anchor))
        return self.task_options(settings).lam / 2 * total

    def end_task(self, lora: LoraBank, task_index: int, settings: TaskSettings, ctx: TaskContext | None = None) -> None:
        was_training = lora.model.training
        lora.model.eval()  # Fisher of the model as it will be used, without dropout noise
        new = diagonal_fisher(self.params, ctx, self.options.fisher_batches)
        lora.model.train(was_training)
        self.fisher = new if self.fisher is None else [f + n for f, n in zip(self.fisher, new)]
        self.anchor = [p.detach().float().clone() for p in self.params]
