"""N-LoRA (Yang et al., COLING 2025): L1 sparsity on each new task's update, so tasks rarely collide.

Paper form (default):     lambda * sum_layers || s * B A ||_1   (element-wise, over the out x in update)
Reference-code form:      lambda * sum_layers sum |A B|          (A: r x in, B: out x r -> r x r; needs in == out)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from ..adapters import LayerFactors, LoraBank
from ..config import TaskSettings
from ..errors import NloraError
from . import register
from .base import Method
from .options import coefficient, option


def l1_of_updates(factors: list[LayerFactors]) -> torch.Tensor:
    """sum_layers ||s * B @ A||_1, batched per (shape, scaling) group instead of a loop over layers."""
    groups: dict[tuple, list[LayerFactors]] = defaultdict(list)
    for f in factors:
        groups[(tuple(f.B.shape), tuple(f.A.shape), f.scaling)].append(f)
    total = factors[0].A.new_zeros(())
    for (_, _, scaling), fs in groups.items():
        B = torch.stack([f.B for f in fs])  # L x out x r
        A = torch.stack([f.A for f in fs])  # L x r x in
        total = total + abs(scaling) * torch.bmm(B, A).abs().sum()
    return total


def l1_of_factor_product(factors: list[LayerFactors]) -> torch.Tensor:
    """sum_layers sum |A @ B|: the r x r product the reference release penalises (no scaling)."""
    return sum((f.A @ f.B).abs().sum() for f in factors)


def check_reference_form(factors: list[LayerFactors]) -> None:
    for f in factors:
        _require_square(f.module, f.B.shape[0], f.A.shape[1])


def _require_square(module: str, out_f: int, in_f: int) -> None:
    if out_f != in_f:
        raise NloraError(
            f"--nlora-form reference needs square updates (in == out), but {module} is {out_f} x {in_f} "
            "(grouped-query attention?); use --nlora-form paper"
        )


@register
class NLoRA(Method):
    name = "n-lora"
    summary = "fresh LoRA per task, old ones frozen, L1 penalty on the new update B·A (Yang et al., 2025)"
    venue = "2025 COLING"
    trains = "a fresh LoRA per task"
    stored_per_task = "one LoRA per task, folded into the base weights: constant"
    source = "arXiv 2410.10179; PKU-YuanGroup/N-LoRA"

    @dataclass(frozen=True)
    class Options:
        lam: float = coefficient(0.4, "weight of the L1 penalty on the new task's update")
        form: str = option(
            "paper",
            "paper: lambda * sum ||s B A||_1 over each out x in update; reference: lambda * sum |A B|, the r x r "
            "product the public release penalises (square layers only)",
            alias="nlora_form",
            choices=("paper", "reference"),
        )

    def check(self, model: torch.nn.Module, target_modules: list[str]) -> None:
        if self.options.form != "reference":
            return
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in target_modules:
                _require_square(name, mod.out_features, mod.in_features)

    def begin_task(self, lora: LoraBank, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        self._factors = lora.factors(name)  # same Parameter objects every step: collect once per task
        if self.options.form == "reference":
            check_reference_form(self._factors)
        return name

    def penalty(self, lora: LoraBank, settings: TaskSettings) -> torch.Tensor | None:
        fn = l1_of_factor_product if self.options.form == "reference" else l1_of_updates
        return self.task_options(settings).lam * fn(self._factors)
