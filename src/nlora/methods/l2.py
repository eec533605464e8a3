"""L2: one LoRA trained through the tasks, pulled towards where it was after the previous task by a plain
squared distance. The classic regularisation baseline of the continual-learning literature (the "L2" row of
Kirkpatrick et al., PNAS 2017, Fig. 2; Hsu et al., 2018): EWC with every parameter weighted equally.

L = L_task + lambda / 2 * sum_i (theta_i - theta*_i)^2, theta* the LoRA parameters after the last task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..banks import Bank
from ..config import TaskSettings
from . import register
from .base import Method, TaskContext
from .options import coefficient


@register
class L2(Method):
    name = "l2"
    summary = "one LoRA through all tasks, squared-distance pull towards the previous task's solution"
    venue = "2017 PNAS (baseline)"
    trains = "one LoRA through all tasks"
    stored_per_task = "an anchor (1 x the LoRA): constant"
    source = "arXiv 1612.00796 (the L2 baseline); arXiv 1810.12488"
    fresh_adapter_per_task = False

    @dataclass(frozen=True)
    class Options:
        lam: float = coefficient(
            1.0,
            "weight of the pull (L = L_task + lambda / 2 * sum (theta - theta*)^2); choose it on validation data",
        )

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.anchor: list[torch.Tensor] | None = None  # None before the first task ends: nothing to keep yet

    def begin_task(self, lora: Bank, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        self.params = lora.trainable_parameters()
        return name

    def penalty(self, lora: Bank, settings: TaskSettings) -> torch.Tensor | None:
        if self.anchor is None:
            return None
        total = sum(((p.float() - a) ** 2).sum() for p, a in zip(self.params, self.anchor))
        return self.task_options(settings).lam / 2 * total

    def end_task(self, lora: Bank, task_index: int, settings: TaskSettings, ctx: TaskContext | None = None) -> None:
        # Also called for a task reloaded on resume, so the anchor is rebuilt from its saved weights.
        self.anchor = [p.detach().float().clone() for p in self.params]
