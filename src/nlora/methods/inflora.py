"""InfLoRA (Liang & Li, CVPR 2024, arXiv 2404.00228): a fresh LoRA per task whose down-projection A is
*designed* before training and then frozen; only the up-projection B trains.

Source: liangyanshuo/InfLoRA ``methods/inflora.py`` (``_train``: A from the SVD of the input covariance,
``update_DualGPM``: the GPM memory, the paper's Eq. 5/8/9 as the code comments cite them) and the T5 port in
liangyanshuo/gainlora ``src/cl_trainer_gainlora_inflora.py::get_reg_matrix`` / ``get_repsentation``.

For every adapted layer with input x (d_in):
- before task t trains, C_t = mean over the task's (non-padding) tokens of x x^T, under the model as it is
  (earlier adapters in; the new B is zero so it changes nothing);
- C_hat = (I - M M^T) C_t with M the layer's GPM basis (d_in x k) of earlier tasks' inputs (C_hat = C_t at
  t = 1), and A_t = U[:, :r]^T / sqrt(3) with U the left singular vectors of C_hat: the new branch reads only
  input directions outside what earlier tasks used, so B_t's training interferes little with them;
- after task t, C_t is measured again with the trained model and M grows by GPM's energy rule with threshold
  eps_t = eps + (1 - eps) * t / T (t = 0, 1, ... the task's position, T the run's number of tasks, eps 0.995):
  first task, the top directions of C holding eps_t of sum S^2; later, the top directions of (I - MM^T) C
  added until the captured share of the total sum S^2 reaches eps_t (S: singular values of the covariance,
  squared as the code does).
Forward: W x + s * sum_j B_j A_j x (all adapters, weight 1), so finished adapters may be folded.

This is the paper's variant (A from the covariance). The standalone "InfLoRA" T5 baseline of the later
gainlora repository (``src/cl_trainer_inflora.py::get_reg_matrix``) differs: it keeps PEFT's random
(kaiming) A at task 1 and, later, sets A <- A_rand (I - M M^T) with rows rescaled to norm 1/sqrt(3); its A is
never designed from C_t (only projected away from the memory).

Choices where the sources are silent or differ: padded positions are left out of C (the code includes
them); each layer's covariance uses that layer's own input (the T5 code feeds cross-attention's v the
decoder states); U comes from the SVD restricted to the complement of M (identical to the SVD of
(I - MM^T) C whenever that has rank >= r, and exactly orthogonal to M otherwise); if fewer than r directions
are left outside M, the remaining rows of A are zero; T is the run's task count (the T5 code hard-codes 15);
a pass reads the task's rows shortest first (C is order-free; like lengths pad less); only the GPM "remove"
mode (the ViT code's DualGPM switch to storing the complement is a storage choice).
Stored per task: its LoRA (A designed, B trained) and the GPM columns it added (``method_state.safetensors``
of its adapter, recorded for continuing runs; evaluation needs only the adapters). Memory: one LoRA per
task plus at most d_in x d_in per layer in total for the bases. No task id, no replay.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch

from ..banks import LoraBank
from ..config import TaskSettings
from ..families import ModelFamily, family_of
from ..logits import last_logits
from . import register
from .base import Method, TaskContext
from .options import option

MAX_BATCHES = 1000  # the T5 code's cap on batches per covariance


def model_family(lora: LoraBank) -> ModelFamily:
    return family_of(lora.base_model)


def model_device(lora: LoraBank) -> torch.device:
    return next(lora.model.parameters()).device


def probe_order(examples: list) -> list:
    """The rows a covariance pass reads (the first ``MAX_BATCHES`` batches' worth, as the source caps it),
    shortest first: prompt plus answer, then prompt (an encoder-decoder pads the two apart)."""
    return sorted(examples, key=lambda e: (len(e.source) + len(e.target), len(e.source)))


def forward_batches(lora: LoraBank, examples: list, batch_size: int):
    """Forward-only passes over encoded training examples; yields (model inputs, encoder/prompt mask,
    decoder mask or None) so hooks can drop padded positions. Model in eval mode (no dropout), no grad.

    The hooks read layer inputs only, so where the model takes ``logits_to_keep`` (decoder-only) its head runs
    on one position: a full-vocabulary head over every token was a sixth of a SmolLM2 probe's time. The
    layers' inputs, hence the covariances, are unchanged.

    Batches are cut from the rows sorted by length (``probe_order``): a covariance is a sum over real tokens, so
    the rows' order is free, and like lengths pad far less (CL_Benchmark's training rows in file order pad 1.3x
    to 1.6x their real tokens in batches of 8, sorted 1.01x)."""
    family, device = model_family(lora), model_device(lora)
    head = {"logits_to_keep": last_logits(lora.model, 1, device)} if family.keeps_logits(lora.model) else {}
    rows = probe_order(examples[: MAX_BATCHES * batch_size])
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in family.collate_train(rows[start : start + batch_size], 0).items()}
        inputs, prompt_mask, decoder_mask = family.probe_inputs(batch)
        yield {**inputs, **head}, prompt_mask, decoder_mask


def _reads_encoder(module_name: str) -> bool:
    """Whether a T5 layer's input is encoder states: encoder layers, and cross-attention's k and v."""
    return ".decoder." not in module_name or module_name.endswith(("EncDecAttention.k", "EncDecAttention.v"))


class InputProducts:
    """x^T x (fp64) over the kept rows of a layer input, computed once per input tensor within a batch.

    Adapted layers often read the very same tensor: a LLaMA block's q_proj and v_proj its normed hidden states,
    every T5 decoder block's cross-attention v the encoder's output. Such layers share one product, so a pass
    does that fp64 matmul once per distinct input instead of once per layer: each layer's sum gets the same
    tensor it computed alone, so the covariances are bit-identical. Products are kept only while their input
    is alive (a weak reference): a freed tensor's id may be reused by a later layer's input, which must miss."""

    def __init__(self):
        self._live: dict[tuple[int, str], tuple[weakref.ref, torch.Tensor, int]] = {}

    def clear(self) -> None:
        self._live.clear()

    def cached(self, x: torch.Tensor, role: str) -> tuple[torch.Tensor, int] | None:
        hit = self._live.get((id(x), role))
        return (hit[1], hit[2]) if hit is not None and hit[0]() is x else None

    def of(self, x: torch.Tensor, mask: torch.Tensor | None, role: str) -> tuple[torch.Tensor, int]:
        """(sum over kept rows of x x^T in fp64, the number of rows); ``role`` names which mask applies."""
        hit = self.cached(x, role)
        if hit is not None:
            return hit
        rows = x[mask.bool()] if mask is not None and mask.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
        rows = rows.double()
        product = rows.T @ rows
        self._live = {key: kept for key, kept in self._live.items() if kept[0]() is not None}
        self._live[(id(x), role)] = (weakref.ref(x), product, rows.shape[0])
        return product, rows.shape[0]


@torch.no_grad()
def layer_covariances(lora: LoraBank, adapter: str, examples: list, batch_size: int) -> dict[str, torch.Tensor]:
    """Per layer holding ``adapter``: C = mean over non-padding tokens of x x^T of the layer's input (fp64)."""
    layers = {view.name: view.layer for view in lora.adapted_layers(adapter)}
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(layers, 0)
    masks: dict[str, torch.Tensor | None] = {}
    products = InputProducts()

    def hook_for(name):
        def hook(module, args):
            role = "enc" if masks["dec"] is None or _reads_encoder(name) else "dec"
            product, n_rows = products.of(args[0], masks[role], role)
            sums[name] = sums.get(name, 0) + product
            counts[name] += n_rows

        return hook

    handles = [layer.register_forward_pre_hook(hook_for(n)) for n, layer in layers.items()]
    was_training = lora.model.training
    lora.model.eval()
    try:
        for inputs, enc_mask, dec_mask in forward_batches(lora, examples, batch_size):
            masks["enc"], masks["dec"] = enc_mask, dec_mask
            products.clear()
            lora.model(**inputs)
    finally:
        for h in handles:
            h.remove()
        lora.model.train(was_training)
    return {n: sums[n] / max(counts[n], 1) for n in layers if n in sums}


