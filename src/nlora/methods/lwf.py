"""LwF (Li & Hoiem, 2017), for LoRA: one LoRA trained through the tasks; on each new task's inputs the model
is also distilled towards its own outputs from before the task (a frozen copy of the adapter), which keeps
what the shared adapter computed for earlier tasks.

L = L_task + lambda * T^2 * KL(softmax(z_old / T) || softmax(z / T)) over the answer positions.
Costs one extra forward pass per step (the teacher's); the student's logits are the task loss's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..banks import LoraBank
from ..config import TaskSettings
from ..families import ModelFamily
from . import register
from .base import Method
from .options import coefficient, option

TEACHER = "lwf_teacher"


@register
class LwF(Method):
    name = "lwf"
    summary = "one LoRA through all tasks, distilled towards its pre-task outputs on new inputs (Li & Hoiem, 2017)"
    venue = "2016 ECCV"
    trains = "one LoRA through all tasks"
    stored_per_task = "a frozen teacher copy of the LoRA: constant"
    source = "arXiv 1606.09282"
    fresh_adapter_per_task = False

    @dataclass(frozen=True)
    class Options:
        lam: float = coefficient(1.0, "weight of the distillation term")
        temperature: float = option(2.0, "softmax temperature T of the distillation", limit=(0, None, True, False))

    def begin_task(self, lora: LoraBank, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        self.distil = task_index > 0
        if self.distil:  # the teacher: the adapter as it is now, after the previous task, frozen
            lora.snapshot(name, TEACHER)
        return name

    def batch_penalty(
        self,
        lora: LoraBank,
        settings: TaskSettings,
        batch: dict,
        family: ModelFamily,
        logits: torch.Tensor,
        targets: torch.Tensor,
    ):
        if not self.distil:
            return None
        model = lora.model
        with torch.no_grad(), lora.using(TEACHER):
            teacher, _ = family.answer_logits(model, batch, family.keeps_logits(model))
        mask, t = targets != -100, self.options.temperature
        kl = F.kl_div(
            F.log_softmax(logits[mask].float() / t, -1),
            F.log_softmax(teacher[mask].float() / t, -1),
            log_target=True,
            reduction="batchmean",
        )
        return self.task_options(settings).lam * t * t * kl
