"""SeqFT: full fine-tuning of every weight through the tasks in turn (no adapters): the classic forgetting
baseline of the continual-learning comparisons. For small models: AdamW keeps fp32 weights, gradients and two
moments, about 16 bytes per parameter. Use a small --lr (1e-5 to 1e-4); the LoRA default 1e-3 is too high."""

from __future__ import annotations

import torch

from ..banks import FullModel
from ..config import TaskSettings
from . import register
from .base import Method

WARN_PARAMS = 1e9


@register
class SeqFT(Method):
    name = "seq-ft"
    summary = "full fine-tuning of all weights through the tasks in turn (small models; use a small --lr)"
    venue = "baseline"
    trains = "all weights (full fine-tuning)"
    stored_per_task = "nothing: one model, constant"
    source = "the O-LoRA comparison (SeqFT)"
    fresh_adapter_per_task = False
    foldable = False
    bank = "full"

    def check(self, model: torch.nn.Module, target_modules: list[str]) -> None:
        n = sum(p.numel() for p in model.parameters())
        if n > WARN_PARAMS:
            from ..console import log

            log(
                f"warning: seq-ft trains all {n / 1e9:.1f} B parameters: about {16 * n / 2**30:.0f} GiB for "
                "weights, gradients and AdamW state, and a full model copy saved after every task"
            )

    def adapter_name(self, task_index: int) -> str:
        return "full"

    def begin_task(self, lora: FullModel, task_index: int, settings: TaskSettings) -> str:
        self.start(lora, self.adapter_name(task_index))
        return lora.current
