"""IncLoRA: a fresh LoRA per task, earlier ones frozen, no regulariser (N-LoRA without its penalty)."""

from __future__ import annotations

from . import register
from .base import Method


@register
class IncLoRA(Method):
    name = "inc-lora"
    summary = "fresh LoRA per task, old ones frozen, no regulariser (ablation of n-lora / o-lora)"