def complement(basis: torch.Tensor | None, d: int) -> torch.Tensor:
    """An orthonormal basis (d x (d - k)) of the orthogonal complement of the columns of ``basis``."""
    if basis is None or basis.shape[1] == 0:
        return torch.eye(d, dtype=torch.float64, device=basis.device if basis is not None else None)
    u, _, _ = torch.linalg.svd(basis.double(), full_matrices=True)
    return u[:, basis.shape[1] :]


def design_down(cov: torch.Tensor, basis: torch.Tensor | None, r: int) -> torch.Tensor:
    """A (r x d): the top-r left singular vectors of (I - M M^T) C, taken inside the complement of M, / sqrt(3).
    Rows beyond the complement's dimension are zero."""
    d = cov.shape[0]
    q = complement(basis.to(cov.device) if basis is not None else None, d).to(cov.device)
    u, _, _ = torch.linalg.svd(q.T @ cov.double(), full_matrices=False)
    top = q @ u[:, :r]  # d x min(r, d - k)
    out = torch.zeros(r, d, dtype=torch.float64, device=cov.device)
    out[: top.shape[1]] = top.T
    return out / math.sqrt(3)


def gpm_update(cov: torch.Tensor, basis: torch.Tensor | None, eps: float) -> torch.Tensor:
    """The columns GPM adds to ``basis`` for a layer with input covariance ``cov`` (d x k_new, maybe k_new = 0)."""
    cov = cov.double()
    d = cov.shape[0]
    u, s, _ = torch.linalg.svd(cov, full_matrices=False)
    energy = s.pow(2)
    total = energy.sum()
    if total <= 0:
        return cov.new_zeros(d, 0)
    if basis is None or basis.shape[1] == 0:  # Eq. 5: the directions holding eps of the energy (at least one)
        k = int((torch.cumsum(energy, 0) / total < eps).sum())
        return u[:, : max(k, 1)]
    basis = basis.to(cov)
    u, s, _ = torch.linalg.svd(cov - basis @ (basis.T @ cov), full_matrices=False)  # Eq. 8
    ratio = s.pow(2) / total
    captured = float(1 - ratio.sum())  # Eq. 9: what the memory already explains
    usable = int((s > s[0] * 1e-10).sum()) if s[0] > 0 else 0  # zero directions are not new inputs
    k = 0
    while k < usable and captured < eps:
        captured += float(ratio[k])
        k += 1
    return u[:, : min(k, d - basis.shape[1])]


