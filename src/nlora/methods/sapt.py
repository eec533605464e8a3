"""SAPT-SALS (Zhao et al., ACL 2024), its shared attentive learning & selection part: a LoRA per task, a key
per task and one shared query network; every input mixes all tasks' LoRA branches with softmax weights
computed from the input, so no task id is needed.

Source: circle-hit/SAPT ``src/t5_prompt.py`` (``trans_input``: Linear(d, 100), Linear(100, d), SiLU,
LayerNorm, no biases; ``cal_attention``: max-pooled input embeddings, scores k_i . g(x) / sqrt(d), softmax over
tasks; the new key drawn uniform(-1, 1)) and ``src/run_t5.py`` (earlier LoRAs and keys loaded frozen).

- Output of every adapted layer: W x + sum_{i<=t} w_i(x) s B_i A_i x, with
  w(x) = softmax_i(k_i . g(maxpool_tokens emb(x)) / sqrt(d)) over the tasks trained so far (w = 1 at task 1).
- Task t trains its LoRA (A and B), its key k_t and the shared query network g; earlier LoRAs and keys are
  frozen. g is stored per task as it was after that task (a snapshot; the model after task t uses g_t), and
  task t starts from g_{t-1}.

Not included: SAPT's attentive reflection module (ARM), which keeps old tasks' selection from drifting by
replaying *generated pseudo-samples* of each old task through the attention (a KL term towards their recorded
weights). It needs a per-task generator model and a generation pipeline; without it nothing stops g and the
new key from pulling old tasks' inputs towards the newest branch, so expect more forgetting than the paper
reports; ``sapt-arm`` (below) adds ARM's loss with 2% kept real examples instead. Choices where the source
is silent or where we differ: max pooling over the prompt's real tokens
(the code pools over padded positions too); for decoder-only models training pools over prompt + answer,
evaluation over the prompt; the first task is mixed too (one key: weight 1), where the LLaMA scripts run it
with ``--run_single``. Stored per task: its LoRA, its key (d) and the query network snapshot (2*100*d + 2*d);
``method_state.safetensors`` in its adapter folder. No task id, no replay. Not foldable (branches are
weighted per example). On CL_Benchmark a prompt names its task (``Task:``, ``Dataset:`` lines), so the
selection reads the task id nearly for free there.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..banks import LoraBank
from ..config import TaskSettings
from . import register
from .base import Method, TaskContext
from .gainlora import InputGates, prompt_embeddings
from .options import coefficient, option

QUERY_HIDDEN = 100  # trans_input's bottleneck in the source


def masked_max(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over the real tokens of each row (padded positions excluded)."""
    return embeds.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).amax(1)


