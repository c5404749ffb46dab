"""The softmax head's training loop: it learns, it is seeded, it reports like retrain.py, its numpy
gradient descent takes the steps TensorFlow's would and its Adam the steps Keras's would, without
importing TensorFlow; and its standardisation is shrunk for few images and folded into the head."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrain import train
from retrain.heads import SoftmaxHead
from retrain.train import (
    EvalRecord,
    HParams,
    accuracy_and_cross_entropy,
    head_learning_rate,
    initial_softmax_head,
    train_head,
)

REPO = Path(__file__).resolve().parents[1]
# retrain.py's loop: plain gradient descent on raw features, no penalty.
SGD_RAW = {"optimizer": "sgd", "l2_regularizer": 0.0, "standardize": False}


def _blobs(n: int, seed: int, classes: int = 3, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 3, size=(classes, dim))
    labels = rng.integers(0, classes, size=n).astype(np.int32)
    return (centres[labels] + rng.normal(0, 1, size=(n, dim))).astype(np.float32), labels


def _tf_gradients(
    layers: list[tuple[np.ndarray, np.ndarray]],
    x: np.ndarray,
    y: np.ndarray,
    keep: list[np.ndarray | None],
    l2: float = 0.0,
) -> list[np.ndarray]:
    """The reference: TensorFlow's gradients of the mean sparse softmax cross entropy plus (l2 / 2) times the
    weight matrices' squared norms, in float64, as [dW1, db1, dW2, db2, ...], with each layer's input
    multiplied by `keep[i]` (tf.nn.dropout's scaled mask)."""
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
        loss += l2 / 2 * tf.add_n([tf.reduce_sum(tf.square(weights)) for weights in variables[::2]])
    return [gradient.numpy() for gradient in tape.gradient(loss, variables)]


@pytest.mark.parametrize("settings", [{}, {**SGD_RAW, "learning_rate": 0.05}], ids=["default", "sgd"])
@pytest.mark.parametrize(("hidden_units", "dropout"), [(0, 0.0), (0, 0.3), (16, 0.0), (16, 0.3)])
def test_learns_separable_classes_and_evaluates_on_schedule(hidden_units: int, dropout: float, settings: dict) -> None:
    x, y = _blobs(300, seed=1)
    vx, vy = _blobs(60, seed=2)
    records: list[EvalRecord] = []
    hparams = HParams(
        how_many_training_steps=205, eval_step_interval=50, hidden_units=hidden_units, dropout=dropout, **settings
    )
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


@pytest.mark.parametrize("l2", [0.0, 0.3])
@pytest.mark.parametrize(("hidden_units", "dropout"), [(0, 0.0), (0, 0.5), (5, 0.0), (5, 0.5)])
def test_gradients_match_tensorflow(hidden_units: int, dropout: float, l2: float) -> None:
    """The hand-written backward pass, L2 penalty included, against tf.GradientTape, both in float64:
    equal to 1e-9 relative."""
    rng = np.random.default_rng(10)
    widths = [6, hidden_units, 4] if hidden_units else [6, 4]
    layers = [(rng.normal(0, 1, (a, b)), rng.normal(0, 0.5, b)) for a, b in itertools.pairwise(widths)]
    x, y = rng.normal(0, 1, (9, 6)), rng.integers(0, 4, 9).astype(np.int32)
    # Each layer input's multiplier, as tf.nn.dropout scales it: 0 if dropped, 1 / (1 - rate) if kept.
    keep = [(rng.random((9, w)) >= dropout) / (1 - dropout) if dropout else None for w in widths[:-1]]
    network = train._Network(layers, dropout, np.random.default_rng(0), l2_regularizer=l2)
    network.gradients(x, y, keep)
    ours = [g for pair in zip(network.weight_gradients, network.bias_gradients, strict=True) for g in pair]
    for mine, reference in zip(ours, _tf_gradients(layers, x, y, keep, l2), strict=True):
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
    """With retrain.py's settings (sgd, raw features, no penalty), steps from `initial_softmax_head`, on
    retrain.py's batch sequence (validation draws interleaved), match gradient descent on TensorFlow's
    gradients to float32 rounding (1e-6 relative)."""
    x, y = _blobs(40, seed=11, dim=8)
    vx, vy = _blobs(15, seed=12, dim=8)
    hparams = HParams(
        **SGD_RAW,
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


def test_sgd_on_raw_features_is_the_unchanged_loop() -> None:
    """optimizer="sgd", l2_regularizer=0, standardize=False step exactly as retrain.py's loop did: a copy of it
    (the code before Adam, the penalty and the standardisation came in) gives bit-identical weights."""
    x, y = _blobs(60, seed=13, dim=8)
    hparams = HParams(how_many_training_steps=50, learning_rate=0.2, hidden_units=6, dropout=0.3, **SGD_RAW)
    head, _ = train_head(x, y, x[:0], y[:0], 3, hparams)
    network = train._Network(
        train._initial_layers(8, 3, hparams), 0.3, train._generator(hparams.random_seed, train._DROPOUT_STREAM)
    )
    rng = np.random.default_rng(hparams.random_seed)
    for _ in range(hparams.how_many_training_steps):
        batch = rng.integers(0, len(y), size=hparams.train_batch_size, dtype=np.int32)
        network.gradients(x[batch], y[batch], network._keep_masks(len(batch)))
        for value, gradient in network.updates:
            gradient *= 0.2
            value -= gradient
    for trained, reference in zip(head.layers, network.head().layers, strict=True):
        for mine, expected in zip(trained, reference, strict=True):
            np.testing.assert_array_equal(mine, expected)


def _keras_adam_steps(values: list[np.ndarray], gradients: list[list[np.ndarray]], learning_rate: float) -> list:
    """The reference: keras.optimizers.Adam applying each list of gradients in turn to float64 variables."""
    import keras

    variables = [keras.Variable(value, dtype="float64") for value in values]
    optimizer = keras.optimizers.Adam(learning_rate)
    for step in gradients:
        optimizer.apply_gradients(
            zip([keras.ops.convert_to_tensor(g, dtype="float64") for g in step], variables, strict=True)
        )
    return [np.asarray(variable.value) for variable in variables]


def test_adam_takes_keras_steps() -> None:
    """Six steps of `_Adam` on given gradients equal keras.optimizers.Adam's on float64 variables to 1e-14
    relative (bit-identical with this numpy and TensorFlow; only `pow` may differ in the last bit elsewhere).
    The learning rate is a power of two, which Keras's float32 learning-rate variable holds exactly."""
    rng = np.random.default_rng(14)
    values = [rng.normal(0, 1, (7, 3)), rng.normal(0, 1, 3)]
    # Gradients of very different scales per array, and a zero, where epsilon matters.
    gradients = [[rng.normal(0, 1, (7, 3)), rng.normal(0, 1e-6, 3)] for _ in range(6)]
    gradients[2][1][0] = 0.0
    ours = [value.copy() for value in values]
    adam = train._Adam(2**-7, ours)
    buffers = [np.empty_like(value) for value in values]
    for step in gradients:
        for buffer, gradient in zip(buffers, step, strict=True):
            buffer[...] = gradient
        adam.apply(list(zip(ours, buffers, strict=True)))
    for mine, expected, before in zip(ours, _keras_adam_steps(values, gradients, 2**-7), values, strict=True):
        assert np.abs(mine - before).min() > 1e-3  # Adam moved every entry, tiny gradients too
        np.testing.assert_allclose(mine, expected, rtol=1e-14, atol=0)


def _shrunk_standardization(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: mean and sqrt((n var_j + 10 mean_k var_k) / (n + 10)), with numpy's mean and var."""
    variance = np.var(x.astype(np.float64), axis=0)
    n = len(x)
    return np.mean(x.astype(np.float64), axis=0), np.sqrt((n * variance + 10 * variance.mean()) / (n + 10))


def test_default_train_head_takes_keras_adam_steps_on_standardised_batches() -> None:
    """The defaults (Adam, L2 0.001, standardised features) with a hidden layer: the head returned equals, to
    float32 rounding (1e-6 relative), Keras's Adam on TensorFlow's gradients (penalty included) of the
    standardised batches from `initial_softmax_head`, folded into the first layer. A learning rate Keras's
    float32 variable holds exactly."""
    x, y = _blobs(40, seed=15, dim=8)
    x = x * np.geomspace(0.01, 100, 8).astype(np.float32) + 5.0  # scales and offsets for the standardisation
    hparams = HParams(
        how_many_training_steps=25,
        eval_step_interval=10,
        learning_rate=2**-5,
        train_batch_size=6,
        validation_batch_size=7,
        hidden_units=5,
        random_seed=4,
    )
    assert (hparams.optimizer, hparams.l2_regularizer, hparams.standardize) == ("adam", 0.001, True)
    head, _ = train_head(x, y, x[:15], y[:15], 3, hparams)

    import keras

    mean, std = _shrunk_standardization(x)
    start = [a.astype(np.float64) for layer in initial_softmax_head(8, 3, hparams).layers for a in layer]
    variables = [keras.Variable(value, dtype="float64") for value in start]
    optimizer = keras.optimizers.Adam(hparams.learning_rate)
    rng = np.random.default_rng(hparams.random_seed)

    def layers() -> list[tuple[np.ndarray, np.ndarray]]:
        values = [np.asarray(variable.value) for variable in variables]
        return list(zip(values[::2], values[1::2], strict=True))

    for step in range(hparams.how_many_training_steps):
        batch = rng.integers(0, len(y), size=hparams.train_batch_size, dtype=np.int32)
        gradients = _tf_gradients(layers(), (x[batch] - mean) / std, y[batch], [None, None], l2=0.001)
        optimizer.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in gradients], variables, strict=True))
        if step % hparams.eval_step_interval == 0 or step + 1 == hparams.how_many_training_steps:
            rng.integers(0, 15, size=hparams.validation_batch_size)  # evaluate's validation batch
    (w1, b1), (w2, b2) = layers()
    reference = [(w1 / std[:, None], b1 - (mean / std) @ w1), (w2, b2)]
    start = initial_softmax_head(8, 3, hparams).layers
    for trained, expected, initial in zip(head.layers, reference, start, strict=True):
        for mine, value, before in zip(trained, expected, initial, strict=True):
            assert np.abs(value - before).max() > 1e-2  # the steps moved every array
            np.testing.assert_allclose(mine, value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("hidden_units", [0, 6])
def test_folded_head_on_raw_features_is_the_network_on_standardised_ones(hidden_units: int) -> None:
    """The float32 head with the standardisation folded in, on raw features, gives the float64 network's
    probabilities on standardised features to 1e-6."""
    rng = np.random.default_rng(16)
    scales, offsets = np.geomspace(0.01, 50, 12), rng.normal(0, 20, 12)
    x = (rng.normal(0, 1, (300, 12)) * scales + offsets).astype(np.float32)
    widths = [12, hidden_units, 4] if hidden_units else [12, 4]
    layers = [(rng.normal(0, 1, (a, b)), rng.normal(0, 0.5, b)) for a, b in itertools.pairwise(widths)]
    network = train._Network(layers, 0.0, np.random.default_rng(0))
    standardization = train._Standardization.of(x[:40])
    folded = network.head(standardization)
    assert all(a.dtype == np.float32 for layer in folded.layers for a in layer)
    expected = SoftmaxHead(tuple(layers)).probabilities(standardization.apply(x))
    assert expected.max(axis=1).min() < 0.9  # not saturated: the comparison sees the logits
    np.testing.assert_allclose(folded.probabilities(x), expected, rtol=0, atol=1e-6)


def test_shrunk_standardisation_is_the_formula_and_the_plain_one_with_many_vectors() -> None:
    rng = np.random.default_rng(17)
    x = (rng.normal(0, 1, (5000, 6)) * [0.5, 0.7, 1.0, 1.3, 1.6, 2.0] + rng.normal(0, 10, 6)).astype(np.float32)
    standardization = train._Standardization.of(x)  # more rows than one chunk
    mean, std = _shrunk_standardization(x)
    np.testing.assert_allclose(standardization.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(standardization.std, std, rtol=1e-10)
    np.testing.assert_allclose(standardization.std, np.std(x.astype(np.float64), axis=0), rtol=1e-2)
    # Ten vectors: half the common variance, so a near-constant feature (plain std 3e-4) is not blown up.
    few = train._Standardization.of(np.c_[x[:10, :5], np.full(10, 3.0) + 1e-4 * np.arange(10)])
    assert few.std[5] > 0.5 * few.std[:5].min()
    # No variance at all: a floor, not a division by zero.
    assert (train._Standardization.of(np.ones((3, 4), np.float32)).std > 0).all()


def _one_per_class_with_quiet_noise(seed: int) -> tuple[np.ndarray, ...]:
    """Five well-separated classes in 8 dimensions plus 300 near-constant noise features (std 1e-3), as
    bottlenecks have many; one training vector per class, 200 test vectors."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (5, 8))
    levels = rng.uniform(0, 2, 300)

    def sample(labels: np.ndarray) -> np.ndarray:
        signal = centres[labels] + rng.normal(0, 1, (len(labels), 8))
        return np.c_[signal, levels + rng.normal(0, 1e-3, (len(labels), 300))].astype(np.float32)

    train_labels, test_labels = np.arange(5, dtype=np.int32), rng.integers(0, 5, 200).astype(np.int32)
    return sample(train_labels), train_labels, sample(test_labels), test_labels


def test_shrinkage_keeps_one_image_per_class_from_collapsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standardising by the plain std of five vectors blows the quiet noise features up to the scale of the
    signal, and the head fits them (near chance); shrunk toward the mean variance, it learns the classes."""
    x, y, tx, ty = _one_per_class_with_quiet_noise(18)
    hparams = HParams(how_many_training_steps=500)

    def test_accuracy() -> float:
        head, _ = train_head(x, y, x[:0], y[:0], 5, hparams)
        return accuracy_and_cross_entropy(head.probabilities(tx), ty)[0]

    shrunk = test_accuracy()
    monkeypatch.setattr(train, "VARIANCE_PRIOR", 0)
    naive = test_accuracy()
    assert shrunk > 0.8 and naive < 0.5  # chance is 0.2

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
    # On raw features the head returned after no steps is the initial head itself ...
    unstandardised = HParams(**{**hparams.__dict__, "how_many_training_steps": 0, "standardize": False})
    start, _ = train_head(x, y, x[:0], y[:0], 10, unstandardised)
    assert all(
        np.array_equal(a, b) for pair in zip(start.layers, head.layers, strict=True) for a, b in zip(*pair, strict=True)
    )
    # ... and on standardised ones the network starts from it too: the head returned is it, folded.
    start, _ = train_head(x, y, x[:0], y[:0], 10, HParams(**{**unstandardised.__dict__, "standardize": True}))
    standardization = train._Standardization.of(x)
    np.testing.assert_allclose(start.layers[0][0], hidden / standardization.std[:, None], rtol=1e-6)
    np.testing.assert_array_equal(start.layers[1][0], final)


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
    head, _ = train_head(*_blobs(200, seed=7), x, y, 3, HParams(how_many_training_steps=200))
    accuracy, _ = accuracy_and_cross_entropy(head.probabilities(x), y)
    assert np.isnan(accuracy) if count == 0 else accuracy == 1.0


def test_logged_cross_entropy_leaves_out_the_penalty(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a large L2 penalty, the last record's cross entropy is the head's on the last batch, nothing added."""
    x, y = _blobs(50, seed=19)
    batches: list[tuple[np.ndarray, np.ndarray]] = []
    real_evaluate = train.evaluate

    def spy(probabilities, step, train_batch, validation, rng, validation_batch_size) -> EvalRecord:
        batches.append(train_batch)
        return real_evaluate(probabilities, step, train_batch, validation, rng, validation_batch_size)

    monkeypatch.setattr(train, "evaluate", spy)
    head, history = train_head(x, y, x[:0], y[:0], 3, HParams(how_many_training_steps=30, l2_regularizer=10.0))
    _, cross_entropy = accuracy_and_cross_entropy(head.probabilities(batches[-1][0]), batches[-1][1])
    assert history[-1].cross_entropy == cross_entropy
    weights = head.layers[0][0] * train._Standardization.of(x).std[:, None]
    assert 10.0 / 2 * np.sum(weights.astype(np.float64) ** 2) > 1e-3  # a penalty that adding would show


def test_optimizer_names_and_default_learning_rates() -> None:
    assert head_learning_rate(HParams()) == 0.001
    assert head_learning_rate(HParams(optimizer="sgd")) == 0.01
    assert head_learning_rate(HParams(optimizer="sgd", learning_rate=0.3)) == 0.3
    assert head_learning_rate(HParams(learning_rate=0.02)) == 0.02
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd, not 'rmsprop'"):
        HParams(optimizer="rmsprop")
