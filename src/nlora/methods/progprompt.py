"""ProgPrompt (Razdaibiedina et al., ICLR 2023), on PEFT prompt tuning: each task learns a new soft prompt
of 10 tokens, placed before the frozen prompts of the earlier tasks, so task k's model reads
[P_k; P_k-1; ...; P_1; input]. Nothing learned earlier changes, and each task is evaluated with its own
prompt stack (the task id is given, as in the paper). Without the paper's residual MLP reparameterisation.
Prompt tuning wants a large --lr (about 0.3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..banks import PromptBank
from ..config import TaskSettings
from . import register
from .base import Method
from .options import option
from .pertask import PerTask


@register
class ProgPrompt(Method):
    name = "progprompt"
    summary = "a new soft prompt per task before the frozen earlier ones; task id routes evaluation (ICLR 2023)"
    venue = "2023 ICLR"
    trains = "a new soft prompt (10 vectors) per task"
    stored_per_task = "10 prompt vectors per task: grows linearly"
    needs_task_id = True
    source = "arXiv 2301.12314"
    foldable = False
    bank = "prompt"

    @dataclass(frozen=True)
    class Options:
        tokens_per_task: int = option(10, "soft-prompt vectors each task adds", limit=(1, None))

    def start(self, lora: PromptBank, name: str) -> None:
        index = int(name.removeprefix("task"))
        lora.start(name, self.options.tokens_per_task * (index + 1))

    def begin_task(self, lora: PromptBank, task_index: int, settings: TaskSettings) -> str:
        name = self.adapter_name(task_index)
        self.start(lora, name)
        prompt, m = lora.prompt_embedding(name), self.options.tokens_per_task
        if task_index > 0:  # rows m.. are the previous task's whole stack, frozen by a zero gradient
            with torch.no_grad():
                prompt[m:].copy_(lora.prompt_embedding(self.adapter_name(task_index - 1)))
            keep = torch.zeros_like(prompt[:, :1])
            keep[:m] = 1.0
            prompt.register_hook(lambda grad: grad * keep)
        return name

    # evaluated like per-task: task j by its own stack j (the newest for tasks not trained yet)
    eval_routes = PerTask.eval_routes
    eval_adapters = PerTask.eval_adapters