class SaptState(torch.nn.Module):
    """A task's key and the shared query network as it was after that task."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.key = torch.nn.Parameter(torch.empty(d).uniform_(-1, 1))
        self.query = torch.nn.Sequential(
            torch.nn.Linear(d, h, bias=False), torch.nn.Linear(h, d, bias=False), torch.nn.SiLU(), torch.nn.LayerNorm(d)
        )


def mixture_weights(keys: torch.Tensor, query: torch.nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """softmax over tasks of k_i . g(x) / sqrt(d): (batch x tasks), rows sum to one."""
    scores = query(pooled) @ keys.T / math.sqrt(keys.shape[1])
    return torch.softmax(scores, dim=-1)


@register
class SaptSals(Method):
    name = "sapt-sals"
    summary = "LoRA + key per task, shared query net; softmax mixture of all tasks' branches from the input"
    venue = "2024 ACL"
    trains = "the new task's LoRA, its key and the shared query network"
    stored_per_task = "one LoRA + a key (d) + a query-net snapshot (~200*d) per task, kept separate: grows linearly"
    needs_task_id = False
    uses_replay = False
    source = "arXiv 2401.08295; circle-hit/SAPT src/t5_prompt.py (trans_input, cal_attention), src/run_t5.py"
    foldable = False  # branches are weighted per example

    @dataclass(frozen=True)
    class Options:
        query_hidden: int = option(QUERY_HIDDEN, "bottleneck width of the shared query network", limit=(1, None))

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self._gates: dict[int, InputGates] = {}

    def start(self, lora: LoraBank, name: str) -> None:
        super().start(lora, name)
        if name not in lora.extras:
            d = lora.base_model.get_input_embeddings().embedding_dim
            lora.attach_extra(name, self.make_state(d))
        if id(lora) not in self._gates:
            self._gates[id(lora)] = InputGates(lora, lambda embeds, mask: self.gate_values(lora, embeds, mask))
        self._gates[id(lora)].add(lora, name)

    def make_state(self, d: int) -> torch.nn.Module:
        return SaptState(d, self.options.query_hidden)

    def tasks_in(self, lora: LoraBank) -> list[str]:
        return [n for n in lora.adapters if n in lora.extras]

    def gate_values(self, lora: LoraBank, embeds: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        names = self.tasks_in(lora)
        keys = torch.stack([lora.extras[n].key for n in names])
        weights = mixture_weights(keys, lora.extras[names[-1]].query, masked_max(embeds, mask))
        return {n: weights[:, i] for i, n in enumerate(names)}

    def begin_task(self, lora: LoraBank, task_index: int, settings: TaskSettings) -> str:
        name = super().begin_task(lora, task_index, settings)
        for p in lora.extras[name].parameters():
            p.requires_grad = True
        return name

    def before_training(self, lora: LoraBank, task_index: int, settings: TaskSettings, ctx: TaskContext) -> None:
        if task_index > 0:  # the shared query network continues from where the previous task left it
            previous = lora.extras[self.adapter_name(task_index - 1)].query
            lora.extras[lora.current].query.load_state_dict(copy.deepcopy(previous.state_dict()))


class SaptReplayState(SaptState):
    """SaptState plus what the attention replay keeps of the task: the pooled embeddings of its kept examples
    (k x d) and its recorded mixture weights (over the tasks up to it)."""

    def __init__(self, d: int, h: int):
        super().__init__(d, h)
        self.register_buffer("memory", torch.zeros(0, d))
        self.register_buffer("label", torch.zeros(0))


def replay_kl(
    keys: torch.Tensor, query: torch.nn.Module, memories: list[torch.Tensor], labels: list[torch.Tensor]
) -> torch.Tensor:
    """sum over old tasks j of KL(label_j padded with zeros || mixture weights of j's kept inputs), each the
    mean over j's kept inputs."""
    total = keys.new_zeros(())
    for memory, label in zip(memories, labels):
        if memory.shape[0] == 0:
            continue
        log_w = torch.log_softmax(query(memory) @ keys.T / math.sqrt(keys.shape[1]), dim=-1)
        target = torch.zeros(keys.shape[0], device=keys.device)
        target[: label.shape[0]] = label.to(keys.device)
        total = total + F.kl_div(log_w, target.expand_as(log_w), reduction="batchmean")
    return total


@register
class SaptReplay(SaptSals):
    """sapt-sals plus SAPT's attentive reflection loss (ARM) on kept *real* examples instead of generated
    pseudo-samples (source: circle-hit/SAPT ``src/t5_prompt.py::memory_replay``, ``src/run_t5.py`` l.570-610).

    After task j: 2% of its training prompts (at least one, seeded) are kept as their max-pooled frozen input
    embeddings (all the attention module reads, so the same as keeping the prompts), and label_j = its mean
    mixture weights over its training prompts as its own training left them (the code records them on the dev
    set). Every step of a later task t adds lambda * sum_{j<t} KL([label_j, 0, ..., 0] || w(x)), the KL averaged
    over j's kept inputs (``KLDivLoss(batchmean)`` as the code), lambda = --lambda, default 0.1 (the Long T5
    scripts' kl_ratio). It trains the query network and the new key to keep old inputs' weights where they were.
    Everything else as sapt-sals (see its module text: LoRA per task, key per task, shared query network,
    softmax mixture, no task id; CL_Benchmark prompts name their task, so the selection gets the task id nearly
    free there). Stored per task: as sapt-sals + k x d pooled embeddings + its label. Replay: yes (2%).
    """

    name = "sapt-arm"
    summary = "sapt-sals + its attention replay (ARM) on 2% kept real examples instead of generated pseudo-samples"
    venue = "2024 ACL (replay of real examples: ours)"
    trains = "the new task's LoRA, its key and the shared query network (+ a KL on kept examples' weights)"
    stored_per_task = "as sapt-sals + pooled embeddings of 2% of its examples (d each) + its weights: grows linearly"
    uses_replay = True
    source = "arXiv 2401.08295; circle-hit/SAPT src/t5_prompt.py (cal_attention, memory_replay)"

    @dataclass(frozen=True)
    class Options(SaptSals.Options):
        lam: float = coefficient(0.1, "weight of the attention-replay KL (kl_ratio of the Long T5 scripts)")
        keep_fraction: float = option(
            0.02, "share of each task's training prompts kept for the replay (at least one)", limit=(0, 1)
        )

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self._trained: int | None = None

    def make_state(self, d: int) -> torch.nn.Module:
        return SaptReplayState(d, self.options.query_hidden)

    def before_training(self, lora: LoraBank, task_index: int, settings: TaskSettings, ctx: TaskContext) -> None:
        super().before_training(lora, task_index, settings, ctx)
        self._trained = task_index
        names = self.tasks_in(lora)
        self._old = [lora.extras[n] for n in names[:-1]]

    def penalty(self, lora: LoraBank, settings: TaskSettings) -> torch.Tensor | None:
        if not getattr(self, "_old", None):
            return None
        names = self.tasks_in(lora)
        keys = torch.stack([lora.extras[n].key for n in names]).float()
        kl = replay_kl(keys, lora.extras[names[-1]].query, [s.memory for s in self._old], [s.label for s in self._old])
        return self.task_options(settings).lam * kl

    def kept(self, task_index: int, n: int) -> list[int]:
        k = min(n, max(1, math.ceil(self.options.keep_fraction * n)))
        return sorted(random.Random(self.run.seed * 7919 + task_index).sample(range(n), k))

    @torch.no_grad()
    def end_task(self, lora: LoraBank, task_index: int, settings: TaskSettings, ctx: TaskContext | None = None) -> None:
        self._old = []
        if self._trained != task_index or ctx is None or not ctx.examples:
            return  # reloaded with its adapter
        self._trained = None
        state: SaptReplayState = lora.extras[lora.current]
        pooled = prompt_embeddings(lora, [e.source for e in ctx.examples], masked_max)
        names = self.tasks_in(lora)
        keys = torch.stack([lora.extras[n].key for n in names])
        state.memory = pooled[self.kept(task_index, len(ctx.examples))].contiguous()
        # its weights as its own training left them (the code records them on its dev set)
        state.label = mixture_weights(keys, state.query, pooled).mean(0).contiguous()
