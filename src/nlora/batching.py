"""Tokenisation and padding for both model families, and length-grouped batch order."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .data import Example


@dataclass
class Encoded:
    source: list[int]  # seq2seq: encoder input; causal: BOS + prompt
    target: list[int]  # label tokens (+ EOS)


def fit_length(ids: list[int], max_len: int, head: int = 64) -> list[int]:
    """Cut from the middle of an over-long prompt: its start (task, instruction) and end ("Answer:") stay."""
    if len(ids) <= max_len:
        return ids
    head = min(head, max_len // 2)
    return ids[:head] + ids[len(ids) - (max_len - head):]


def encode(tokenizer, examples: list[Example], seq2seq: bool, max_source: int, max_target: int) -> list[Encoded]:
    if not examples:
        return []
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=seq2seq)["input_ids"]
    labels = tokenizer([e.label for e in examples], add_special_tokens=False)["input_ids"]
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    out = []
    for p, l in zip(prompts, labels):
        if seq2seq:
            out.append(Encoded(fit_length(p, max_source), l[: max_target - 1] + [eos]))
        else:
            src = ([bos] if bos is not None else []) + fit_length(p, max_source - (bos is not None))
            out.append(Encoded(src, l[: max_target - 1] + [eos]))
    return out


def _pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])


def collate_train(batch: list[Encoded], pad_id: int, seq2seq: bool) -> dict[str, torch.Tensor]:
    if seq2seq:
        ids = _pad([b.source for b in batch], pad_id, left=False)
        return {"input_ids": ids, "attention_mask": (_pad([[1] * len(b.source) for b in batch], 0, False)),
                "labels": _pad([b.target for b in batch], -100, left=False)}
    # Causal: left padding puts every answer at the end, so logits are only needed for the last positions.
    full = [b.source + b.target for b in batch]
    ids = _pad(full, pad_id, left=True)
    mask = _pad([[1] * len(f) for f in full], 0, left=True)
    labels = _pad([[-100] * len(b.source) + b.target for b in batch], -100, left=True)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions(mask)}


def collate_prompts(batch: list[Encoded], pad_id: int, seq2seq: bool) -> dict[str, torch.Tensor]:
    rows = [b.source for b in batch]
    ids = _pad(rows, pad_id, left=not seq2seq)
    mask = _pad([[1] * len(r) for r in rows], 0, left=not seq2seq)
    return {"input_ids": ids, "attention_mask": mask}


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
        idx = [i for s in range(0, len(idx), window)
               for i in sorted(idx[s:s + window], key=lambda i: -lengths[i])]
    batches = [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches
