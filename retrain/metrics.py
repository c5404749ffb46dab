"""Per-class precision, recall and F1 on a held-out set.

Overall accuracy hides the classes a model gets wrong: 90% on ten classes can be 100% on nine and
0% on the tenth. These numbers name that class. Numpy only, so they can be computed and tested
without TensorFlow; the definitions match scikit-learn's `precision_recall_fscore_support` with
`zero_division=0` (a class never predicted has precision 0, a class never present has recall 0).

Macro averages are over the classes present in the scored images (support > 0) and say how many
of all classes that is: a class with no test image has no recall to average, and counting it as 0
put a macro F1 of 0.13 beside a test accuracy of 100% (3 classes tested of 23).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LABEL_WIDTH = 24
"""Longest label shown in the log table; longer ones are cut in the middle."""


@dataclass(frozen=True)
class ClassMetrics:
    """How well one class is recognised; `support` is how many images truly belong to it."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): rows are the truth, columns the prediction (int64)."""
    true = np.asarray(true, dtype=np.int64).ravel()
    predicted = np.asarray(predicted, dtype=np.int64).ravel()
    if true.shape != predicted.shape:
        raise ValueError(f"true and predicted differ in length: {true.size} vs {predicted.size}")
    for name, values in (("true", true), ("predicted", predicted)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} class indices must be in [0, {num_classes}), got {values.min()}..{values.max()}")
    flat = np.bincount(true * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def per_class_metrics(true: np.ndarray, predicted: np.ndarray, labels: list[str]) -> list[ClassMetrics]:
    """Precision, recall, F1 and support of every class, in label order (0 where undefined)."""
    matrix = confusion_matrix(true, predicted, len(labels))
    hits = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    precision = _divide(hits, predicted_count)
    recall = _divide(hits, support)
    f1 = _divide(2 * precision * recall, precision + recall)
    return [
        ClassMetrics(label, float(p), float(r), float(f), int(s))
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    ]


def averaged(metrics: list[ClassMetrics]) -> list[ClassMetrics]:
    """The classes a macro average is over: those with images among the scored ones (support > 0)."""
    return [m for m in metrics if m.support > 0]


def macro_f1(metrics: list[ClassMetrics]) -> float:
    """Unweighted mean F1 over the classes with support: each counts the same, however many images it
    has; a class without any is left out, not counted as 0 (0.0 when no class has support)."""
    present = averaged(metrics)
    return float(np.mean([m.f1 for m in present])) if present else 0.0


def format_per_class(metrics: list[ClassMetrics], scored: str = "test images") -> list[str]:
    """An aligned text table for the log: a header, one line per class, then the macro average, which
    says how many of the classes it is over: those with `scored` images."""
    width = max([len("Class"), len("macro avg"), *(len(shorten_label(m.label)) for m in metrics)])
    lines = [f"{'Class':<{width}}  {'Precision':>9}  {'Recall':>6}  {'F1':>5}  {'Support':>7}"]
    for m in metrics:
        lines.append(_row(shorten_label(m.label), width, m.precision, m.recall, m.f1, m.support))
    present = averaged(metrics)
    if present:
        mean_precision = float(np.mean([m.precision for m in present]))
        mean_recall = float(np.mean([m.recall for m in present]))
        total = sum(m.support for m in present)
        row = _row("macro avg", width, mean_precision, mean_recall, macro_f1(metrics), total)
        lines.append(f"{row}  ({len(present)} of {len(metrics)} classes with {scored})")
    return lines


def to_json(metrics: list[ClassMetrics]) -> list[dict]:
    """The metrics as plain dicts for model.json, rounded to 4 decimals."""
    return [
        {
            "label": m.label,
            "precision": round(m.precision, 4),
            "recall": round(m.recall, 4),
            "f1": round(m.f1, 4),
            "support": m.support,
        }
        for m in metrics
    ]


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, with 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator == 0, 1.0, denominator)
    return np.where(denominator == 0, 0.0, numerator / safe)


def shorten_label(label: str, width: int = LABEL_WIDTH) -> str:
    """`label` cut to `width` characters in the middle ("great_white_…_underwater"), because labels
    that share a long prefix usually differ at the end (`..._v1`, `..._v2`)."""
    if len(label) <= width:
        return label
    tail = (width - 1) // 2
    return label[: width - 1 - tail] + "…" + label[len(label) - tail :]


def _row(label: str, width: int, precision: float, recall: float, f1: float, support: int) -> str:
    return f"{label:<{width}}  {precision:>9.3f}  {recall:>6.3f}  {f1:>5.3f}  {support:>7d}"
