"""MIGU (Du et al., "Unlocking Continual Learning Abilities in Language Models", arXiv 2406.17245, Findings of
EMNLP 2024): per optimizer step, the rows of each linear layer whose outputs were small on the step's batch
get no gradient, so each task updates mostly the output units it uses.

Rule, as released (wenyudu/MIGU @3f3b9f0, `src/accelerate_local.py::compute_importance_mask` and
`backward_full_tuning`; the forward hook in `src/uie_trainer_ft.py` l.442-462, reset after the step l.596-597):
for every ``nn.Linear`` with output ``y`` (tokens x d_out), ``m_j = sum over the step's tokens of |y_j|``
(accumulated over the micro-batches of the step and reduced over ranks), ``tau = quantile(m, q)`` with
``q = 0.7`` (``ini_threshold``), and ``W.grad[j, :] *= 1[m_j >= tau]`` after backward, before the optimizer
step. Bias gradients are not masked; AdamW's momentum may still move masked rows (the release does the same).
The first task trains unmasked (``is_first_task``). Padded positions count, as in the release (their outputs
are part of ``y``).

- ``migu``: full fine-tuning (seq-ft's model), as released: every ``nn.Linear`` of the model, ``lm_head``
  included (with tied embeddings, as T5's, the mask then covers the shared embedding's rows: the release on
  T5-large does the same).
- ``migu-lora``: one LoRA trained through the tasks (seq-lora) with the rule applied to the adapter's own
  linear maps, ``lora_A`` (rows = the r inner units, by ``|A x|``) and ``lora_B`` (rows = output units, by
  ``|B A x|``). A documented adaptation: the released LoRA path applies no mask at all
  (``backward_lora_tuning`` acts only for methods ``cluster_activate`` / ``random_update`` while the scripts
  pass ``migu``); its unreached code masks ``lora_A.default`` / ``lora_B.default`` by their own outputs, which
  is what this follows. The paper's LoRA rule was not read.

``--lambda`` is the quantile q (default 0.7: about the top 30% of rows train).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..banks import Bank, FullModel, LoraBank
from ..config import TaskSettings
from ..errors import NloraError
from . import register
from .base import Method, TaskContext
from .options import option
from .seqft import SeqFT


class OutputMagnitudeMask:
    """Forward hooks that sum |output| per output unit of some Linear layers over a step, and the row mask of
    their weight gradients that this sum selects."""

    def __init__(self, modules: list[torch.nn.Linear]):
        self.modules = modules
        self.sums: list[torch.Tensor | None] = [None] * len(modules)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i: int):
        def accumulate(module, args, output):
            with torch.no_grad():
                s = output.detach().abs().float().reshape(-1, output.shape[-1]).sum(0)
                self.sums[i] = s if self.sums[i] is None else self.sums[i] + s

        return accumulate

    def masks(self, quantile: float, dist=None) -> list[torch.Tensor | None]:
        """Per module, 1 for output rows whose summed |y| reaches the ``quantile`` of its layer, else 0."""
        out = []
        reduce = dist is not None and dist.active
        for module, s in zip(self.modules, self.sums):
            if s is None and reduce:  # this rank ran no pass: it still takes part in every all-reduce
                s = torch.zeros(module.weight.shape[0], device=module.weight.device)
            if s is None:  # not used in this step's forward passes
                out.append(None)
                continue
            if reduce:
                s = dist.sum_(s.clone())  # a sum over ranks ranks rows as the release's average does
            out.append((s >= torch.quantile(s, quantile)).to(s.dtype))
        return out

    def apply(self, quantile: float, dist=None) -> None:
        """Mask the weight gradients' rows, then start the next step's sums."""
        for module, mask in zip(self.modules, self.masks(quantile, dist)):
            grad = module.weight.grad
            if mask is not None and grad is not None:
                grad.mul_(mask.to(grad.dtype).unsqueeze(-1))
        self.sums = [None] * len(self.modules)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class _MIGUMixin:
    """The masking shared by both variants: hooks attached for tasks after the first, removed once a task is
    trained (evaluation passes must not count)."""

    @dataclass(frozen=True)
    class Options:
        quantile: float = option(
            0.7,
            "q: rows whose summed |output| is below the q-quantile of their layer get no gradient",
            alias="lambda",
            per_task=True,
            limit=(0, 1, False, True),
        )

    mask: OutputMagnitudeMask | None = None

    def masked_modules(self, lora: Bank, name: str) -> list[torch.nn.Linear]:
        raise NotImplementedError

    def attach(self, lora: Bank, task_index: int, settings: TaskSettings, name: str) -> None:
        q = self.task_options(settings).quantile
        if not 0.0 <= q < 1.0:
            raise NloraError(
                f"{self.name}: option quantile (--lambda) is the quantile of output magnitudes below which rows "
                f"get no gradient, in [0, 1), not {q:g}"
            )
        self.detach()
        self.quantile = q
        if task_index > 0:  # the release trains the first task unmasked
            self.mask = OutputMagnitudeMask(self.masked_modules(lora, name))

    def detach(self) -> None:
        if self.mask is not None:
            self.mask.remove()
            self.mask = None

    def before_step(self, lora: Bank, dist) -> None:
        if self.mask is not None:
            self.mask.apply(self.quantile, dist)

    def end_task(self, lora: Bank, task_index: int, settings: TaskSettings, ctx: TaskContext | None = None) -> None:
        self.detach()


@register
class MIGU(_MIGUMixin, SeqFT):
    name = "migu"
    summary = (
        "full fine-tuning; per step, rows of every Linear with summed |output| below the 70% quantile "
        "get no gradient (Du et al., 2024)"
    )
    venue = "2024 EMNLP Findings"
    trains = "all weights (full fine-tuning), per step ~30% of each Linear's rows"
    stored_per_task = "nothing: one model, constant memory"
    source = "arXiv 2406.17245; wenyudu/MIGU"

    def masked_modules(self, lora: FullModel, name: str) -> list[torch.nn.Linear]:
        return [m for m in lora.model.modules() if isinstance(m, torch.nn.Linear)]

    def begin_task(self, lora: Bank, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        self.attach(lora, task_index, settings, name)
        return name


@register
class MIGULoRA(_MIGUMixin, Method):
    name = "migu-lora"
    summary = (
        "one LoRA through all tasks; per step, rows of lora_A / lora_B with summed |output| below the 70% "
        "quantile get no gradient (MIGU adapted to LoRA)"
    )
    fresh_adapter_per_task = False
    venue = "2024 EMNLP Findings (LoRA: ours)"
    trains = "one LoRA, per step ~30% of the rows of each A and B"
    stored_per_task = "nothing: one LoRA, constant memory"
    source = "arXiv 2406.17245; wenyudu/MIGU (its LoRA path applies no mask)"

    def masked_modules(self, lora: LoraBank, name: str) -> list[torch.nn.Linear]:
        return [m for layer in lora.adapted_layers(name) for m in (layer.A, layer.B)]

    def begin_task(self, lora: LoraBank, task_index: int, settings: TaskSettings) -> str:
        if lora.sharded:  # each rank would hold only some rows of a gradient, the mask needs them all
            raise NloraError(
                "migu-lora masks rows of whole LoRA gradients; it does not run with sharded weights "
                "(FSDP, ZeRO-3): use a DDP config"
            )
        name = super().begin_task(lora, task_index, settings)
        self.attach(lora, task_index, settings, name)
        return name
