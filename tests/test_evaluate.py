"""Evaluation paths: label scoring against a brute-force likelihood, and a run in score mode."""

import json

import torch

from nlora.batching import encode
from nlora.cli import main
from nlora.data import Example
from nlora.evaluate import score_labels
from nlora.models import load_model
from nlora.runtime import Runtime

LABELS = ["World", "Sports", "Sci/Tech"]


def brute_force_choice(model, tok, prompt, seq2seq):
    """One unpadded forward per (prompt, label): the label (+ EOS) with the highest summed log-probability."""
    best, best_score = None, None
    for label in LABELS:
        e = encode(tok, [Example(prompt, label)], seq2seq, 512, 50)[0]
        with torch.no_grad():
            if seq2seq:
                logits = model(input_ids=torch.tensor([e.source]), labels=torch.tensor([e.target])).logits[0]
                logp = torch.log_softmax(logits.float(), -1)
                score = sum(logp[i, t].item() for i, t in enumerate(e.target))
            else:
                ids = e.source + e.target
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
                score = sum(logp[len(e.source) - 1 + i, t].item() for i, t in enumerate(e.target))
        if best_score is None or score > best_score:
            best, best_score = label, score
    return best


def test_score_mode_matches_brute_force(model_dirs, model_kind):
    loaded = load_model(str(model_dirs[model_kind]))
    loaded.model.eval()
    prompts = [f"Task:TC\nDataset:topic\nheadline number {i} {'x' * (3 * i)}\nAnswer:" for i in range(7)]
    rt = Runtime(loaded.tokenizer, loaded.family, torch.device("cpu"), max_source=512, max_target=50, eval_batch_size=6)
    got = score_labels(loaded.model, rt, prompts, LABELS)
    assert got == [brute_force_choice(loaded.model, loaded.tokenizer, p, loaded.seq2seq) for p in prompts]


def test_run_in_score_mode(model_dirs, data_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--model",
                str(model_dirs["llama"]),
                "--data-dir",
                str(data_dir),
                "--output-dir",
                str(out),
                "--tasks",
                "topic,mood",
                "--max-train-per-task",
                "8",
                "--max-test-per-task",
                "4",
                "--eval-mode",
                "score",
                "--eval-batch-size",
                "8",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in (out / "tasks" / "02-mood" / "predictions.jsonl").read_text().splitlines()]
    labels = {"topic": {"World", "Sports"}, "mood": {"positive", "negative"}}
    assert rows and all(r["prediction"] in labels[r["task"]] for r in rows)
