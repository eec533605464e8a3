"""Evaluation: greedy generation on each task's test set, exact match and ROUGE-L per task."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import metrics
from .batching import collate_prompts, collate_train, encode
from .data import Example, TaskData
from .dist import Dist
from .prompts import answer_from_generation
from .logits import accepts_logits_to_keep, answer_logits, autocast


@dataclass
class TaskPredictions:
    task: str
    category: str
    prompts: list[str]
    references: list[str]
    predictions: list[str]


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, seq2seq: bool, device: torch.device,
             amp_dtype: torch.dtype | None, batch_size: int, max_source: int, max_new_tokens: int,
             desc: str = "eval", dist: Dist | None = None) -> list[str]:
    """Greedy decoding, longest prompts first (less padding); stops once every sequence hit EOS.

    Under several processes, batch k goes to rank k % world and the texts are gathered on every rank. Out of
    memory halves the batch and goes on.
    """
    dist = dist or Dist()
    encoded = encode(tokenizer, [Example(p, "") for p in prompts], seq2seq, max_source, 2)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].source))
    mine = dist.lockstep([order[s:s + batch_size] for s in range(0, len(order), batch_size)])
    texts: dict[int, str] = {}
    model.eval()
    bar = tqdm(total=sum(len(c) for c, keep in mine if keep), desc=desc, unit="ex", leave=False,
               dynamic_ncols=True, disable=not dist.is_main)
    for chunk, keep in mine:
        with dist.root_gathered():  # per batch: the root's last forward of a generation reshards it
            out = _generate_halving(model, tokenizer, encoded, prompts, chunk, seq2seq, device, amp_dtype,
                                    max_new_tokens, dist)
        if keep:
            texts.update(out)
            bar.update(len(chunk))
    bar.close()
    for part in dist.all_gather(texts):
        texts.update(part)
    return [texts[i] for i in range(len(prompts))]


def _generate_halving(model, tokenizer, encoded, prompts, chunk, seq2seq, device, amp_dtype, max_new_tokens,
                      dist: Dist) -> dict[int, str]:
    """Texts for the prompts in ``chunk``; out of memory halves the batch and goes on (not under FSDP, where
    every rank must make the same passes)."""
    texts, size = {}, len(chunk)
    while chunk:
        idx = chunk[:size]
        try:
            out = _generate_batch(model, tokenizer, [encoded[i] for i in idx], [prompts[i] for i in idx],
                                  seq2seq, device, amp_dtype, max_new_tokens, synced=dist.sharded)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not _is_oom(e) or size == 1 or dist.sharded:
                raise
            size = max(1, size // 2)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            tqdm.write(f"[nlora] out of memory in evaluation: batch of {len(idx)} -> {size}")
            continue
        texts.update(zip(idx, out))
        chunk = chunk[len(idx):]
    return texts


def _generate_batch(model, tokenizer, encoded, prompts, seq2seq, device, amp_dtype, max_new_tokens,
                    synced: bool = False) -> list[str]:
    batch = {k: v.to(device) for k, v in collate_prompts(encoded, tokenizer.pad_token_id, seq2seq).items()}
    with autocast(device, amp_dtype):
        # synced: sharded ranks keep stepping until all have finished (their weight gathers must match)
        gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             synced_gpus=synced)
    if seq2seq:
        return [t.strip() for t in tokenizer.batch_decode(gen, skip_special_tokens=True)]
    # keep prompt + continuation: the answer is what follows the last "Answer:"
    texts = tokenizer.batch_decode(gen[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [answer_from_generation(p + t).strip() for p, t in zip(prompts, texts)]


def sequence_logprobs(model, batch: dict[str, torch.Tensor], seq2seq: bool, keep_logits: bool = False) -> torch.Tensor:
    """Per row, the summed log-probability of its label tokens (labels != -100) given its prompt."""
    logits, targets = answer_logits(model, batch, seq2seq, keep_logits)
    logp = torch.log_softmax(logits.float(), -1)
    mask = targets != -100
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


@torch.no_grad()
def score_labels(model, tokenizer, prompts: list[str], labels: list[str], *, seq2seq: bool, device: torch.device,
                 amp_dtype: torch.dtype | None, batch_size: int, max_source: int, max_new_tokens: int,
                 desc: str = "score", dist: Dist | None = None) -> list[str]:
    """Label scoring: each prompt's prediction is the label (+ EOS) with the highest log-likelihood.

    All candidates of a prompt go into one forward pass (batches hold whole candidate sets); an alternative
    to the reference's free generation that cannot produce an answer outside the label set.
    """
    dist = dist or Dist()
    pairs = encode(tokenizer, [Example(p, lab) for p in prompts for lab in labels], seq2seq, max_source,
                   max_new_tokens)
    k = len(labels)
    order = sorted(range(len(prompts)), key=lambda i: -len(pairs[i * k].source))
    per_batch = max(1, batch_size // k)
    mine = dist.lockstep([order[s:s + per_batch] for s in range(0, len(order), per_batch)])
    best: dict[int, str] = {}
    keep_logits = not seq2seq and accepts_logits_to_keep(model)
    model.eval()
    for chunk, keep in tqdm(mine, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                            disable=not dist.is_main):
        rows = [pairs[i * k + j] for i in chunk for j in range(k)]
        batch = {key: v.to(device) for key, v in collate_train(rows, tokenizer.pad_token_id, seq2seq).items()}
        with autocast(device, amp_dtype):
            scores = sequence_logprobs(model, batch, seq2seq, keep_logits).view(len(chunk), k)
        if keep:
            best.update((i, labels[j]) for i, j in zip(chunk, scores.argmax(-1).tolist()))
    for part in dist.all_gather(best):
        best.update(part)
    return [best[i] for i in range(len(prompts))]


def predict_tasks(model, tokenizer, tasks: list[TaskData], mode: str = "generate", **kw) -> list[TaskPredictions]:
    """Predictions for every task's test split: free greedy generation, or label scoring (``mode="score"``)."""
    results = []
    for task in tasks:
        examples = task.splits["test"]
        if mode == "score":
            preds = score_labels(model, tokenizer, [e.prompt for e in examples], task.labels,
                                 desc=f"score {task.name}", **kw)
        else:
            preds = generate(model, tokenizer, [e.prompt for e in examples], desc=f"eval {task.name}", **kw)
        results.append(TaskPredictions(task.name, task.category, [e.prompt for e in examples],
                                       [e.label for e in examples], preds))
    return results


