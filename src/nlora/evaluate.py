"""Evaluation: greedy generation on each task's test set, exact match and ROUGE-L per task.

predict_results.json carries nlora's keys and the release's (``src/run_N_lora.py``, ``compute_metrics.py``):
exact match, ROUGE-1 and ROUGE-L overall, per dataset and per category, gen_len and samples per second;
predict_eval_predictions.jsonl is the release's predictions file, beside nlora's predictions.jsonl."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rouge_score import rouge_scorer
from tqdm.auto import tqdm

from . import metrics
from .data import Example, TaskData
from .logits import accepts_logits_to_keep, answer_logits, last_logits
from .prompts import ANSWER_MARKER
from .runtime import Runtime
from .scoring import cached_scoring_applies


@dataclass
class TaskPredictions:
    task: str
    category: str
    prompts: list[str]
    references: list[str]
    predictions: list[str]
    gen_lens: list[int] | None = None  # per example, tokens of the generate output as the release counts them
    truncated: int | None = None  # prompts cut to fit max_source_length


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def generate(model, rt: Runtime, prompts: list[str]) -> list[str]:
    """Greedy decoding of ``prompts``; the predicted answers (see ``generate_with_lengths``)."""
    return generate_with_lengths(model, rt, prompts)[0]


@torch.no_grad()
def generate_with_lengths(
    model, rt: Runtime, prompts: list[str], desc: str = "eval"
) -> tuple[list[str], list[int], int]:
    """Greedy decoding, longest prompts first (less padding); stops once every sequence hit EOS. Returns the
    answers, each output's token count as the release's gen_len counts it, and how many prompts were cut.

    Under several processes, batch k goes to rank k % world and the texts are gathered on every rank. Out of
    memory halves the batch and goes on.
    """
    dist, batch_size = rt.dist, rt.eval_batch_size
    encoded = rt.encode_prompts(prompts)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].source))
    mine = dist.lockstep([order[s : s + batch_size] for s in range(0, len(order), batch_size)])
    texts: dict[int, tuple[str, int]] = {}
    model.eval()
    bar = tqdm(
        total=sum(len(c) for c, keep in mine if keep),
        desc=desc,
        unit="ex",
        leave=False,
        dynamic_ncols=True,
        disable=not dist.is_main,
    )
    for chunk, keep in mine:
        with dist.root_gathered():  # per batch: the root's last forward of a generation reshards it
            out = _generate_halving(model, rt, encoded, prompts, chunk)
        if keep:
            texts.update(out)
            bar.update(len(chunk))
    bar.close()
    for part in dist.all_gather(texts):
        texts.update(part)
    return (
        [texts[i][0] for i in range(len(prompts))],
        [texts[i][1] for i in range(len(prompts))],
        sum(e.truncated for e in encoded),
    )


def _generate_halving(model, rt: Runtime, encoded, prompts, chunk) -> dict[int, tuple[str, int]]:
    """Texts for the prompts in ``chunk``; out of memory halves the batch and goes on (not under FSDP, where
    every rank must make the same passes)."""
    texts, size = {}, len(chunk)
    while chunk:
        idx = chunk[:size]
        try:
            out = _generate_batch(model, rt, [encoded[i] for i in idx], [prompts[i] for i in idx])
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not _is_oom(e) or size == 1 or rt.dist.sharded:
                raise
            size = max(1, size // 2)
            if rt.device.type == "cuda":
                torch.cuda.empty_cache()
            tqdm.write(f"[nlora] out of memory in evaluation: batch of {len(idx)} -> {size}")
            continue
        texts.update(zip(idx, out))
        chunk = chunk[len(idx) :]
    return texts


def _generate_batch(model, rt: Runtime, encoded, prompts) -> list[tuple[str, int]]:
    tokenizer = rt.tokenizer
    with rt.autocast():
        batch = rt.family.generation_inputs(model, encoded, tokenizer.pad_token_id, rt.device, rt.shares_prefix())
        keep = last_logits(model, 1, rt.device) if accepts_logits_to_keep(model) else None
        if torch.is_tensor(keep):  # each step's last position by index (contiguous for the LM head), not HF's int 1
            batch["logits_to_keep"] = keep
        # synced: sharded ranks keep stepping until all have finished (their weight gathers must match)
        gen = model.generate(
            **batch,
            max_new_tokens=rt.max_target,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            synced_gpus=rt.dist.sharded,
        )
    # the release's gen_len: non-pad tokens of each generate output (for decoders, the prompt's included)
    lens = (gen != tokenizer.pad_token_id).sum(-1).tolist()
    answers = rt.family.decode_answers(tokenizer, gen, batch["input_ids"].shape[1], prompts, rt.compat)
    return list(zip(answers, lens))


def sequence_logprobs(model, batch: dict[str, torch.Tensor], family, keep_logits: bool = False) -> torch.Tensor:
    """Per row, the summed log-probability of its label tokens (labels != -100) given its prompt."""
    logits, targets = answer_logits(model, batch, family, keep_logits)
    logp = torch.log_softmax(logits.float(), -1)
    mask = targets != -100
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


@torch.no_grad()
def score_labels(model, rt: Runtime, prompts: list[str], labels: list[str], desc: str = "score") -> list[str]:
    """Label scoring: each prompt's prediction is the label (+ EOS) with the highest log-likelihood.

    An alternative to the reference's free generation that cannot produce an answer outside the label set
    (always the clean encoding, whatever ``rt.compat``). Each prompt is run once and every label scored from it
    (``scoring.candidate_logprobs``), batches of ``rt.eval_batch_size`` prompts; where that does not apply
    (soft prompts), every (prompt, label) pair is one row and batches hold whole candidate sets.
    """
    dist, family, pad_id = rt.dist, rt.family, rt.pad_id
    pairs = family.encode(
        rt.tokenizer, [Example(p, lab) for p in prompts for lab in labels], rt.max_source, rt.max_target
    )
    k = len(labels)
    cached = cached_scoring_applies(model)
    order = sorted(range(len(prompts)), key=lambda i: -len(pairs[i * k].source))
    per_batch = rt.eval_batch_size if cached else max(1, rt.eval_batch_size // k)
    mine = dist.lockstep([order[s : s + per_batch] for s in range(0, len(order), per_batch)])
    candidates = [pairs[j].target for j in range(k)]  # a label's tokens do not depend on the prompt
    best: dict[int, str] = {}
    keep_logits = rt.keeps_logits(model)
    model.eval()
    for chunk, keep in tqdm(mine, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=not dist.is_main):
        with rt.autocast():
            if cached:
                prompts_in = [pairs[i * k] for i in chunk]
                scores = family.candidate_logprobs(model, prompts_in, candidates, pad_id, rt.device, rt.shares_prefix())
            else:
                rows = [pairs[i * k + j] for i in chunk for j in range(k)]
                batch = rt.on_device(family.collate_train(rows, pad_id))
                scores = sequence_logprobs(model, batch, family, keep_logits).view(len(chunk), k)
        if keep:
            best.update((i, labels[j]) for i, j in zip(chunk, scores.argmax(-1).tolist()))
    for part in dist.all_gather(best):
        best.update(part)
    return [best[i] for i in range(len(prompts))]


def predict_tasks(model, rt: Runtime, tasks: list[TaskData]) -> list[TaskPredictions]:
    """Predictions for every task's test split: free greedy generation, or label scoring (``rt.eval_mode``
    "score", which has no counterpart in the release and always uses the clean encoding)."""
    results = []
    for task in tasks:
        examples = task.splits["test"]
        lens = truncated = None
        if rt.eval_mode == "score":
            preds = score_labels(model, rt, [e.prompt for e in examples], task.labels, desc=f"score {task.name}")
        else:
            preds, lens, truncated = generate_with_lengths(
                model, rt, [e.prompt for e in examples], desc=f"eval {task.name}"
            )
        results.append(
            TaskPredictions(
                task.name,
                task.category,
                [e.prompt for e in examples],
                [e.label for e in examples],
                preds,
                lens,
                truncated,
            )
        )
    return results


_ROUGE1 = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def rouge1(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-1 F-measure in percent, as the release's compute_metrics (stemmed, rounded to 4 places)."""
    n = max(len(references), 1)
    return round(100 * sum(_ROUGE1.score(r, p)["rouge1"].fmeasure for p, r in zip(predictions, references)) / n, 4)


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
    # the release's ROUGE-1 keys, overall, per dataset and per category
    out["predict_rouge1"] = rouge1(all_p, all_r)
    for t in preds:
        out[f"predict_rouge1_for_{t.task}"] = rouge1(t.predictions, t.references)
    for cat, (p, r) in by_category.items():
        out.setdefault(f"predict_rouge1_for_{cat}", rouge1(p, r))
    lens = [n for t in preds for n in (t.gen_lens or [])]
    if lens and all(t.gen_lens is not None for t in preds):  # generation only: label scoring generates nothing
        out["predict_gen_len"] = round(sum(lens) / len(lens), 4)
    if all(t.truncated is not None for t in preds):
        out["predict_truncated"] = sum(t.truncated for t in preds)
        for t in preds:
            out[f"predict_truncated_for_{t.task}"] = t.truncated
    out["predict_samples"] = len(all_r)
    out["predict_runtime"] = round(runtime_s, 3)
    out["predict_samples_per_second"] = round(len(all_r) / runtime_s, 3) if runtime_s > 0 else None
    return out


