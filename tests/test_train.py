"""The softmax head's training loop: it learns, it is seeded, it reports like retrain.py, and its numpy
gradient descent takes the steps TensorFlow's would, without importing TensorFlow."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrain import train
from retrain.train import EvalRecord, HParams, accuracy_and_cross_entropy, initial_softmax_head, train_head

REPO = Path(__file__).resolve().parents[1]


def _blobs(n: int, seed: int, classes: int = 3, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 3, size=(classes, dim))
    labels = rng.integers(0, classes, size=n).astype(np.int32)
    return (centres[labels] + rng.normal(0, 1, size=(n, dim))).astype(np.float32), labels


def _tf_gradients(
    layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, y: np.ndarray, keep: list[np.ndarray | None]
) -> list[np.ndarray]:
    """The reference: TensorFlow's gradients of the mean sparse softmax cross entropy, in float64,
    as [dW1, db1, dW2, db2, ...], with each layer's input multiplied by `keep[i]` (tf.nn.dropout's scaled mask)."""
    import tensorflow as tf

    variables = [tf.Variable(np.asarray(value, np.float64)) for layer in layers for value in layer]
    with tf.GradientTape() as tape:
        h = tf.constant(x, tf.float64)
        for index, (weights, biases) in enumerate(zip(variables[::2], variables[1::2], strict=True)):
            if keep[index] is not None:
                h = h * tf.constant(keep[index])
            h = tf.matmul(h, weights) + biases
            if index < len(layers) - 1:
                h = tf.nn.relu(h)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=h))
    return [gradient.numpy() for gradient in tape.gradient(loss, variables)]


@pytest.mark.parametrize(("hidden_units", "dropout"), [(0, 0.0), (0, 0.3), (16, 0.0), (16, 0.3)])
def test_learns_separable_classes_and_evaluates_on_schedule(hidden_units: int, dropout: float) -> None:
    x, y = _blobs(300, seed=1)
    vx, vy = _blobs(60, seed=2)
    records: list[EvalRecord] = []
    hparams = HParams(how_many_training_steps=205, eval_step_interval=50, learning_rate=0.05)
    hparams = HParams(**{**hparams.__dict__, "hidden_units": hidden_units, "dropout": dropout})
    head, history = train_head(x, y, vx, vy, 3, hparams, on_eval=records.append)
    assert [r.step for r in history] == [0, 50, 100, 150, 200, 204] and records == history
    assert history[-1].validation_count == 100  # a random batch with replacement, as in retrain.py
    accuracy, cross_entropy = accuracy_and_cross_entropy(head.probabilities(vx), vy)
    assert accuracy > 0.95 and cross_entropy < history[0].cross_entropy
    assert head.hidden_units == hidden_units and head.dropout == dropout
    assert all(a.dtype == np.float32 for layer in head.layers for a in layer)


@pytest.mark.parametrize("hparams", [HParams(), HParams(hidden_units=8, dropout=0.4)], ids=["linear", "hidden"])
def test_same_seed_same_weights_other_seed_other_weights(hparams: HParams) -> None:
    x, y = _blobs(100, seed=3)

    def weights(seed: int) -> list[np.ndarray]:
        seeded = HParams(**{**hparams.__dict__, "how_many_training_steps": 30, "random_seed": seed})
        return [a for layer in train_head(x, y, x[:20], y[:20], 3, seeded)[0].layers for a in layer]

    first, again, other = weights(7), weights(7), weights(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_hidden_layer_and_dropout_leave_the_batch_sequence_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Initialisation and dropout masks have their own generators; batches are drawn as retrain.py drew them."""
    x, y = _blobs(50, seed=8)
    seen: list[list[np.ndarray]] = []
    real_evaluate = train.evaluate

    def spy(probabilities, step, train_batch, validation, rng, validation_batch_size) -> EvalRecord:
        seen[-1].append(train_batch[0])
        return real_evaluate(probabilities, step, train_batch, validation, rng, validation_batch_size)

    monkeypatch.setattr(train, "evaluate", spy)
    for extra in ({}, {"hidden_units": 4}, {"hidden_units": 4, "dropout": 0.5}, {"dropout": 0.5}):
        seen.append([])
        train_head(x, y, x, y, 3, HParams(how_many_training_steps=40, eval_step_interval=1, **extra))
    assert all(np.array_equal(a, b) for batches in seen[1:] for a, b in zip(seen[0], batches, strict=True))


@pytest.mark.parametrize(("hidden_units", "dropout"), [(0, 0.0), (0, 0.5), (5, 0.0), (5, 0.5)])
def test_gradients_match_tensorflow(hidden_units: int, dropout: float) -> None:
    """The hand-written backward pass against tf.GradientTape, both in float64: equal to 1e-9 relative."""
    rng = np.random.default_rng(10)
    widths = [6, hidden_units, 4] if hidden_units else [6, 4]
    layers = [(rng.normal(0, 1, (a, b)), rng.normal(0, 0.5, b)) for a, b in itertools.pairwise(widths)]
    x, y = rng.normal(0, 1, (9, 6)), rng.integers(0, 4, 9).astype(np.int32)
    # Each layer input's multiplier, as tf.nn.dropout scales it: 0 if dropped, 1 / (1 - rate) if kept.
    keep = [(rng.random((9, w)) >= dropout) / (1 - dropout) if dropout else None for w in widths[:-1]]
    network = train._Network(layers, dropout, np.random.default_rng(0))
    network.gradients(x, y, keep)
    ours = [g for pair in zip(network.weight_gradients, network.bias_gradients, strict=True) for g in pair]
    for mine, reference in zip(ours, _tf_gradients(layers, x, y, keep), strict=True):
        np.testing.assert_allclose(mine, reference, rtol=1e-9, atol=1e-12)
    assert hidden_units == 0 or (network.weight_gradients[0] != 0).any()  # the ReLU passed something back


