"""route (nlora's own): task-id-free routing of frozen per-task adapters by nearest prototype.

Training is per-task's: each task trains its own LoRA alone, earlier ones frozen and out of its forward pass.
After task t, its prototype is stored: the mean over its training prompts of the frozen base model's mean-pooled
last hidden state (T5: the encoder's output; decoder-only: the last layer's, after the final norm), over the
prompt's tokens only. At evaluation every test prompt is pooled the same way and answered by the adapter of
the nearest prototype (Euclidean distance) among the tasks trained so far; no task id is given. Each task's
routing.json (next to its predict_results.json) counts where its prompts went and the routing accuracy: the
share sent to the adapter the task id would pick (its own; the newest for a task not trained yet).

Why: at small scale most of the protection comes from keeping one frozen adapter per task (per-task, BWT 0
with the task id); routing asks how much of that survives without it. A CL_Benchmark prompt names its task
(``Task:TC``, ``Dataset:agnews``, the task's instruction and options), so on that benchmark the task id is
nearly free to a router: compare its routing accuracy with prompts whose task/dataset lines are removed.

Stored per task: its LoRA and one prototype vector (hidden size; ``method_state.safetensors`` in its adapter
folder). Memory grows by one LoRA + d floats per task; evaluation costs one frozen-base forward per prompt
plus generation with the chosen adapter. No replay. Not foldable: adapters must stay separate to be chosen.
"""

from __future__ import annotations

import torch

from ..banks import LoraBank
from ..config import TaskSettings
from . import register
from .base import Method, TaskContext
from .inflora import model_device, model_family
from .pertask import PerTask

POOL_BATCH = 32


def pool_order(sources: list[list[int]]) -> list[int]:
    """The prompts' indices, shortest first: the order ``pooled_states`` cuts its batches in."""
    return sorted(range(len(sources)), key=lambda i: len(sources[i]))


@torch.no_grad()
def pooled_states(lora: LoraBank, sources: list[list[int]], batch_size: int = POOL_BATCH) -> torch.Tensor:
    """Per prompt (token ids), the frozen base model's last hidden state averaged over its tokens (N x d, fp32).
    Right padding with an attention mask, so pads change nothing (causal attention never looks ahead). Each row
    is its own, so batches are cut from the prompts sorted by length (like lengths pad little) and the rows put
    back in the caller's order."""
    base = lora.base_model
    device = model_device(lora)
    body = model_family(lora).prompt_reader(base)
    was_training = lora.model.training
    lora.model.eval()
    order = pool_order(sources)
    out = []
    try:
        with lora.without_adapters():
            for start in range(0, len(order), batch_size):
                rows = [sources[i] for i in order[start : start + batch_size]]
                width = max(len(r) for r in rows)
                ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
                hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                m = mask.unsqueeze(-1).float()
                out.append((hidden * m).sum(1) / m.sum(1).clamp(min=1))
    finally:
        lora.model.train(was_training)
    if not out:
        return torch.zeros(0)
    pooled = torch.cat(out)
    in_order = torch.empty_like(pooled)
    in_order[torch.tensor(order, device=pooled.device)] = pooled
    return in_order


def hidden_size(lora: LoraBank) -> int:
    return lora.base_model.get_input_embeddings().embedding_dim


class Prototype(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.register_buffer("prototype", torch.zeros(d))


def nearest(queries: torch.Tensor, prototypes: torch.Tensor) -> list[int]:
    """Index of the nearest prototype (Euclidean) for each query row."""
    return torch.cdist(queries.double(), prototypes.double()).argmin(1).tolist()


@register
class Route(Method):
    name = "route"
    fp32_forwards = True  # the prompts' pooled base-model states are taken in fp32 outside autocast
    summary = "per-task LoRAs trained alone; each test prompt answered by the adapter of the nearest task prototype"
    venue = "ours"
    trains = "the new task's LoRA (alone)"
    stored_per_task = "one LoRA + one prototype (hidden size d) per task, kept separate: grows linearly"
    needs_task_id = False
    uses_replay = False
    source = "nlora (src/nlora/methods/route.py)"
    foldable = False  # each adapter must stay separate to be chosen
    routes_by_input = True

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self._trained: int | None = None

    def start(self, lora: LoraBank, name: str) -> None:
        super().start(lora, name)
        if name not in lora.extras:
            lora.attach_extra(name, Prototype(hidden_size(lora)))

    def begin_task(self, lora: LoraBank, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        lora.activate([name])  # trained alone, as per-task
        return name

    def before_training(self, lora: LoraBank, task_index: int, settings: TaskSettings, ctx: TaskContext) -> None:
        self._trained = task_index

    def end_task(self, lora: LoraBank, task_index: int, settings: TaskSettings, ctx: TaskContext | None = None) -> None:
        if self._trained == task_index and ctx is not None and ctx.examples:  # else: reloaded with its adapter
            pooled = pooled_states(lora, [e.source for e in ctx.examples])
            lora.extras[lora.current].prototype.copy_(pooled.mean(0))
        self._trained = None

    def prototypes(self, lora: LoraBank, task_index: int) -> tuple[list[str], torch.Tensor]:
        names = [self.adapter_name(j) for j in range(task_index + 1)]
        return names, torch.stack([lora.extras[n].prototype.float() for n in names])

    def route_examples(self, lora: LoraBank, task_index: int, sources: list[list[int]]) -> list[list[str]]:
        names, protos = self.prototypes(lora, task_index)
        queries = pooled_states(lora, sources)
        return [[names[i]] for i in nearest(queries, protos.to(queries.device))]

    # what the task id would pick (task j: adapter j), against which routing is scored
    eval_routes = PerTask.eval_routes
    eval_adapters = PerTask.eval_adapters
