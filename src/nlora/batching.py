"""Tokenisation and padding helpers for both model families (``families`` holds what differs between them), and
length-grouped batch order.

Two encodings (``compat``): ``clean`` cuts an over-long prompt in the middle (its head and its "Answer:" stay)
and masks exactly the answer tokens; ``reference`` reproduces the N-LoRA release's collator
(``src/uie_collator.py``): the first N tokens of an over-long input are kept, whatever they lose, and decoder-only
models get the release's token-level treatment (see ``encode_release_causal``). docs/presets.md lists every
difference.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .data import Example

COMPAT_MODES = ("clean", "reference")


@dataclass
class ReleaseMask:
    """What the release's decoder collator keeps per example to build its batch loss mask."""

    label_len: int  # its count of label tokens (the label tokenised alone, special tokens included)
    span: int | None  # its separate prompt + label token count; None: the example was cut (resets the batch max)
    max_source: int
    limit: int  # max_source + max_target: the release's length limit for a training input with its label


@dataclass
class Encoded:
    source: list[int]  # encoder-decoder: encoder input; decoder-only: BOS + prompt (reference training: all of it)
    target: list[int]  # label tokens (+ EOS); empty for reference causal training, whose label is in source
    truncated: bool = False  # the prompt (or prompt + label) was over the length limit and was cut
    release: ReleaseMask | None = None  # set for reference causal training rows


def as_family(family):
    """The family object for ``family`` (a ``families.ModelFamily``, or an older caller's seq2seq flag)."""
    from .families import as_family as resolve  # imported here: the families build on this module

    return resolve(family)


