"""SeqLoRA: one LoRA trained on every task in turn, no regulariser (the forgetting baseline)."""

from __future__ import annotations

from . import register
from .base import Method


@register
class SeqLoRA(Method):
    name = "seq-lora"
    summary = "one LoRA trained through all tasks in turn, no regulariser (lower bound)"
    venue = "baseline"
    trains = "one LoRA through all tasks"
    stored_per_task = "nothing: one LoRA, constant"
    source = "the N-LoRA / O-LoRA comparisons (SeqLoRA)"
    fresh_adapter_per_task = False