def prediction_rows(preds: list[TaskPredictions]) -> list[dict]:
    return [
        {"task": t.task, "prompt": p, "reference": r, "prediction": y, "exact_match": metrics.exact_match(y, r)}
        for t in preds
        for p, r, y in zip(t.prompts, t.references, t.predictions)
    ]


def release_prediction_rows(preds: list[TaskPredictions], labels: list[list[str]]) -> list[dict]:
    """The release's predict_eval_predictions.jsonl rows: Task (the category), Dataset, Instance (id, sentence,
    label, ground_truth, and its instruction template with "{0}" for the sentence) and Prediction.

    The sentence and template are read back from nlora's prompt (REFERENCE.md section 4); ``labels``: each
    task's label list, which makes up the prompt's option line. The id is the example's position in the
    evaluated test split (the file's index when the whole split is used, as the release does)."""
    rows = []
    for t, task_labels in zip(preds, labels):
        option = f"Option: {', '.join(task_labels)} \n"
        for i, (prompt, ref, pred) in enumerate(zip(t.prompts, t.references, t.predictions)):
            head, _, rest = prompt.partition("\n")
            dataset_line, _, rest = rest.partition("\n")
            body = rest.removesuffix("\n" + ANSWER_MARKER)
            at = body.find(option)
            instruction, sentence = (body[: at + len(option)], body[at + len(option) :]) if at >= 0 else ("", body)
            rows.append(
                {
                    "Task": head.removeprefix("Task:"),
                    "Dataset": dataset_line.removeprefix("Dataset:"),
                    "Instance": {
                        "id": str(i),
                        "sentence": sentence,
                        "label": ref,
                        "ground_truth": ref,
                        "instruction": f"{instruction}{{0}}\n{ANSWER_MARKER}",
                    },
                    "Prediction": pred,
                }
            )
    return rows
