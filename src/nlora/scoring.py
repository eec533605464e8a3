"""Label scoring at the cost of one prompt pass: the prompt is run once, every label candidate is scored from it.

The plain way (``evaluate.sequence_logprobs`` over prompt + candidate rows) runs each prompt once per label:
4 times for agnews, 5 for amazon. Here:
- decoder-only: one pass over the left-padded prompts keeps their keys/values; each candidate is then run
  over that cache (its own tokens only, positions continuing each prompt's), and the cache is cut back to
  the prompt before the next candidate;
- encoder-decoder: one encoder pass; each candidate is a short decoder pass over the same encoder output.
log p(candidate | prompt) is the same sum as the plain way's, up to float rounding (tested against it).

It needs a model whose forward on [prompt; candidate] equals its forward on the prompt followed by the
candidate over the cache: true of LoRA (folded, merged or live), not of soft prompts prepended by PEFT's
prompt learning or of methods that gate branches from the whole input; ``cached_scoring_applies`` says so.

Shared prefix (decoder-only, scoring and generation): the prompts of one task begin with the same tokens
(BOS, ``Task:..``, ``Dataset:..``, the instruction and the option line: 30-50 SmolLM2 tokens, a quarter to
two thirds of a CL_Benchmark prompt). A batch's common prefix is run once, as a batch of one, and its cache
repeated for every row; each row's own tokens then run over it, padded in the middle
(``[prefix][pads][own tokens]``, masked, positions continuing the prefix's), so the last position is still
every row's last token. Same sums as the plain pass up to float rounding (tested against it). Only where no
module has forward hooks (``prefix_sharing_applies``: a hook may read the whole input, as input gates do).
"""

from __future__ import annotations

import inspect

import torch

from .batching import Encoded
from .logits import accepts_logits_to_keep, last_logits


def cached_scoring_applies(model) -> bool:
    """False for PEFT prompt learning (its virtual tokens are prepended on every call, cache or not)."""
    config = getattr(model, "active_peft_config", None)
    return not getattr(config, "is_prompt_learning", False)


def _cache_argument(model) -> str:
    """The forward argument that takes a key/value cache: ``cache`` in transformers 5.x, before that
    ``past_key_values`` (5.x still accepts it, with a deprecation warning)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _cache_of(out):
    """The key/value cache a forward returned (``cache`` in transformers 5.x, ``past_key_values`` before)."""
    return getattr(out, "cache", None) or out.past_key_values


# Below this many shared tokens a separate prefix pass costs about what it saves.
MIN_SHARED_PREFIX = 16


def prefix_sharing_applies(model) -> bool:
    """Whether a prompt pass may be split into its shared prefix (run once) and each row's rest: cached
    scoring applies and no module has forward hooks (a hook may read the whole input or the batch, as
    gainlora's input gates do; splitting the pass would show it a part)."""
    if not cached_scoring_applies(model):
        return False
    return not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def shared_prefix_length(rows: list[list[int]], minimum: int = MIN_SHARED_PREFIX) -> int:
    """The number of leading tokens all ``rows`` share, leaving every row at least one token of its own;
    0 for a single row or fewer than ``minimum`` shared tokens."""
    if len(rows) < 2:
        return 0
    first, n = rows[0], min(len(r) for r in rows) - 1
    for row in rows[1:]:
        k = 0
        while k < n and row[k] == first[k]:
            k += 1
        n = k
    return n if n >= minimum else 0


def prompt_rows(rows: list[list[int]], pad_id: int, prefix: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as one batch whose last column is every row's last token: ``[first prefix tokens][pads][the
    rest]`` (``prefix`` 0: plain left padding), and its attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r[:prefix] + [pad_id] * (width - len(r)) + r[prefix:] for r in rows], device=device)
    mask = torch.tensor([[1] * prefix + [0] * (width - len(r)) + [1] * (len(r) - prefix) for r in rows], device=device)
    return ids, mask


def prefix_cache(model, prefix_ids: torch.Tensor, rows: int):
    """The key/value cache of ``prefix_ids`` ([1, prefix]), run once and repeated for ``rows`` rows."""
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    out = model(input_ids=prefix_ids, use_cache=True, **keep)
    cache = _cache_of(out)
    cache.batch_repeat_interleave(rows)
    return cache


