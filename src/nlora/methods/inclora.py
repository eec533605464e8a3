"""IncLoRA: a fresh LoRA per task, earlier ones frozen, no regulariser (N-LoRA without its penalty)."""

from __future__ import annotations

from . import register
from .base import Method


@register
class IncLoRA(Method):
    name = "inc-lora"
    summary = "fresh LoRA per task, old ones frozen, no regulariser (ablation of n-lora / o-lora)"
    venue = "baseline"
    trains = "a fresh LoRA per task"
    stored_per_task = "one LoRA per task, folded into the base weights: constant"
    source = "the N-LoRA / O-LoRA comparisons (IncLoRA)"
