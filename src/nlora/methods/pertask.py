"""Per-task: a separate LoRA per task, trained alone and used only for its own task at evaluation (the task
id is given). The upper bound without transfer: no forgetting by construction (BWT 0)."""

from __future__ import annotations

from ..adapters import LoraBank
from ..config import TaskSettings
from . import register
from .base import Method


@register
class PerTask(Method):
    name = "per-task"
    summary = "a separate LoRA per task, each task evaluated with its own adapter (task id given; upper bound)"
    venue = "upper bound"
    trains = "a separate LoRA per task, alone"
    stored_per_task = "one LoRA per task, kept separate: grows linearly"
    needs_task_id = True
    source = "the O-LoRA comparison (PerTaskFT)"
    foldable = False  # every adapter must stay separate to be routed to

    def begin_task(self, lora: LoraBank, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        lora.activate([name])  # trained alone: earlier adapters are not in its forward pass
        return name

    def eval_routes(self, task_index: int, evaluated: list[int]) -> list[tuple[list[str] | None, list[int]]]:
        # Tasks not trained yet (--full-matrix) are answered by the newest adapter.
        return [([self.adapter_name(min(j, task_index))], [j]) for j in evaluated]

    def eval_adapters(self, task_index: int) -> list[int]:
        return list(range(task_index + 1))  # all of them, each routed to its own task
