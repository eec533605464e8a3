"""L2P, "Learning to Prompt for Continual Learning" (Wang et al., CVPR 2022), as adapted to language models in
TRACE (BeyonderXX/TRACE @462e39f, `model/Dynamic_network/L2P.py`, `training/main.py` l.407-435) and LLMCL
(which47/LLMCL @a9dae12, `method/L2P.py`): a pool of prompts with keys; each input picks the k prompts whose
keys are closest to it and reads them before its own tokens. The model stays frozen; only the pool trains.

- Pool ``P``: M = 10 prompts of L_p = 5 vectors (d wide), initialised by copying the input embeddings of random
  vocabulary tokens (TRACE). Key of prompt m: ``K_m = mean over its L_p vectors of P_m``, recomputed every
  forward (LLMCL; TRACE computes it once at init), so the keys are the pool itself and nothing else is stored.
- Query ``q(x)`` = mean of the frozen input embeddings of x; ``sim = cos(q, K)`` (B x M); each example takes
  its own top k = 3 (batch-wise selection off, as both releases), most similar first, and the model reads
  ``[P_idx1; P_idx2; P_idx3; x]`` (15 vectors; PEFT prompt tuning does the prepending and the attention mask).
  T5: the encoder input; decoder-only models: the start of the sequence.
- Loss: ``L_task - lambda * (1/B) sum_b sum_{m in idx_b} cos(q_b, K_m)`` (the pull-together term; lambda =
  ``--lambda``, default 0.5 as both releases).

Choices where the releases differ from this or are silent:
- The query averages over real tokens only (the attention mask), where both releases average over every
  position, padding included: with padding the choice of prompts would depend on how inputs are batched.
- Decoder-only training: the input holds prompt and answer, so the query includes the answer tokens during
  training and not at evaluation (both releases do the same; the answer is a few tokens of a long prompt).
- The TRACE/LLMCL defaults (M, L_p, k, lambda) are kept; neither release has CL_Benchmark hyperparameters.
  TRACE trains the pool only (this); LLMCL also trains a LoRA.
Task identity: CL_Benchmark prompts name their task (``Task:TC``, ``Dataset:agnews``, the option list), so on
that benchmark choosing prompts from the input gets the task id nearly free; selection is not given the id.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..banks import PromptBank
from ..config import TaskSettings
from ..errors import NloraError
from ..families import ModelFamily
from . import register
from .base import Method
from .options import coefficient, option


class PromptPool:
    """The selection machinery attached to a prompt bank whose prompt ``name`` holds the pool."""

    def __init__(self, bank: PromptBank, name: str, pool_size: int, prompt_length: int, top_k: int):
        self.bank, self.name = bank, name
        self.pool_size, self.prompt_length, self.top_k = pool_size, prompt_length, top_k
        self.inputs: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the call's input ids and mask
        self.selected: torch.Tensor | None = None  # B x k indices of the last selection
        self.selected_sim: torch.Tensor | None = None  # B x k cosines of the last selection (grad to the pool)

    @property
    def weight(self) -> torch.Tensor:
        return self.bank.prompt_embedding(self.name)  # (M * L_p) x d

    def keys(self) -> torch.Tensor:
        return self.weight.view(self.pool_size, self.prompt_length, -1).mean(1)

    def query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            emb = self.bank.word_embeddings(input_ids).float()
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            mask = mask.to(emb.dtype).unsqueeze(-1)
            return (emb * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def select(self, batch_size: int) -> torch.Tensor:
        """The prompts of the current call's inputs: B x (k * L_p) x d, the top-k most similar first."""
        if self.inputs is None or self.inputs[0].shape[0] != batch_size:
            raise RuntimeError("l2p: the prompt pool was asked for prompts without the call's input ids")
        q = self.query(*self.inputs)
        sim = F.cosine_similarity(q.unsqueeze(1), self.keys().float().unsqueeze(0), dim=-1)  # B x M
        top = sim.topk(self.top_k, dim=1)
        self.selected, self.selected_sim = top.indices, top.values
        prompts = self.weight.view(self.pool_size, self.prompt_length, -1)[top.indices]  # B x k x L_p x d
        return prompts.reshape(batch_size, self.top_k * self.prompt_length, -1)

    def install(self) -> None:
        """Route the bank's prompt requests to ``select`` and record every call's inputs for it: forward calls
        (training, label scoring) through a pre-hook, generation through a wrapper of ``generate``."""
        model = self.bank.model

        def remember(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                self.inputs = (ids, kwargs.get("attention_mask"))

        model.register_forward_pre_hook(remember, with_kwargs=True)
        original_generate = model.generate

        @functools.wraps(original_generate)
        def generate(*args, **kwargs):
            remember(model, args, kwargs)
            return original_generate(*args, **kwargs)

        model.generate = generate
        self.bank.serve_prompts(self.select)  # and the whole pool is what is saved


@register
class L2P(Method):
    name = "l2p"
    summary = (
        "a pool of 10 prompts with keys; each input reads the 3 whose keys are nearest its mean embedding "
        "(Wang et al., 2022; TRACE/LLMCL)"
    )
    fresh_adapter_per_task = False
    foldable = False
    bank = "prompt"

    @dataclass(frozen=True)
    class Options:
        lam: float = coefficient(0.5, "weight of the pull-together term (both releases' value)")
        pool_size: int = option(10, "M: prompts in the pool", limit=(1, None))
        prompt_length: int = option(5, "L_p: vectors per prompt", limit=(1, None))
        top_k: int = option(3, "k: prompts each input reads (at most pool_size)", limit=(1, None))

        def __post_init__(self):
            if self.top_k > self.pool_size:
                raise NloraError(f"l2p: top_k {self.top_k} exceeds pool_size {self.pool_size}")

    venue = "2022 CVPR (LMs: TRACE, LLMCL)"
    trains = "a shared prompt pool (10 x 5 vectors), model frozen"
    stored_per_task = "nothing: one pool, constant memory"
    source = "arXiv 2112.08654; BeyonderXX/TRACE, which47/LLMCL"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.pool: PromptPool | None = None

    def adapter_name(self, task_index: int) -> str:
        return "pool"

    def start(self, lora: PromptBank, name: str) -> None:
        pool_size, prompt_length, top_k = self.options.pool_size, self.options.prompt_length, self.options.top_k
        lora.start(name, top_k * prompt_length)  # PEFT prepends k * L_p vectors
        if self.pool is not None:
            return
        embeddings = lora.word_embeddings.weight
        g = torch.Generator().manual_seed(self.run.seed)
        tokens = torch.randint(embeddings.shape[0], (pool_size * prompt_length,), generator=g)
        pool = torch.nn.Embedding(len(tokens), embeddings.shape[1], device=embeddings.device)
        with torch.no_grad():
            pool.weight.copy_(embeddings[tokens.to(embeddings.device)].float())
        lora.replace_prompt(name, pool)  # the prompt's own rows would be k * L_p; the pool replaces them
        self.pool = PromptPool(lora, name, pool_size, prompt_length, top_k)
        self.pool.install()

    def begin_task(self, lora: PromptBank, task_index: int, settings: TaskSettings) -> str:
        self.start(lora, self.adapter_name(task_index))
        return lora.current

    def batch_penalty(
        self,
        lora: PromptBank,
        settings: TaskSettings,
        batch: dict,
        family: ModelFamily,
        logits: torch.Tensor,
        targets: torch.Tensor,
    ):
        """The pull-together term of the step's forward: -lambda * mean over examples of the summed cosines
        between its query and its selected keys."""
        return -self.task_options(settings).lam * self.pool.selected_sim.sum(1).mean()
