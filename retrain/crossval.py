"""Cross-validated accuracy for image sets too small to hold out a test split.

With one to five images per class every image is needed for training, so a test accuracy would
rest on images the model has seen. Instead the head is refitted on all but one fold of the
labelled vectors and scored on that fold, for every fold: leave-one-out up to `MAX_FOLDS` images,
stratified `MAX_FOLDS`-fold beyond. Cheap, because heads train on cached vectors in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from retrain.heads import Head

MAX_FOLDS = 10


@dataclass(frozen=True)
class CrossValidation:
    method: str  # "leave-one-out" or "10-fold"
    folds: int
    labels: np.ndarray  # the true class of each image
    predictions: np.ndarray  # its class as predicted by the head fitted without its fold

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.predictions == self.labels))

    def describe(self) -> str:
        return f"{self.method} cross-validation over {len(self.labels)} images"

    def to_json(self) -> dict:
        return {"method": self.method, "folds": self.folds, "images": len(self.labels), "accuracy": self.accuracy}


def fold_of_each(labels: np.ndarray, seed: int) -> np.ndarray:
    """Fold numbers: one per image up to MAX_FOLDS images, else classes dealt round-robin into folds."""
    if len(labels) <= MAX_FOLDS:
        return np.arange(len(labels))
    order = np.random.default_rng(seed).permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # shuffled within each class, classes in turn
    folds = np.empty(len(labels), dtype=np.int64)
    folds[order] = np.arange(len(labels)) % MAX_FOLDS
    return folds


def cross_validate(
    features: np.ndarray, labels: np.ndarray, fit: Callable[[np.ndarray, np.ndarray], Head], seed: int = 0
) -> CrossValidation:
    """Refits the head without each fold (`fit(features, labels)`) and predicts that fold."""
    folds = fold_of_each(labels, seed)
    predictions = np.empty(len(labels), dtype=np.int64)
    for fold in np.unique(folds):
        held_out = folds == fold
        head = fit(features[~held_out], labels[~held_out])
        predictions[held_out] = np.argmax(head.probabilities(features[held_out]), axis=1)
    count = int(folds.max()) + 1
    method = "leave-one-out" if count == len(labels) else f"{count}-fold"
    return CrossValidation(method, count, labels.copy(), predictions)