def fit_length(ids: list[int], max_len: int, head: int = 64) -> list[int]:
    """Cut from the middle of an over-long prompt: its start (task, instruction) and end ("Answer:") stay."""
    if len(ids) <= max_len:
        return ids
    head = min(head, max_len // 2)
    return ids[:head] + ids[len(ids) - (max_len - head) :]


def encode(
    tokenizer, examples: list[Example], family, max_source: int, max_target: int, compat: str = "clean"
) -> list[Encoded]:
    """Training (and label-scoring) pairs for a model of ``family`` (``families.ModelFamily.encode``)."""
    return as_family(family).encode(tokenizer, examples, max_source, max_target, compat)


def encode_prompts(tokenizer, prompts: list[str], family, max_source: int, compat: str = "clean") -> list[Encoded]:
    """Generation inputs (``source`` only)."""
    return as_family(family).encode_prompts(tokenizer, prompts, max_source, compat)


def with_target(e: Encoded, target: list[int]) -> Encoded:
    e.target = target
    return e


def release_seq2seq_source(tokenizer, prompt: str, max_source: int) -> Encoded:
    """The release's T5 source: the prompt tokenised (EOS added); over ``max_source`` tokens, the first
    ``max_source`` are decoded back to text (special tokens dropped) and that text is tokenised with truncation."""
    ids = tokenizer(prompt)["input_ids"]
    if len(ids) <= max_source:
        return Encoded(ids, [])
    text = tokenizer.decode(ids[:max_source], skip_special_tokens=True)
    return Encoded(tokenizer(text, max_length=max_source, truncation=True)["input_ids"], [], True)


def _special(tokenizer, name: str) -> str:
    return getattr(tokenizer, name) or ""


def release_causal_prompt(tokenizer, prompt: str, max_source: int) -> Encoded:
    """The release's decoder test input: the string BOS-token + prompt, tokenised with special tokens on (so a
    tokenizer that adds BOS itself gives two); over ``max_source`` tokens, the first ``max_source`` are decoded
    (special tokens kept) and tokenised again, truncated to ``max_source``. The prompt may lose its "Answer:"."""
    text = _special(tokenizer, "bos_token") + prompt
    ids = tokenizer(text)["input_ids"]
    if len(ids) <= max_source:
        return Encoded(ids, [])
    text = tokenizer.decode(ids[:max_source], skip_special_tokens=False)
    return Encoded(tokenizer(text, max_length=max_source, truncation=True)["input_ids"], [], True)


def encode_release_causal(tokenizer, prompt: str, label: str, max_source: int, max_target: int) -> Encoded:
    """The release's decoder training input (``DataCollatorForUIE.decoder_call``, subset train).

    The text BOS + prompt + label + EOS is tokenised in one piece, so "Answer:" and the label are tokenised
    together (the label gets no leading-space piece), with special tokens on. Over ``max_source + max_target``
    tokens (counted as prompt and label tokenised apart), the first that many are decoded and tokenised again;
    the final tokenisation truncates to ``max_source``, so a long prompt loses its label. The label length kept
    for the loss mask is the label tokenised alone (with its special tokens), as the release counts it.
    """
    task_input = _special(tokenizer, "bos_token") + prompt
    label_text = label + _special(tokenizer, "eos_token")
    prompt_ids = tokenizer(task_input)["input_ids"]
    label_ids = tokenizer(label_text)["input_ids"]
    limit = max_source + max_target
    if len(prompt_ids) + len(label_ids) <= limit:
        text, label_len, span = task_input + label_text, len(label_ids), len(prompt_ids) + len(label_ids)
    else:
        text = tokenizer.decode((prompt_ids + label_ids)[:limit], skip_special_tokens=False)
        label_len, span = max(0, limit - len(prompt_ids)), None
    ids = tokenizer(text, max_length=max_source, truncation=True)["input_ids"]
    cut = span is None or len(prompt_ids) + len(label_ids) > max_source
    return Encoded(ids, [], cut, ReleaseMask(label_len, span, max_source, limit))


def release_loss_mask(batch: list[Encoded]) -> list[list[int]]:
    """The release's loss mask over the left-padded batch (width = longest row).

    Its batch length ``max_len`` is the largest separate prompt + label count, set to ``max_source`` by any cut
    example (in batch order), capped at ``limit``; each row is zero up to ``max_len - label_len - 1`` (a Python
    slice, as the release's) and on padding. Its model multiplies the loss predicting token i+1 by mask[i]
    (i < width - 1) and divides the sum by the sum of the whole mask (``src/model/llama.py``).
    """
    width = max(len(b.source) for b in batch)
    max_len = -1
    for b in batch:
        max_len = max(max_len, b.release.span) if b.release.span is not None else b.release.max_source
    max_len = min(max_len, batch[0].release.limit)
    rows = []
    for b in batch:
        row = [1] * width
        zeros = row[: max_len - b.release.label_len - 1]
        row[: len(zeros)] = [0] * len(zeros)
        pad = width - len(b.source)
        row[:pad] = [0] * pad
        rows.append(row)
    return rows


def release_denominator(batch: list[Encoded]) -> int:
    """The release's loss denominator for a reference causal batch: the sum of its whole loss mask, which
    counts one position more per row than the tokens its numerator scores (the mask's last column)."""
    return sum(map(sum, release_loss_mask(batch)))


def pad_rows(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])


def collate_train(batch: list[Encoded], pad_id: int, family) -> dict[str, torch.Tensor]:
    """A training batch padded as ``family`` reads it (``families.ModelFamily.collate_train``)."""
    return as_family(family).collate_train(batch, pad_id)


def collate_release_causal(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Reference causal training batch: labels are the tokens whose prediction the release's mask counts
    (token j where mask[j-1] is 1), and no position ids: the release's training forward passes none, so
    left-padded rows start at a position past 0."""
    ids = pad_rows([b.source for b in batch], pad_id, left=True)
    mask = pad_rows([[1] * len(b.source) for b in batch], 0, left=True)
    counted = torch.tensor(release_loss_mask(batch))
    labels = torch.full_like(ids, -100)
    labels[:, 1:] = ids[:, 1:].masked_fill(counted[:, :-1] == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_prompts(batch: list[Encoded], pad_id: int, family) -> dict[str, torch.Tensor]:
    return as_family(family).collate_prompts(batch, pad_id)


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def batch_order(lengths: list[int], batch_size: int, seed: int, group_by_length: bool = True) -> list[list[int]]:
    """Shuffled batches; with grouping, examples of similar length share a batch (less padding).

    Lengths are sorted only inside windows of 50 batches, and batch order is shuffled, so batches stay
    random across the epoch.
    """
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if group_by_length:
        window = batch_size * 50
        idx = [i for s in range(0, len(idx), window) for i in sorted(idx[s : s + window], key=lambda i: -lengths[i])]
    batches = [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches
