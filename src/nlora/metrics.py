"""Exact match and ROUGE-L as the reference computes them, and the continual-learning summaries."""

from __future__ import annotations

import string

from rouge_score import rouge_scorer

_PUNCT = set(string.punctuation)
_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def rouge_l(prediction: str, reference: str) -> float:
    return _ROUGE.score(reference, prediction)["rougeL"].fmeasure


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Percentages, as the reference reports them."""
    n = max(len(references), 1)
    return {
        "exact_match": round(100 * sum(map(exact_match, predictions, references)) / n, 4),
        "rougeL": round(100 * sum(map(rouge_l, predictions, references)) / n, 4),
    }


def average_accuracy(matrix: list[list[float | None]]) -> float | None:
    """AA: mean over tasks of the accuracy after the last task."""
    last = matrix[-1] if matrix else []
    vals = [v for v in last if v is not None]
    return sum(vals) / len(vals) if vals and len(vals) == len(last) else None


def backward_transfer(matrix: list[list[float | None]]) -> float | None:
    """BWT = mean over j < n of a[n][j] - a[j][j] (negative means forgetting); None for one task."""
    n = len(matrix)
    if n < 2:
        return None
    pairs = [(matrix[-1][j], matrix[j][j]) for j in range(n - 1)]
    if any(a is None or b is None for a, b in pairs):  # e.g. MTL: evaluated only once, at the end
        return None
    return sum(a - b for a, b in pairs) / (n - 1)


def forward_transfer(matrix: list[list[float | None]], zero_shot: list[float | None]) -> float | None:
    """FWT = mean over j > 0 of a[j-1][j] - b[j] (b: the starting model's score); needs the full matrix."""
    n = len(matrix)
    terms = [
        matrix[j - 1][j] - zero_shot[j]
        for j in range(1, n)
        if matrix[j - 1][j] is not None and zero_shot[j] is not None
    ]
    return sum(terms) / len(terms) if n > 1 and len(terms) == n - 1 else None
