"""SLAO, "Merge before Forget" (Qiao & Mahdavi, arXiv 2512.23017, ICLR 2026): one LoRA through the tasks;
each task starts from the previous one's fine-tuned factors with A re-orthonormalised, and after the task
the new A replaces the old while B is merged as a running average with weight 1/sqrt(i).

SECONDARY SOURCES ONLY: no official code was found and the paper body was not read. This follows the
description that a review (themoonlight.io), the OpenReview reviews and a third-party implementation quoting
the paper (``backpropagate/slao.py``) agree on (see METHODS_SOURCES.md, section 7); it is unverified
against the paper. In PEFT terms (A = ``lora_A.weight``, r x in; B = ``lora_B.weight``, out x r), task i:

- i = 1: ordinary LoRA training from PEFT's initialisation (the sources do not say; B = 0, A random).
- i > 1, initialisation: ``B_i(0) = B_ft,i-1`` (the previous task's fine-tuned B, not the merged one);
  ``Q R = QR(A_ft,i-1^T)`` (thin, Q: in x r), ``A_i(0) = Q^T`` (orthonormal rows spanning A_ft,i-1's row
  space), signs flipped so that diag(R) > 0 as the third-party code does.
- after training: ``A_merge,i = A_ft,i`` and ``B_merge,i = B_merge,i-1 + (B_ft,i - B_merge,i-1) / sqrt(i)``
  (``B_merge,1 = B_ft,1``). The model after task i, evaluated and saved, is ``W + s B_merge,i A_merge,i``.

Choice made here: the saved adapter holds the merged factors (what is evaluated). ``B_ft,i``, needed to start
task i+1, is recomputed from the merged ones, ``B_merge,i-1 + sqrt(i) (B_merge,i - B_merge,i-1)`` (equal to
``B_ft,i`` up to rounding), both in a run and when a run resumes from saved adapters, so a resumed run
replays the uninterrupted one exactly.
"""

from __future__ import annotations

import math

import torch

from ..adapters import LoraBank
from ..config import TaskSettings
from . import register
from .base import Method, TaskContext


def orthonormal_rows_like(a: torch.Tensor) -> torch.Tensor:
    """Q^T from the thin QR of a^T (a: r x in), with diag(R) > 0: orthonormal rows spanning a's rows."""
    q, r = torch.linalg.qr(a.detach().double().T)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return (q * signs.unsqueeze(0)).T.to(a.dtype)


def merge_b(b_merged_prev: torch.Tensor, b_finetuned: torch.Tensor, i: int) -> torch.Tensor:
    """B_merge,i = B_merge,i-1 + (B_ft,i - B_merge,i-1) / sqrt(i), i counted from 1."""
    return b_merged_prev + (b_finetuned - b_merged_prev) / math.sqrt(i)


def finetuned_b(b_merged_prev: torch.Tensor, b_merged: torch.Tensor, i: int) -> torch.Tensor:
    """B_ft,i recovered from two merged states (the inverse of ``merge_b``, up to rounding)."""
    return b_merged_prev + (b_merged - b_merged_prev) * math.sqrt(i)


@register
class SLAO(Method):
    name = "slao"
    summary = (
        "one LoRA; each task starts from QR-orthonormalised A and the last B, after it A replaced and B "
        "averaged with weight 1/sqrt(i) (ICLR 2026; secondary sources)"
    )
    fresh_adapter_per_task = False
    venue = "2026 ICLR"
    trains = "one LoRA, re-initialised per task"
    stored_per_task = "nothing: one LoRA, constant memory"
    source = "arXiv 2512.23017 (secondary sources only, no code)"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.merged: list[torch.Tensor] | None = None  # B_merge,i per layer after the last finished task
        self.next_init: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (A_i(0), B_i(0)) per layer
        self.steps = 0

    def begin_task(self, lora: LoraBank, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        if task_index > 0 and self.next_init is not None:
            with torch.no_grad():
                for f, (a0, b0) in zip(lora.factors(name), self.next_init):
                    f.A.copy_(a0)
                    f.B.copy_(b0)
        self.steps = 0
        return name

    def before_step(self, lora: LoraBank, dist) -> None:
        self.steps += 1  # tells end_task that the adapter holds freshly fine-tuned factors

    def end_task(self, lora: LoraBank, task_index: int, settings: TaskSettings, ctx: TaskContext | None = None) -> None:
        i = task_index + 1
        factors = lora.factors(lora.current)
        prev = self.merged or [torch.zeros_like(f.B) for f in factors]
        with torch.no_grad():
            if self.steps > 0:  # trained just now: merge B. Otherwise a resumed run reloaded the merged adapter.
                for f, b_prev in zip(factors, prev):
                    f.B.copy_(merge_b(b_prev, f.B, i))
            self.next_init = [
                (orthonormal_rows_like(f.A), finetuned_b(b_prev, f.B.detach(), i)) for f, b_prev in zip(factors, prev)
            ]
            self.merged = [f.B.detach().clone() for f in factors]
        self.steps = 0
