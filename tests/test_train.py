"""The softmax head's training loop: it learns, it is seeded, it reports like retrain.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrain.train import EvalRecord, HParams, accuracy_and_cross_entropy, train_head


def _blobs(n: int, seed: int, classes: int = 3, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 3, size=(classes, dim))
    labels = rng.integers(0, classes, size=n).astype(np.int32)
    return (centres[labels] + rng.normal(0, 1, size=(n, dim))).astype(np.float32), labels


def test_learns_separable_classes_and_evaluates_on_schedule() -> None:
    x, y = _blobs(300, seed=1)
    vx, vy = _blobs(60, seed=2)
    records: list[EvalRecord] = []
    hparams = HParams(how_many_training_steps=205, eval_step_interval=50, learning_rate=0.05)
    head, history = train_head(x, y, vx, vy, 3, hparams, on_eval=records.append)
    assert [r.step for r in history] == [0, 50, 100, 150, 200, 204] and records == history
    assert history[-1].validation_count == 100  # a random batch with replacement, as in retrain.py
    accuracy, cross_entropy = accuracy_and_cross_entropy(head.probabilities(vx), vy)
    assert accuracy > 0.95 and cross_entropy < history[0].cross_entropy


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    x, y = _blobs(100, seed=3)

    def weights(seed: int) -> np.ndarray:
        hparams = HParams(how_many_training_steps=30, random_seed=seed)
        return train_head(x, y, x[:0], y[:0], 3, hparams)[0].layers[-1][0]

    np.testing.assert_array_equal(weights(7), weights(7))
    assert not np.array_equal(weights(7), weights(8))


def test_no_validation_set_and_whole_set_validation() -> None:
    x, y = _blobs(50, seed=4)
    _, history = train_head(x, y, x[:0], y[:0], 3, HParams(how_many_training_steps=3, eval_step_interval=1))
    assert all(r.validation_accuracy is None and r.validation_count == 0 for r in history)
    hparams = HParams(how_many_training_steps=1, validation_batch_size=-1)
    _, history = train_head(x, y, x[:7], y[:7], 3, hparams)
    assert history[0].validation_count == 7


def test_summaries_dir_gets_tensorboard_scalars(tmp_path: Path) -> None:
    import tensorflow as tf

    x, y = _blobs(50, seed=5)
    hparams = HParams(how_many_training_steps=21, eval_step_interval=10)
    train_head(x, y, x, y, 3, hparams, summaries_dir=tmp_path)
    tags: dict[str, set[str]] = {}
    for split in ("train", "validation"):
        (event_file,) = (tmp_path / split).iterdir()
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                tags.setdefault(split, set()).add(value.tag)
    assert tags == {"train": {"accuracy", "cross_entropy"}, "validation": {"accuracy", "cross_entropy"}}


@pytest.mark.parametrize("count", [0, 5])
def test_accuracy_of_empty_and_perfect_sets(count: int) -> None:
    x, y = _blobs(count, seed=6)
    head, _ = train_head(*_blobs(200, seed=7), x, y, 3, HParams(how_many_training_steps=200, learning_rate=0.05))
    accuracy, _ = accuracy_and_cross_entropy(head.probabilities(x), y)
    assert np.isnan(accuracy) if count == 0 else accuracy == 1.0