def test_huge_logits_give_finite_gradients() -> None:
    """The softmax is shifted by its maximum, so logits in the thousands neither overflow nor give NaN."""
    network = train._Network([(np.eye(3) * 1e4, np.zeros(3))], 0.0, np.random.default_rng(0))
    x, y = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), np.array([2, 1], dtype=np.int32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # exp may underflow to 0
        network.gradients(x, y, [None])
    # Row 0 is certain of class 0 but labelled 2: descent lowers W[0, 0] and raises W[0, 2]; row 1 is right.
    np.testing.assert_allclose(network.weight_gradients[0], [[0.5, 0, -0.5], [0, 0, 0], [0, 0, 0]], atol=1e-12)


def test_train_head_takes_tensorflows_steps_on_retrains_batches() -> None:
    """Steps from `initial_softmax_head`, on retrain.py's batch sequence (validation draws interleaved),
    match gradient descent on TensorFlow's gradients to float32 rounding (1e-6 relative)."""
    x, y = _blobs(40, seed=11, dim=8)
    vx, vy = _blobs(15, seed=12, dim=8)
    hparams = HParams(
        how_many_training_steps=25,
        eval_step_interval=10,
        learning_rate=0.5,
        train_batch_size=6,
        validation_batch_size=7,
        hidden_units=5,
        random_seed=3,
    )
    head, history = train_head(x, y, vx, vy, 3, hparams)
    assert [r.step for r in history] == [0, 10, 20, 24] and history[-1].validation_count == 7

    start = [tuple(a.astype(np.float64) for a in layer) for layer in initial_softmax_head(8, 3, hparams).layers]
    layers = [list(layer) for layer in start]
    rng = np.random.default_rng(hparams.random_seed)
    for step in range(hparams.how_many_training_steps):
        batch = rng.integers(0, len(y), size=hparams.train_batch_size, dtype=np.int32)
        gradients = _tf_gradients(layers, x[batch], y[batch], [None, None])
        for index, layer in enumerate(layers):
            layer[0] = layer[0] - hparams.learning_rate * gradients[2 * index]
            layer[1] = layer[1] - hparams.learning_rate * gradients[2 * index + 1]
        if step % hparams.eval_step_interval == 0 or step + 1 == hparams.how_many_training_steps:
            rng.integers(0, len(vy), size=hparams.validation_batch_size)  # evaluate's validation batch
    for trained, reference, initial in zip(head.layers, layers, start, strict=True):
        for mine, expected, before in zip(trained, reference, initial, strict=True):
            assert np.abs(expected - before).max() > 1e-2  # the steps moved every array
            np.testing.assert_allclose(mine, expected, rtol=1e-6, atol=1e-8)


def test_initial_head_is_truncated_normal_and_what_training_starts_from() -> None:
    hparams = HParams(hidden_units=64, random_seed=5)
    head = initial_softmax_head(1280, 10, hparams)
    (hidden, hidden_bias), (final, final_bias) = head.layers
    assert hidden.shape == (1280, 64) and final.shape == (64, 10) and head.dropout == 0.0
    assert all(a.dtype == np.float32 for a in (hidden, hidden_bias, final, final_bias))
    assert not hidden_bias.any() and not final_bias.any()
    he = np.sqrt(2 / 1280)
    assert np.abs(hidden).max() < 2 * he and np.abs(final).max() < 2 * 0.001  # TF redraws beyond 2 stddev
    assert np.std(hidden) / he == pytest.approx(0.88, abs=0.01)  # a normal truncated at 2 sigma has std 0.88 sigma
    x, y = _blobs(5, seed=0, classes=10, dim=1280)
    start, _ = train_head(x, y, x[:0], y[:0], 10, HParams(**{**hparams.__dict__, "how_many_training_steps": 0}))
    assert all(
        np.array_equal(a, b) for pair in zip(start.layers, head.layers, strict=True) for a, b in zip(*pair, strict=True)
    )


def test_training_never_imports_tensorflow() -> None:
    """A rerun on cached bottlenecks must not pay TensorFlow's import (~5 s, ~0.5 GB)."""
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "from retrain.train import HParams, train_head\n"
        "x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)\n"
        "y = (x[:, 0] > 0).astype(np.int32)\n"
        "head, _ = train_head(x, y, x, y, 2, HParams(how_many_training_steps=20, hidden_units=4, dropout=0.2))\n"
        "head.probabilities(x)\n"
        "print(json.dumps(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(result.stdout.splitlines()[-1]) == []


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
    steps: dict[str, set[int]] = {}
    for split in ("train", "validation"):
        (event_file,) = (tmp_path / split).iterdir()
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                tags.setdefault(split, set()).add(value.tag)
                steps.setdefault(split, set()).add(event.step)
    assert tags == {"train": {"accuracy", "cross_entropy"}, "validation": {"accuracy", "cross_entropy"}}
    assert steps == {"train": {0, 10, 20}, "validation": {0, 10, 20}}


@pytest.mark.parametrize("count", [0, 5])
def test_accuracy_of_empty_and_perfect_sets(count: int) -> None:
    x, y = _blobs(count, seed=6)
    head, _ = train_head(*_blobs(200, seed=7), x, y, 3, HParams(how_many_training_steps=200, learning_rate=0.05))
    accuracy, _ = accuracy_and_cross_entropy(head.probabilities(x), y)
    assert np.isnan(accuracy) if count == 0 else accuracy == 1.0
