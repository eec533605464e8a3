"""MTL: one LoRA trained once on the union of all tasks' training data, evaluated on every task at the end.
The upper bound of the paper's comparison: no sequence, so nothing to forget (BWT is undefined)."""

from __future__ import annotations

from . import register
from .base import Method


@register
class MultiTask(Method):
    name = "mtl"
    summary = "one LoRA on all tasks' data at once, evaluated once at the end (upper bound; last task's lr/epochs)"
    venue = "upper bound"
    trains = "one LoRA on all tasks' data at once"
    stored_per_task = "nothing (not sequential: all data at once)"
    source = "the N-LoRA / O-LoRA comparisons (MTL)"
    fresh_adapter_per_task = False

    def train_examples(self, task_index: int, train_splits: list[list]) -> list:
        if task_index < len(train_splits) - 1:
            return []  # everything is learnt together at the last position, with that task's settings
        return [e for split in train_splits for e in split]

    def evaluate_after(self, task_index: int, n_tasks: int) -> bool:
        return task_index == n_tasks - 1
