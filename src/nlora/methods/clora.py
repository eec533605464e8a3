"""CLoRA (Lu et al., "Controlled Low-Rank Adaptation with Subspace Regularization for Continued Training on
Large Language Models", arXiv 2410.16801, ACL 2025): a LoRA whose factors are kept away from fixed random
subspaces, so the update leaves part of the model's input and output spaces alone.

Regulariser, as in the release (sutakori/CLoRA @802cda8, `clora.py::CLoraWrapper.compute_reg_loss`): for
every adapted Linear, fixed matrices ``P_A`` (in x k) and ``P_B`` (out x k) with orthonormal columns
(``nn.init.orthogonal_`` there, a QR of a Gaussian here: the same distribution), never trained, and

    L = L_task + lambda * sum_layers [ 0.5 * ||A P_A||_F^2 + 0.5 * ||B^T P_B||_F^2 ]

(A: r x in = ``lora_A.weight``, B: out x r = ``lora_B.weight``). It pushes span(P_A) towards the null space of
the update B A and the update's outputs out of span(P_B). Default lambda = 1 (the release's default).

Choices where the source is silent (its continual protocol was not found):
- Protocol: a fresh LoRA per task, earlier ones frozen and folded into the base weights (inc-lora's
  protocol), the regulariser on the new adapter only. The release's ``save_pretrained`` merges the LoRA into
  the base by default, so continued training on a next task starts from merged weights with a new LoRA, which
  is this protocol; and it makes clora comparable with inc-lora / n-lora / o-lora, which differ from it only in
  the extra loss.
- ``P_A``, ``P_B`` are drawn once per layer (from ``--seed``) and kept for every task: every task's update
  then shares the protected subspace, so the sum of updates leaves it alone too (re-drawn per task, the sum
  would not protect anything).
- k: the release takes k as an argument (its README example: 512, on a 4096-wide model). Here
  ``k = max(1, d // 8)`` per side (``d`` = in for ``P_A``, out for ``P_B``): that example's ratio, so the
  regulariser does not turn into plain weight decay (k >= d) on small models.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from ..adapters import LayerFactors, LoraBank
from ..config import TaskSettings
from . import register
from .base import Method
from .options import coefficient, option

K_FRACTION = 8  # k = d / 8: the release README's k = 512 on 4096-wide LLaMA-2-7B layers


def subspace_dim(d: int, divisor: int = K_FRACTION) -> int:
    return max(1, d // divisor)


def orthonormal_columns(d: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """A d x k matrix with orthonormal columns, uniformly distributed (QR of a Gaussian, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(d, k, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r)).unsqueeze(0)).float()


def subspace_penalty(factors: list[LayerFactors], projections: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """sum over layers of 0.5 * ||A P_A||_F^2 + 0.5 * ||B^T P_B||_F^2, in fp32."""
    total = factors[0].A.new_zeros((), dtype=torch.float32)
    for f, (p_a, p_b) in zip(factors, projections):
        total = total + 0.5 * (f.A.float() @ p_a).pow(2).sum() + 0.5 * (f.B.float().T @ p_b).pow(2).sum()
    return total


@register
class CLoRA(Method):
    name = "clora"
    summary = (
        "fresh LoRA per task, old ones folded; new A, B kept off fixed random orthonormal subspaces (Lu et al., 2025)"
    )

    @dataclass(frozen=True)
    class Options:
        lam: float = coefficient(1.0, "weight of the subspace regulariser")
        subspace_divisor: int = option(
            K_FRACTION,
            "k = max(1, d // this): width of the protected subspaces P_A (d = in) and P_B (d = out)",
            limit=(1, None),
        )

    venue = "2025 ACL"
    trains = "a fresh LoRA per task"
    stored_per_task = "one LoRA per task, folded into the base weights: constant"
    source = "arXiv 2410.16801; sutakori/CLoRA clora.py"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.projections: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def projection(self, f: LayerFactors) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's fixed (P_A, P_B), drawn on first use from the seed and the layer's name alone, so a
        resumed run or another task sees the same ones."""
        if f.module not in self.projections:
            g = torch.Generator().manual_seed(self.run.seed * 1_000_003 + _stable_hash(f.module))
            out_f, in_f, divisor = f.B.shape[0], f.A.shape[1], self.options.subspace_divisor
            self.projections[f.module] = (
                orthonormal_columns(in_f, subspace_dim(in_f, divisor), g),
                orthonormal_columns(out_f, subspace_dim(out_f, divisor), g),
            )
        return self.projections[f.module]

    def begin_task(self, lora: LoraBank, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        self._factors = lora.factors(name)
        self._projections = [tuple(p.to(f.A.device) for p in self.projection(f)) for f in self._factors]
        return name

    def penalty(self, lora: LoraBank, settings: TaskSettings) -> torch.Tensor | None:
        return self.task_options(settings).lam * subspace_penalty(self._factors, self._projections)


def _stable_hash(text: str) -> int:
    """A hash that does not change between processes (Python's str hash is salted)."""
    return zlib.crc32(text.encode())
