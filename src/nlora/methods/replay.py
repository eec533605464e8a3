"""Replay: one LoRA trained through the tasks, each task's data mixed with a kept sample of every earlier
task's training data (experience replay, e.g. de Masson d'Autume et al., 2019; the paper's "Replay")."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from . import register
from .base import Method
from .options import option


@register
class Replay(Method):
    name = "replay"
    summary = "one LoRA through all tasks; mixes in a kept fraction (2%) of each earlier task's training data"
    venue = "2019 NeurIPS"
    trains = "one LoRA through all tasks, on task data + memory"
    stored_per_task = "a share `fraction` (default 2%) of the task's training examples: grows linearly"
    uses_replay = True
    source = "arXiv 1906.01076 (episodic memory)"
    fresh_adapter_per_task = False

    @dataclass(frozen=True)
    class Options:
        fraction: float = option(
            0.02,
            "share of each earlier task's training examples kept in memory (at least one example)",
            alias="lambda",
            limit=(0, 1),
        )

    def memory(self, task_index: int, split: list) -> list:
        """The examples kept from one earlier task: a fixed seeded sample, at least one example."""
        k = min(len(split), max(1, math.ceil(self.options.fraction * len(split))))
        rng = random.Random(self.run.seed * 7919 + task_index)
        return [split[i] for i in sorted(rng.sample(range(len(split)), k))]

    def train_examples(self, task_index: int, train_splits: list[list]) -> list:
        replayed = [e for j in range(task_index) for e in self.memory(j, train_splits[j])]
        return list(train_splits[task_index]) + replayed