def shared_prompt_inputs(model, rows: list[list[int]], pad_id: int, device, share_prefix: bool = True) -> dict:
    """``generate``/forward inputs for decoder-only prompts: the padded ids and mask, and, where a prefix is
    shared (and ``prefix_sharing_applies``), the cache holding it (under the model's cache argument)."""
    n = shared_prefix_length(rows) if share_prefix and prefix_sharing_applies(model) else 0
    ids, mask = prompt_rows(rows, pad_id, n, device)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if n:
        cache_arg = _cache_argument(model)
        inputs[cache_arg] = prefix_cache(model, ids[:1, :n], len(rows))
    return inputs


def _picked(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token], per position: [rows, positions]."""
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def candidate_logprobs(
    model,
    prompts: list[Encoded],
    candidates: list[list[int]],
    *,
    family,
    pad_id: int,
    device: torch.device,
    share_prefix: bool = True,
) -> torch.Tensor:
    """[len(prompts), len(candidates)]: summed log-probability of each candidate's tokens after each prompt.

    ``prompts`` are encoded sources (``Encoded.source``: with BOS for decoder-only models, as training sees
    them); ``candidates`` the label token ids with EOS, the same for every prompt of a task. ``family``: the
    model's ``families.ModelFamily`` (which calls one of the two functions below). ``share_prefix``: run the
    prompts' shared prefix once (decoder-only; off where ranks must make the same passes)."""
    from .families import as_family  # imported here: the families build on this module

    return as_family(family).candidate_logprobs(model, prompts, candidates, pad_id, device, share_prefix)


def decoder_only_logprobs(model, prompts, candidates, pad_id, device, share_prefix: bool = True) -> torch.Tensor:
    """``candidate_logprobs`` for a decoder-only model: candidates run over the prompts' key/value cache (the
    prompts' shared prefix run once, unless ``share_prefix`` is False)."""
    cache_arg = _cache_argument(model)
    inputs = shared_prompt_inputs(model, [p.source for p in prompts], pad_id, device, share_prefix)
    ids, mask, prefix = inputs["input_ids"], inputs["attention_mask"], inputs.get(cache_arg)
    done = prefix.get_seq_length() if prefix is not None else 0  # columns already in the cache
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # only the last position's logits are needed from the prompt pass: not a vocabulary-wide row per token
    keep = {"logits_to_keep": last_logits(model, 1, device)} if accepts_logits_to_keep(model) else {}
    out = model(
        input_ids=ids[:, done:],
        attention_mask=mask,
        position_ids=positions[:, done:],
        use_cache=True,
        **({cache_arg: prefix} if prefix is not None else {}),
        **keep,
    )
    cache = _cache_of(out)
    first = torch.log_softmax(out.logits[:, -1].float(), -1)  # predicts every candidate's first token
    lengths = mask.sum(-1, keepdim=True)  # each prompt's real length: where its candidate's positions start
    scores = torch.empty(len(prompts), len(candidates), device=device)
    for j, cand in enumerate(candidates):
        total = first[:, cand[0]]
        if len(cand) > 1:
            rest = torch.tensor(cand, device=device).repeat(len(prompts), 1)
            steps = rest.shape[1] - 1
            logits = model(
                input_ids=rest[:, :-1],
                use_cache=True,
                **{cache_arg: cache},
                attention_mask=torch.cat([mask, mask.new_ones(len(prompts), steps)], -1),
                position_ids=lengths + torch.arange(steps, device=device),
            ).logits
            total = total + _picked(logits, rest[:, 1:]).sum(-1)
            cache.crop(-steps)  # back to the prompt alone for the next candidate (negative: tokens to drop)
        scores[:, j] = total
    return scores


def encoder_decoder_logprobs(model, prompts, candidates, pad_id, device) -> torch.Tensor:
    """``candidate_logprobs`` for an encoder-decoder model: one encoder pass, a decoder pass per candidate (the
    encoder reads the whole prompt at once, so no prefix is shared)."""
    width = max(len(p.source) for p in prompts)
    ids = torch.tensor([p.source + [pad_id] * (width - len(p.source)) for p in prompts], device=device)
    mask = torch.tensor([[1] * len(p.source) + [0] * (width - len(p.source)) for p in prompts], device=device)
    encoder = model.get_encoder()(input_ids=ids, attention_mask=mask)
    scores = torch.empty(len(prompts), len(candidates), device=device)
    for j, cand in enumerate(candidates):
        labels = torch.tensor(cand, device=device).repeat(len(prompts), 1)
        decoder_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)  # shifted right, no loss
        logits = model(encoder_outputs=encoder, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        scores[:, j] = _picked(logits, labels).sum(-1)
    return scores
