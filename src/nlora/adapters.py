"""The names ``nlora.adapters`` has always exported; the banks themselves live in ``nlora.banks``."""

from __future__ import annotations

from .banks import EXTRA_FILE, AdaptedLayer, LayerFactors, LoraBank, load_extra

ContinualLoRA = LoraBank  # the LoRA bank's earlier name

__all__ = ["EXTRA_FILE", "AdaptedLayer", "ContinualLoRA", "LayerFactors", "LoraBank", "load_extra"]
