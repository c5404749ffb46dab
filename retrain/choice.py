"""Which bottleneck features suit the data, decided on images the head does not train on.

The same backbone makes good features for photos from its final layer and for small plain images
(digits, icons, scans) from a middle layer pooled on a grid; no single default fits both. So
retrain computes every candidate feature set in one forward pass, trains the head on each (the
vectors are cached, so that costs seconds), and keeps the one that scores best on the validation
split, or, when there is none, in cross-validation on the training images. Never on the test
split: its accuracy stays an honest estimate for the model that was chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from retrain.crossval import cross_validate
from retrain.heads import Head
from retrain.train import accuracy_and_cross_entropy

Fit = Callable[[np.ndarray, np.ndarray], Head]


@dataclass(frozen=True)
class Candidate:
    """A feature set and how a head trained on it scored on the held-out images."""

    name: str
    dims: int
    accuracy: float
    cross_entropy: float | None  # None under cross-validation, which scores predictions only

    def to_json(self) -> dict:
        scores = {"accuracy": self.accuracy, "cross_entropy": self.cross_entropy}
        return {"features": self.name, "dims": self.dims, **scores}


@dataclass(frozen=True)
class FeatureChoice:
    method: str  # what the candidates were scored on
    candidates: list[Candidate]
    chosen: str

    def to_json(self) -> dict:
        return {"method": self.method, "chosen": self.chosen, "candidates": [c.to_json() for c in self.candidates]}


def choose_features(
    columns: dict[str, np.ndarray],
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    fit: Fit,
    seed: int = 0,
) -> FeatureChoice:
    """Scores each feature set (`columns[name]`: its columns of the joint vectors) and picks the best:
    the highest accuracy, then the lowest cross entropy, then the earliest in `columns`' order."""
    (x, y), (vx, vy) = train, validation
    if len(vy):
        method = f"validation split ({len(vy)} images)"
    else:
        method = f"cross-validation over the {len(y)} training images"
    candidates = []
    for name, index in columns.items():
        if len(vy):
            accuracy, cross_entropy = accuracy_and_cross_entropy(fit(x[:, index], y).probabilities(vx[:, index]), vy)
        else:
            accuracy, cross_entropy = cross_validate(x[:, index], y, fit, seed).accuracy, None
        candidates.append(Candidate(name, len(index), accuracy, cross_entropy))
    best = max(enumerate(candidates), key=lambda item: (item[1].accuracy, -(item[1].cross_entropy or 0.0), -item[0]))[1]
    return FeatureChoice(method, candidates, best.name)
