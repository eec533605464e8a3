"""GainLoRA (Liang et al., NeurIPS 2025, arXiv 2505.15424), on InfLoRA: every task's LoRA branch is scaled
per example by that task's gate, computed from the input, so no task id is needed and a new task's branch
can be switched off on old tasks' inputs.

Source: liangyanshuo/gainlora ``src/t5_large.py`` (gate, l.1197-1219 and l.1285-1365: the projected gate
update), ``src/cl_trainer_gainlora_inflora.py`` (``get_reg_matrix``: key design; ``get_repsentation``: the gate
GPM bases), ``src/run_t5.py`` l.488-499 (the new gate starts as a copy of the previous one).

- LoRA: as ``inflora`` (A_t designed from the input covariance outside the GPM memory, frozen; B_t trains).
- Gate of task i: e(x) = mean of the frozen input embeddings over the prompt's tokens;
  f_i(e) = SiLU(W2_i SiLU(W1_i e)) (W1: h x d, W2: d x h, no bias, h = 100);
  a_i(x) = |2 sigmoid(4 cos(f_i(e), k_i)) - 1| in [0, 1). Output: W x + sum_{i<=t} a_i(x) s B_i A_i x on every
  adapted layer (the decoder of T5 uses the encoder input's gates, as the code).
- Task t > 1 starts its gate as a copy of gate t-1; its key k_t is the top singular direction of
  (I - M3 M3^T) C3, C3 = covariance of f_t(e) over the task's examples, scaled to the norm of a uniform(-1, 1)
  draw (at t = 1 without the projection), so k_t is orthogonal to the old features f(e_old) in span(M3).
- While task t trains, W1, W2 and k_t move only outside the memory of earlier inputs:
  W1 = W1_0 + (W1' - W1_0)(I - M1 M1^T), W2 likewise with M2, k = k_0 + (I - M3 M3^T)(k' - k_0) (W' the trained
  parameters, W_0 their values at the task's start). Hence W1 e = W1_0 e for e in span(M1), f_t(e_old) =
  f_{t-1}(e_old) when SiLU(W1 e_old) lies in span(M2), and cos(f_t(e_old), k_t) = 0: old inputs keep their
  gates, including a_t(x_old) = 0, as far as the bases hold their inputs.
- After task t, GPM bases (inflora's energy rule, threshold 0.995 on the same schedule) grow over the task's
  e (M1, d), SiLU(W1 e) (M2, h) and f(e) (M3, d), with the trained gate.

Choices where this differs from the code: the constraint is a reparameterisation of the task's update, so it
holds exactly with AdamW (the code projects after each optimizer step, then rescales every row to its
post-step norm, which breaks exactness slightly); e(x) is divided by the number of real tokens (the code
divides by the padded length, which makes a gate depend on the batch it is in); for decoder-only models,
training pools over prompt + answer (the forward sees them together), evaluation over the prompt, and the
statistics (key, bases) over the prompt; the initial W1, W2 are PyTorch's default Linear init (seeded).
Stored per task: the LoRA, its gate (W1, W2, k: 2*d*h + d numbers) and the GPM columns it added for the LoRA
layers and the gate (``method_state.safetensors`` in its adapter folder). No task id, no replay. Not
foldable (each branch is scaled per example). On CL_Benchmark a prompt names its task (``Task:``,
``Dataset:`` lines), so a gate reading the input gets the task id nearly for free there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..banks import LoraBank
from ..config import TaskSettings
from ..errors import NloraError
from . import register
from .base import TaskContext
from .inflora import BasisStore, InfLoRA, complement, gpm_update, model_device, model_family
from .options import option

GATE_HIDDEN = 100  # the T5-large scripts' mlp_hidden_dim


class InputGates:
    """Per-example scales of adapters' LoRA branches, computed from the input once per forward.

    A forward pre-hook on the stack that reads the prompt (T5: the encoder; decoder-only: the decoder at its
    first, cache-free step, so generation keeps the prompt's gates) calls ``compute(embeddings, mask)`` ->
    {adapter: (batch,) scales}; a forward hook on each adapter's ``lora_B`` multiplies its output by them.
    Adapters without a scale run unscaled. Merging for evaluation is switched off."""

    def __init__(self, lora: LoraBank, compute):
        base = lora.base_model
        self.family = model_family(lora)
        self.embed = base.get_input_embeddings()
        body = self.family.prompt_reader(base)
        self.compute = compute
        self.values: dict[str, torch.Tensor] = {}
        self.adapters: set[str] = set()
        body.register_forward_pre_hook(self._pre, with_kwargs=True)
        lora.mergeable = False

    def _pre(self, module, args, kwargs):
        if self.family.later_generation_step(kwargs):
            return  # a generation step after the prompt's: keep the prompt's gates
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            embeds = self.embed(ids)
        mask = kwargs.get("attention_mask")
        mask = torch.ones(embeds.shape[:2], device=embeds.device) if mask is None or mask.dim() != 2 else mask
        self.values = self.compute(embeds.detach().float(), mask.to(embeds.device).float())

    def add(self, lora: LoraBank, adapter: str) -> None:
        if adapter in self.adapters:
            return
        self.adapters.add(adapter)
        for layer in lora.adapted_layers(adapter):
            layer.B.register_forward_hook(self._scale(adapter))

    def _scale(self, adapter: str):
        def hook(module, args, out):
            gate = self.values.get(adapter)
            if gate is None:
                return None
            if gate.shape[0] != out.shape[0]:
                raise NloraError(f"gate of {adapter} has {gate.shape[0]} rows for a batch of {out.shape[0]}")
            return out * gate.to(out.dtype).view(-1, *([1] * (out.dim() - 1)))

        return hook


def masked_mean(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1)
    return (embeds * m).sum(1) / m.sum(1).clamp(min=1)


@torch.no_grad()
def prompt_embeddings(lora: LoraBank, sources: list[list[int]], pool, batch_size: int = 32) -> torch.Tensor:
    """pool(frozen input embeddings, mask) of each prompt (token ids): N x d, fp32."""
    embed = lora.base_model.get_input_embeddings()
    device, out = model_device(lora), []
    for start in range(0, len(sources), batch_size):
        rows = sources[start : start + batch_size]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in rows], device=device)
        out.append(pool(embed(ids).float(), mask))
    return torch.cat(out)


def covariance(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x.T @ x / max(x.shape[0], 1)


class GainGate(torch.nn.Module):
    """a(x) = |2 sigmoid(4 cos(f(e), k)) - 1|, f(e) = SiLU(W2 SiLU(W1 e)). While its task trains, ``constraint``
    holds the starting values and the projections that keep the update outside the memory."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.empty(h, d))
        self.w2 = torch.nn.Parameter(torch.empty(d, h))
        self.key = torch.nn.Parameter(torch.empty(d))
        torch.nn.init.kaiming_uniform_(self.w1, a=math.sqrt(5))
        torch.nn.init.kaiming_uniform_(self.w2, a=math.sqrt(5))
        torch.nn.init.uniform_(self.key, -1, 1)
        self.constraint = None  # not a buffer: not saved, rebuilt by before_training

    def weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.constraint is None:
            return self.w1, self.w2, self.key
        (a1, a2, ak), (p1, p2, p3) = self.constraint
        return a1 + (self.w1 - a1) @ p1, a2 + (self.w2 - a2) @ p2, ak + p3 @ (self.key - ak)

    def hidden(self, e: torch.Tensor) -> torch.Tensor:
        return F.silu(e @ self.weights()[0].T)

    def features(self, e: torch.Tensor) -> torch.Tensor:
        w1, w2, _ = self.weights()
        return F.silu(F.silu(e @ w1.T) @ w2.T)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        key = self.weights()[2]
        cos = F.cosine_similarity(self.features(e), key.unsqueeze(0).expand(e.shape[0], -1), dim=-1)
        return (2 * torch.sigmoid(4 * cos) - 1).abs()

    @torch.no_grad()
    def settle(self) -> None:
        """Write the constrained values into the parameters and drop the constraint (end of its task)."""
        if self.constraint is not None:
            w1, w2, key = (w.detach().clone() for w in self.weights())
            self.constraint = None
            self.w1.copy_(w1)
            self.w2.copy_(w2)
            self.key.copy_(key)


class GainState(torch.nn.Module):
    def __init__(self, lora_dims: list[int], d: int, h: int):
        super().__init__()
        self.bases = BasisStore(lora_dims)
        self.gate = GainGate(d, h)
        self.gate_bases = BasisStore([d, h, d])  # M1 (inputs e), M2 (SiLU(W1 e)), M3 (f(e))


@register
class GainLoRA(InfLoRA):
    name = "gainlora"
    summary = "inflora plus a per-task gate on each branch from the pooled input, updated outside old inputs' span"
    venue = "2025 NeurIPS"
    trains = "B of the new task's LoRA (A designed, frozen) and the new task's gate (2-layer MLP + key)"
    stored_per_task = (
        "one LoRA + one gate (2*d*100 + d) per task, kept separate, + GPM columns (bounded): grows linearly"
    )
    needs_task_id = False
    uses_replay = False
    source = "arXiv 2505.15424; liangyanshuo/gainlora src/t5_large.py, src/cl_trainer_gainlora_inflora.py"
    foldable = False  # branches are scaled per example

    @dataclass(frozen=True)
    class Options(InfLoRA.Options):
        # inflora's threshold without its ``--lambda`` alias: gainlora's knob stays unset (see ``GRIDS``)
        threshold: float = option(
            0.995,
            "GPM energy threshold eps of the LoRA bases (the released scripts' value); same schedule as inflora",
            limit=(0, 1, True, False),
        )
        gate_threshold: float = option(
            0.995,
            "GPM energy threshold of the gates' bases (transthreshold of the released scripts; same schedule)",
            limit=(0, 1, True, False),
        )
        gate_hidden: int = option(GATE_HIDDEN, "hidden width h of each task's gate MLP", limit=(1, None))

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.gate_bases: list[torch.Tensor | None] = [None, None, None]
        self._gates: dict[int, InputGates] = {}

    def make_state(self, lora: LoraBank, name: str) -> torch.nn.Module:
        lora_dims = [b.shape[0] for _, b in super().make_state(lora, name).named_buffers()]
        d = lora.base_model.get_input_embeddings().embedding_dim
        return GainState(lora_dims, d, self.options.gate_hidden)

    def basis_store(self, lora: LoraBank, name: str) -> BasisStore:
        return lora.extras[name].bases

    def start(self, lora: LoraBank, name: str) -> None:
        super().start(lora, name)
        if id(lora) not in self._gates:
            self._gates[id(lora)] = InputGates(lora, lambda embeds, mask: self.gate_values(lora, embeds, mask))
        self._gates[id(lora)].add(lora, name)

    def gate_values(self, lora: LoraBank, embeds: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        e = masked_mean(embeds, mask)
        return {n: lora.extras[n].gate(e) for n in lora.adapters if n in lora.extras}

    def begin_task(self, lora: LoraBank, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        for p in lora.extras[name].gate.parameters():
            p.requires_grad = True
        return name

    def before_training(self, lora: LoraBank, task_index: int, settings: TaskSettings, ctx: TaskContext) -> None:
        super().before_training(lora, task_index, settings, ctx)
        gate: GainGate = lora.extras[lora.current].gate
        with torch.no_grad():
            if task_index > 0:  # the new gate continues the previous one
                previous = lora.extras[self.adapter_name(task_index - 1)].gate
                gate.w1.copy_(previous.w1)
                gate.w2.copy_(previous.w2)
            e = prompt_embeddings(lora, [x.source for x in ctx.examples], masked_mean)
            c3 = covariance(gate.features(e))
            m3 = self.gate_bases[2]
            q = complement(m3, c3.shape[0]).to(c3.device)
            if q.shape[1]:  # else the memory fills the space: the random key stays
                u, _, _ = torch.linalg.svd(q.T @ c3, full_matrices=False)
                norm = gate.key.norm()  # the random draw's norm, as the code keeps it
                gate.key.copy_((q @ u[:, 0]).to(gate.key) * norm)
        if task_index > 0:
            anchors = tuple(w.detach().clone() for w in (gate.w1, gate.w2, gate.key))
            projections = tuple(
                self._projection(i, dim, gate.key.device)
                for i, dim in enumerate((gate.w1.shape[1], gate.w2.shape[1], gate.key.shape[0]))
            )
            gate.constraint = (anchors, projections)

    def _projection(self, i: int, dim: int, device) -> torch.Tensor:
        m = self.gate_bases[i]
        if m is None:
            return torch.eye(dim, device=device)
        m = m.to(device, torch.float32)
        return torch.eye(dim, device=device) - m @ m.T

    def end_task(self, lora: LoraBank, task_index: int, settings: TaskSettings, ctx: TaskContext | None = None) -> None:
        fresh = self._trained == task_index
        state: GainState = lora.extras[lora.current]
        state.gate.settle()
        if fresh and ctx is not None and ctx.examples:
            with torch.no_grad():
                e = prompt_embeddings(lora, [x.source for x in ctx.examples], masked_mean)
                covs = [covariance(e), covariance(state.gate.hidden(e)), covariance(state.gate.features(e))]
            base = self.options.gate_threshold
            eps = base + (1 - base) * task_index / max(self.run.n_tasks, 1)
            for i, c in enumerate(covs):
                state.gate_bases.put(i, gpm_update(c, self.gate_bases[i], eps))
        added = [state.gate_bases.get(i).double() for i in range(3)]  # as saved: a resumed run has the same
        for i, cols in enumerate(added):
            if cols.shape[1]:
                old = self.gate_bases[i]
                cols = cols.to(old.device) if old is not None else cols
                self.gate_bases[i] = cols if old is None else torch.cat([old, cols], 1)[:, : cols.shape[0]]
        super().end_task(lora, task_index, settings, ctx)
