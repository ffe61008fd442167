"""Metrics of the AdaptLLM suites: accuracy, micro-/weighted-F1, entity F1 (NER) and numeric match (ConvFinQA).

All return fractions in [0, 1]. ``micro_f1`` / ``weighted_f1`` are scikit-learn's ``f1_score`` over the gold and
predicted label strings. Entity F1 and the numeric match are written here because no library defines AdaptLLM's
conventions:

- ``parse_entities``: a generated or gold NER answer lists entities one per line or separated by ";", each as
  "<entity text>, <type>" (the type after the LAST comma). Case and surrounding spaces/punctuation are ignored; a
  line without a comma is not an entity. Duplicates count once.
- ``entity_f1``: micro F1 over all rows of the (text, type) pairs: 2·TP / (2·TP + FP + FN); 1.0 when both sides
  are empty everywhere.
- ``numeric_match``: the first number of the generation (currency signs, "%" and thousands separators dropped,
  see ``math_answers.parse_number``) is within ``tol`` = 1e-2 (absolute) of the gold number.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from sklearn.metrics import f1_score

from tasks.evaluation.math_answers import parse_number


def accuracy(predictions: Sequence, golds: Sequence) -> float:
    if len(predictions) != len(golds):
        raise ValueError(f"accuracy: {len(predictions)} predictions for {len(golds)} golds")
    if not golds:
        raise ValueError("accuracy of an empty set")
    return sum(p == g for p, g in zip(predictions, golds)) / len(golds)


def micro_f1(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Micro-averaged F1 over the label set (equals accuracy for single-label tasks)."""
    return float(f1_score(list(golds), list(predictions), average="micro"))


def weighted_f1(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Per-class F1 averaged with weights = the gold support of each class."""
    return float(f1_score(list(golds), list(predictions), average="weighted", zero_division=0))


def grouped_weighted_f1(predictions: Sequence[str], golds: Sequence[str], groups: Sequence) -> float:
    """Weighted F1 computed separately within each group (e.g. Headline's sub-questions) and averaged."""
    by_group: dict = {}
    for p, g, k in zip(predictions, golds, groups):
        by_group.setdefault(k, ([], []))
        by_group[k][0].append(p)
        by_group[k][1].append(g)
    scores = [weighted_f1(p, g) for p, g in by_group.values()]
    return sum(scores) / len(scores)


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(".;:'\"").strip()).lower()


def parse_entities(answer: str | None) -> set[tuple[str, str]]:
    """{(entity text, type)} of an NER answer such as "Apple Inc., organization; Tim Cook, person"."""
    if not answer:
        return set()
    entities = set()
    for item in re.split(r"[\n;]", answer):
        if "," not in item:
            continue
        text, _, etype = item.rpartition(",")
        text, etype = _clean(text), _clean(etype)
        if text and etype:
            entities.add((text, etype))
    return entities


def entity_f1(predicted_answers: Sequence[str | None], gold_answers: Sequence[str]) -> float:
    """Micro entity-level F1 over the corpus (see module docstring)."""
    tp = fp = fn = 0
    for pred, gold in zip(predicted_answers, gold_answers):
        p, g = parse_entities(pred), parse_entities(gold)
        tp += len(p & g)
        fp += len(p - g)
        fn += len(g - p)
    if tp + fp + fn == 0:
        return 1.0
    return 2 * tp / (2 * tp + fp + fn)


def numeric_match(generation: str | None, gold: str, tol: float = 1e-2) -> bool:
    """Whether the first number of ``generation`` is within ``tol`` of the gold number."""
    pred, ref = parse_number(generation), parse_number(gold)
    return pred is not None and ref is not None and abs(pred - ref) <= tol
