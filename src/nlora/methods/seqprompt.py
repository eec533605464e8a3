"""SeqPrompt: prompt tuning (Lester et al., 2021, on PEFT) trained through the tasks in turn: one soft prompt
of 20 virtual tokens before every input, the model frozen. The backbone of LFPT5 (Qin & Joty, ICLR 2022)
without its generated pseudo-samples; combine with care: prompt tuning wants a large --lr (about 0.3)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from ..banks import PromptBank
from ..config import TaskSettings
from . import register
from .base import Method
from .options import option

# PEFT drops position ids under prompt tuning; with RoPE only relative positions matter, so this is harmless.
warnings.filterwarnings("ignore", message="Position ids are not supported for parameter efficient tuning")


@register
class SeqPrompt(Method):
    name = "seq-prompt"
    summary = "one soft prompt (20 tokens, PEFT prompt tuning) trained through all tasks (LFPT5 without replay)"
    venue = "2021 EMNLP"
    trains = "one soft prompt (20 vectors), model frozen"
    stored_per_task = "nothing: one prompt, constant"
    source = "arXiv 2104.08691; LFPT5 (arXiv 2110.07298) without replay"
    fresh_adapter_per_task = False
    foldable = False
    bank = "prompt"

    @dataclass(frozen=True)
    class Options:
        virtual_tokens: int = option(20, "soft-prompt vectors before every input", limit=(1, None))

    def adapter_name(self, task_index: int) -> str:
        return "soft"

    def start(self, lora: PromptBank, name: str) -> None:
        lora.start(name, self.options.virtual_tokens)

    def begin_task(self, lora: PromptBank, task_index: int, settings: TaskSettings) -> str:
        self.start(lora, self.adapter_name(task_index))
        return lora.current