class BasisStore(torch.nn.Module):
    """The GPM columns one task added, one buffer per adapted layer (``basis_<i>``, d_in x k_i)."""

    def __init__(self, dims: list[int]):
        super().__init__()
        for i, d in enumerate(dims):
            self.register_buffer(f"basis_{i}", torch.zeros(d, 0))

    def get(self, i: int) -> torch.Tensor:
        return getattr(self, f"basis_{i}")

    def put(self, i: int, value: torch.Tensor) -> None:
        setattr(self, f"basis_{i}", value.to(self.get(i).device, torch.float32).contiguous())


@register
class InfLoRA(Method):
    name = "inflora"
    fp32_forwards = True  # the input covariances are taken in fp32 outside autocast
    summary = "fresh LoRA per task, A designed from input covariance outside earlier tasks' GPM subspace, only B trains"
    venue = "2024 CVPR"
    trains = "B of the new task's LoRA (A designed, frozen)"
    stored_per_task = (
        "one LoRA per task (foldable) + the GPM columns it adds (<= d_in x d_in per layer in all): grows linearly"
    )
    needs_task_id = False
    uses_replay = False
    source = "arXiv 2404.00228; liangyanshuo/InfLoRA methods/inflora.py (_train, update_DualGPM)"

    @dataclass(frozen=True)
    class Options:
        threshold: float = option(
            0.995,
            "GPM energy threshold eps (the released scripts' value); task t's is eps + (1 - eps) * t / tasks",
            alias="lambda",  # its one knob: how much of old tasks' input space the memory keeps
            limit=(0, 1, True, False),
        )

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.bases: dict[str, torch.Tensor] = {}  # layer -> M (d_in x k), all tasks so far
        self._trained: int | None = None  # the task before_training ran for (unset: its state was reloaded)

    def layer_names(self, lora: LoraBank, adapter: str) -> list[str]:
        return [view.name for view in lora.adapted_layers(adapter)]

    def start(self, lora: LoraBank, name: str) -> None:
        super().start(lora, name)
        if name not in lora.extras:
            lora.attach_extra(name, self.make_state(lora, name))
        lora.freeze_A(name)

    def make_state(self, lora: LoraBank, name: str) -> torch.nn.Module:
        """The module saved with adapter ``name`` (``method_state.safetensors``)."""
        return BasisStore([view.A.in_features for view in lora.adapted_layers(name)])

    def basis_store(self, lora: LoraBank, name: str) -> BasisStore:
        return lora.extras[name]

    def begin_task(self, lora: LoraBank, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        lora.freeze_A(name)  # folding re-starts the adapter, which marks A trainable again
        return name

    def before_training(self, lora: LoraBank, task_index: int, settings: TaskSettings, ctx: TaskContext) -> None:
        self._trained = task_index
        name = lora.current
        covs = layer_covariances(lora, name, ctx.examples, ctx.batch_size)
        with torch.no_grad():
            for view in lora.adapted_layers(name):
                if view.name in covs:
                    weight = view.A.weight
                    weight.copy_(design_down(covs[view.name], self.bases.get(view.name), weight.shape[0]))

    def threshold(self, task_index: int) -> float:
        eps = self.options.threshold
        return eps + (1 - eps) * task_index / max(self.run.n_tasks, 1)

    def end_task(self, lora: LoraBank, task_index: int, settings: TaskSettings, ctx: TaskContext | None = None) -> None:
        name = lora.current
        store = self.basis_store(lora, name)
        names = self.layer_names(lora, name)
        if self._trained == task_index:  # else reloaded from a finished run: its saved columns are the update
            covs = layer_covariances(lora, name, ctx.examples, ctx.batch_size) if ctx and ctx.examples else {}
            for i, n in enumerate(names):
                if n in covs:
                    store.put(i, gpm_update(covs[n], self.bases.get(n), self.threshold(task_index)))
        # the memory grows by what is saved (fp32), so a resumed run continues from the same bases
        added = {n: store.get(i).double() for i, n in enumerate(names)}
        for n, cols in added.items():
            if cols.shape[1]:
                old = self.bases.get(n)
                cols = cols.to(old.device if old is not None else cols.device)
                self.bases[n] = cols if old is None else torch.cat([old, cols], 1)[:, : cols.shape[0]]
        self._trained = None
