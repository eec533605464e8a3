"""O-LoRA (Wang et al., EMNLP 2023 Findings): keep each new task's A orthogonal to earlier tasks' A.

L = L_task + lambda1 * sum_layers sum |A_old A_t^T| + lambda2 * sum ||P||_F over the current A and B.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters import LayerFactors, LoraBank
from ..config import TaskSettings
from . import register
from .base import Method
from .options import coefficient


def stack_old(old: list[list[LayerFactors]]) -> list[torch.Tensor]:
    """Per layer, the earlier tasks' A matrices stacked: [A_1; ...; A_{t-1}] ((t-1) r x in), detached."""
    return [torch.cat([adapter[i].A.detach() for adapter in old], dim=0) for i in range(len(old[0]))] if old else []


def orthogonality_penalty(
    current: list[LayerFactors], old: list[list[LayerFactors]], stacked: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """sum over layers of sum |[A_1; ...; A_{t-1}] A_t^T| (element-wise abs of the stacked product).

    ``stacked``: ``stack_old(old)`` computed once per task, so a step does one product per layer."""
    stacked = stack_old(old) if stacked is None else stacked
    total = current[0].A.new_zeros(())
    for olds, cur in zip(stacked, current):
        total = total + (olds @ cur.A.T).abs().sum()
    return total


def l2_penalty(current: list[LayerFactors]) -> torch.Tensor:
    """sum of Frobenius norms (not squared) of the current A and B matrices."""
    return sum(torch.linalg.norm(f.A) + torch.linalg.norm(f.B) for f in current)


@register
class OLoRA(Method):
    name = "o-lora"
    summary = "fresh LoRA per task, old ones frozen, new A kept orthogonal to old A's (Wang et al., 2023)"
    venue = "2023 EMNLP Findings"
    trains = "a fresh LoRA per task"
    stored_per_task = "one LoRA per task, folded; old A's kept for the penalty: grows (r x in per layer)"
    source = "arXiv 2310.14152; cmnfriend/O-LoRA"

    @dataclass(frozen=True)
    class Options:
        lam1: float = coefficient(0.5, "lambda1: weight of sum |A_old A_t^T|, the orthogonality penalty")
        lam2: float = coefficient(0.0, "lambda2: weight of the Frobenius norms of the new A and B", key="lambda2")

    def begin_task(self, lora: LoraBank, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        self._current = lora.factors(name)
        self._old = [lora.factors(a) for a in lora.adapters[:-1]]
        self._stacked = stack_old(self._old)  # constants for the whole task: stacked once, not every step
        return name

    def penalty(self, lora: LoraBank, settings: TaskSettings) -> torch.Tensor | None:
        options = self.task_options(settings)
        total = options.lam1 * orthogonality_penalty(self._current, self._old, self._stacked)
        lam2 = options.lam2
        if lam2:
            total = total + lam2 * l2_penalty(self._current)
        return total
