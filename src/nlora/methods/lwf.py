"""LwF (Li & Hoiem, 2017), for LoRA: one LoRA trained through the tasks; on each new task's inputs the model
is also distilled towards its own outputs from before the task (a frozen copy of the adapter), which keeps
what the shared adapter computed for earlier tasks.

L = L_task + lambda * T^2 * KL(softmax(z_old / T) || softmax(z / T)) over the answer positions.
Costs one extra forward pass per step (the teacher's); the student's logits are the task loss's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..adapters import ContinualLoRA
from ..config import TaskSettings
from ..logits import accepts_logits_to_keep, answer_logits
from . import register
from .base import Method

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
    default_lambda = 1.0
    temperature = 2.0

    def begin_task(self, lora: ContinualLoRA, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        self.distil = task_index > 0
        if self.distil:  # the teacher: the adapter as it is now, after the previous task, frozen
            if TEACHER not in lora.model.peft_config:
                lora.model.add_adapter(TEACHER, lora.lora_config)
            with torch.no_grad():
                for _, layer in lora.lora_layers():
                    if name in layer.lora_A:
                        layer.lora_A[TEACHER].weight.copy_(layer.lora_A[name].weight)
                        layer.lora_B[TEACHER].weight.copy_(layer.lora_B[name].weight)
            lora.activate([name])
        return name

    def batch_penalty(
        self,
        lora: ContinualLoRA,
        settings: TaskSettings,
        batch: dict,
        seq2seq: bool,
        logits: torch.Tensor,
        targets: torch.Tensor,
    ):
        if not self.distil:
            return None
        model, name = lora.model, lora.current
        was_training = model.training
        with torch.no_grad():
            model.base_model.set_adapter([TEACHER])
            model.eval()
            teacher, _ = answer_logits(model, batch, seq2seq, accepts_logits_to_keep(model))
        lora.activate([name])
        model.train(was_training)
        mask, t = targets != -100, self.temperature
        kl = F.kl_div(
            F.log_softmax(logits[mask].float() / t, -1),
            F.log_softmax(teacher[mask].float() / t, -1),
            log_target=True,
            reduction="batchmean",
        )
        return self.lam(settings) * t * t * kl
