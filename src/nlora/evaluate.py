"""Evaluation: greedy generation on each task's test set, exact match and ROUGE-L per task."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import metrics
from .batching import collate_prompts, encode
from .data import Example, TaskData
from .prompts import answer_from_generation
from .train import autocast


@dataclass
class TaskPredictions:
    task: str
    category: str
    prompts: list[str]
    references: list[str]
    predictions: list[str]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, seq2seq: bool, device: torch.device,
             amp_dtype: torch.dtype | None, batch_size: int, max_source: int, max_new_tokens: int,
             desc: str = "eval") -> list[str]:
    """Greedy decoding, longest prompts first (less padding); stops once every sequence hit EOS."""
    encoded = encode(tokenizer, [Example(p, "") for p in prompts], seq2seq, max_source, 2)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].source))
    out: list[str] = [""] * len(prompts)
    model.eval()
    for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False, dynamic_ncols=True):
        idx = order[s:s + batch_size]
        batch = {k: v.to(device) for k, v in collate_prompts([encoded[i] for i in idx], tokenizer.pad_token_id,
                                                             seq2seq).items()}
        with autocast(device, amp_dtype):
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        if not seq2seq:  # keep prompt + continuation: the answer is what follows the last "Answer:"
            texts = tokenizer.batch_decode(gen[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            texts = [answer_from_generation(p + t) for p, t in zip((prompts[i] for i in idx), texts)]
        else:
            texts = tokenizer.batch_decode(gen, skip_special_tokens=True)
        for i, t in zip(idx, texts):
            out[i] = t.strip()
    return out


def predict_tasks(model, tokenizer, tasks: list[TaskData], **kw) -> list[TaskPredictions]:
    results = []
    for task in tasks:
        examples = task.splits["test"]
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
