"""Which bottleneck features suit the data, decided on images the head does not train on.

The same backbone makes good features for photos from its final layer and for small plain images
(digits, icons, scans) from a middle layer pooled on a grid; no single default fits both. So
retrain computes every candidate feature set in one forward pass, trains the head on each (the
vectors are cached, so that costs seconds), and scores each on the validation split, or, when there
is none, in cross-validation on the training images. Never on the test split: its accuracy stays
an honest estimate for the model that was chosen.

On a few dozen validation images the most accurate candidate is often just the luckiest. So the
choice leans on what experiment g (docs/experiments.md) measured over many draws: some candidates
are preferred (final+middle, which holds the other two sets), and the most accurate of those is
kept unless another is ahead by more than one standard error, the one-standard-error rule of
model selection.

The scores are a pure function of the vectors, the labels, how heads are fitted and the code that
fits and scores them, so a rerun on the same cached vectors reads them back (`ChoiceMemo`, keyed
by a digest of all of those) instead of training every candidate again, and says so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import retrain
from retrain.crossval import cross_validate
from retrain.files import replacing
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

    @classmethod
    def from_json(cls, data: dict) -> Candidate:
        return cls(data["features"], data["dims"], data["accuracy"], data["cross_entropy"])


@dataclass(frozen=True)
class FeatureChoice:
    method: str  # what the candidates were scored on
    candidates: list[Candidate]
    chosen: str
    reason: str  # why `chosen`, in a sentence the log prints
    remembered: bool = False  # read back from an earlier run on the same vectors, not scored now

    def to_json(self) -> dict:
        candidates = [c.to_json() for c in self.candidates]
        return {"method": self.method, "chosen": self.chosen, "reason": self.reason, "candidates": candidates}

    @classmethod
    def from_json(cls, data: dict) -> FeatureChoice:
        candidates = [Candidate.from_json(c) for c in data["candidates"]]
        return cls(data["method"], candidates, data["chosen"], data["reason"])


def choose_features(
    columns: dict[str, np.ndarray],
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    fit: Fit,
    seed: int = 0,
    preferred: Collection[str] = (),
) -> FeatureChoice:
    """Scores each feature set (`columns[name]`: its columns of the joint vectors) on held-out
    images and picks one as `pick` does."""
    (x, y), (vx, vy) = train, validation
    if len(vy):
        method = f"validation split ({len(vy)} images)"
    else:
        method = f"cross-validation over the {len(y)} training images"
    candidates, right = [], {}
    for name, index in columns.items():
        if len(vy):
            probabilities = fit(x[:, index], y).probabilities(vx[:, index])
            accuracy, cross_entropy = accuracy_and_cross_entropy(probabilities, vy)
            right[name] = np.argmax(probabilities, axis=1) == vy
        else:
            folds = cross_validate(x[:, index], y, fit, seed)
            accuracy, cross_entropy = folds.accuracy, None
            right[name] = folds.predictions == folds.labels
        candidates.append(Candidate(name, len(index), accuracy, cross_entropy))
    chosen, reason = pick(candidates, right, preferred)
    return FeatureChoice(method, candidates, chosen, reason)


def pick(candidates: list[Candidate], right: dict[str, np.ndarray], preferred: Collection[str]) -> tuple[str, str]:
    """The most accurate of the `preferred` candidates (all, if none is), unless another is ahead of
    it by more than one standard error; and why. Ties go to the lower cross entropy, then to the
    earlier candidate. The standard error is the paired difference's, from the held-out images
    (`right[name]`: which ones each gets right): the square root of the number that exactly one of
    the two gets right."""

    def most_accurate(among: list[Candidate]) -> Candidate:  # max keeps the first of equals: the earlier
        return max(among, key=lambda c: (c.accuracy, -(c.cross_entropy or 0.0)))

    best = most_accurate(candidates)
    keep = most_accurate([c for c in candidates if c.name in preferred] or candidates)
    if keep is best:
        return best.name, "the most accurate" + (" and preferred" if best.name in preferred else "")
    lead = int(right[best.name].sum()) - int(right[keep.name].sum())
    error = float(np.sqrt(np.sum(right[best.name] != right[keep.name])))
    if lead == 0:
        return keep.name, f"preferred, and as accurate as {best.name}"
    within = lead <= error
    margin = f"{_images(lead)}, {'within' if within else 'more than'} one standard error ({error:.1f})"
    if within:
        return keep.name, f"preferred: {best.name} is ahead by {margin}"
    return best.name, f"ahead of the preferred {keep.name} by {margin}"


def _images(count: int) -> str:
    return f"{count} image" + ("" if count == 1 else "s")


SCORING_CODE = ("choice.py", "crossval.py", "heads.py", "train.py")
"""The modules whose code decides the scores: a remembered choice is keyed by their source too."""


class ChoiceMemo:
    """Choices already made, one JSON file each under `directory`, named by the digest of their inputs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def key(
        columns: dict[str, np.ndarray],
        train: tuple[np.ndarray, np.ndarray],
        validation: tuple[np.ndarray, np.ndarray],
        fitted_by: str,
        seed: int,
        preferred: Collection[str] = (),
    ) -> str:
        """A digest of everything `choose_features` reads; `fitted_by` describes `fit` (head and hparams)."""
        digest = hashlib.sha256(f"{retrain.__version__}|{fitted_by}|{seed}|{sorted(preferred)}".encode())
        for name in SCORING_CODE:
            digest.update((Path(__file__).parent / name).read_bytes())
        for name, index in columns.items():
            digest.update(name.encode() + np.ascontiguousarray(index, np.int64).tobytes())
        for array in (*train, *validation):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype}{array.shape}".encode() + array.tobytes())
        return digest.hexdigest()[:32]

    def recall(self, key: str) -> FeatureChoice | None:
        """The choice stored under `key`, or None (never stored, or unreadable: then it is scored again)."""
        try:
            data = json.loads((self.directory / f"{key}.json").read_text())
            return replace(FeatureChoice.from_json(data), remembered=True)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remember(self, key: str, choice: FeatureChoice) -> None:
        """Stores `choice` atomically; a cache that cannot be written costs the next run its reuse, nothing else."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with replacing(self.directory / f"{key}.json") as temporary:
                temporary.write_text(json.dumps(choice.to_json(), indent=1))
        except OSError:
            pass