def results_dict(preds: list[TaskPredictions], runtime_s: float) -> dict[str, float]:
    """Keys as the reference's predict_results.json: overall, per dataset and per category."""
    out: dict[str, float] = {}
    all_p = [p for t in preds for p in t.predictions]
    all_r = [r for t in preds for r in t.references]
    for k, v in metrics.score(all_p, all_r).items():
        out[f"predict_{k}"] = v
    by_category: dict[str, tuple[list, list]] = {}
    for t in preds:
        for k, v in metrics.score(t.predictions, t.references).items():
            out[f"predict_{k}_for_{t.task}"] = v
        cat = by_category.setdefault(t.category, ([], []))
        cat[0].extend(t.predictions)
        cat[1].extend(t.references)
    for cat, (p, r) in by_category.items():
        for k, v in metrics.score(p, r).items():
            out.setdefault(f"predict_{k}_for_{cat}", v)
    out["predict_samples"] = len(all_r)
    out["predict_runtime"] = round(runtime_s, 3)
    return out


def prediction_rows(preds: list[TaskPredictions]) -> list[dict]:
    return [{"task": t.task, "prompt": p, "reference": r, "prediction": y,
             "exact_match": metrics.exact_match(y, r)}
            for t in preds for p, r, y in zip(t.prompts, t.references, t.predictions)]


def timed_predict(model, tokenizer, tasks: list[TaskData], **kw) -> tuple[list[TaskPredictions], dict]:
    start = time.perf_counter()
    preds = predict_tasks(model, tokenizer, tasks, **kw)
    return preds, results_dict(preds, time.perf_counter() - start)
