"""Training the softmax head on cached bottleneck vectors held in memory, in numpy.

The loop is retrain.py's: plain gradient descent on the mean sparse softmax cross entropy of
random mini-batches drawn with replacement, the final layer initialised from a truncated normal
(stddev 0.001; as in TensorFlow, values beyond two stddevs are redrawn) with zero biases, and every
`eval_step_interval` steps (and on the last) the train-batch accuracy and cross entropy plus the
accuracy on a random validation batch. An optional hidden ReLU layer (He-initialised) and inverted
dropout on each layer's input follow TF Hub's `make_image_classifier`.

Why numpy: a head of one or two dense layers needs a few small matrix products per step, and the
gradients are short to write out, while importing TensorFlow costs ~5 s and ~0.5 GB; a warm rerun
on cached bottlenecks would spend most of its time loading it. Here 4000 steps of batch 10 on
1280-d vectors, evaluated every 10 steps, take ~0.3 s. TensorFlow is imported only to write
TensorBoard scalars for `summaries_dir`.

Numerics: the weights train in float64, so the hand-written step matches a float64 reference to
rounding; the head returned, and the snapshot evaluated at each evaluation step, hold them rounded
to float32, the values the export uses. Batches come from `default_rng(random_seed)` exactly as
the TensorFlow version of this loop drew them; the initial weights and the dropout masks come from
their own generators of the same seed, so they never shift the batch sequence, and the same seed
and inputs give bit-identical weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrain.heads import SoftmaxHead

# Independent streams of the seed (`default_rng(seed)` itself draws the batches).
_INIT_STREAM = 1
_DROPOUT_STREAM = 2
# TensorFlow's truncated normal redraws values at or beyond this many standard deviations.
_TRUNCATE = 2.0


@dataclass(frozen=True)
class HParams:
    """Hyper-parameters of the head's training, with retrain.py's names and defaults."""

    how_many_training_steps: int = 4000
    train_batch_size: int = 10
    learning_rate: float = 0.01
    eval_step_interval: int = 10
    validation_batch_size: int = 100
    random_seed: int = 0
    hidden_units: int = 0
    dropout: float = 0.0


@dataclass(frozen=True)
class EvalRecord:
    """Metrics at one evaluation step; the validation ones are None when there is no validation set."""

    step: int
    train_accuracy: float
    cross_entropy: float
    validation_accuracy: float | None
    validation_count: int
    validation_cross_entropy: float | None = None


def accuracy_and_cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 accuracy and mean cross entropy of predicted class probabilities."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == labels))
    cross_entropy = float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-12))))
    return accuracy, cross_entropy


def evaluate(
    head_probabilities: Callable[[np.ndarray], np.ndarray],
    step: int,
    train_batch: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
    validation_batch_size: int,
) -> EvalRecord:
    """retrain.py's evaluation step: the train batch, and a random validation batch (or all of it)."""
    train_accuracy, cross_entropy = accuracy_and_cross_entropy(head_probabilities(train_batch[0]), train_batch[1])
    val_index = _validation_batch(rng, len(validation[1]), validation_batch_size)
    validation_accuracy = validation_cross_entropy = None
    if len(val_index):
        validation_accuracy, validation_cross_entropy = accuracy_and_cross_entropy(
            head_probabilities(validation[0][val_index]), validation[1][val_index]
        )
    return EvalRecord(
        step, train_accuracy, cross_entropy, validation_accuracy, len(val_index), validation_cross_entropy
    )


def train_head(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    validation_features: np.ndarray,
    validation_labels: np.ndarray,
    num_classes: int,
    hparams: HParams,
    on_eval: Callable[[EvalRecord], None] | None = None,
    summaries_dir: str | Path | None = None,
) -> tuple[SoftmaxHead, list[EvalRecord]]:
    """Trains the softmax head; calls `on_eval` at every evaluation step and returns the head and history."""
    rng = np.random.default_rng(hparams.random_seed)
    layers = _initial_layers(train_features.shape[1], num_classes, hparams)
    network = _Network(layers, hparams.dropout, _generator(hparams.random_seed, _DROPOUT_STREAM))
    summaries = _Summaries(Path(summaries_dir)) if summaries_dir else None
    validation = (validation_features, validation_labels)
    history: list[EvalRecord] = []
    steps = hparams.how_many_training_steps
    for step in range(steps):
        batch = rng.integers(0, len(train_labels), size=hparams.train_batch_size, dtype=np.int32)
        x, y = train_features[batch], train_labels[batch]
        network.step(x, y, hparams.learning_rate)
        if step % hparams.eval_step_interval == 0 or step + 1 == steps:
            record = evaluate(
                network.head().probabilities, step, (x, y), validation, rng, hparams.validation_batch_size
            )
            history.append(record)
            if summaries:
                summaries.write(record)
            if on_eval:
                on_eval(record)
    if summaries:
        summaries.flush()
    return network.head(), history


def initial_softmax_head(feature_dim: int, num_classes: int, hparams: HParams) -> SoftmaxHead:
    """The untrained head `train_head` starts from, for training end to end from scratch."""
    return SoftmaxHead(tuple(_initial_layers(feature_dim, num_classes, hparams)), hparams.dropout)


def _initial_layers(feature_dim: int, num_classes: int, hparams: HParams) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(W1, b1), (W2, b2)] in float32: a He-initialised hidden layer when asked, then retrain.py's final layer."""
    rng = _generator(hparams.random_seed, _INIT_STREAM)
    layers = []
    width = feature_dim
    if hparams.hidden_units:
        layers.append(_dense(rng, feature_dim, hparams.hidden_units, stddev=float(np.sqrt(2.0 / feature_dim))))
        width = hparams.hidden_units
    layers.append(_dense(rng, width, num_classes, stddev=0.001))
    return layers


def _dense(rng: np.random.Generator, fan_in: int, fan_out: int, stddev: float) -> tuple[np.ndarray, np.ndarray]:
    """Truncated-normal weights and zero biases, rounded to float32 as the head holds them."""
    return (stddev * _truncated_normal(rng, (fan_in, fan_out))).astype(np.float32), np.zeros(fan_out, np.float32)


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal values, each one at or beyond `_TRUNCATE` redrawn until it falls inside (TF's rule)."""
    values = rng.standard_normal(shape)
    while (outside := np.abs(values) >= _TRUNCATE).any():
        values[outside] = rng.standard_normal(int(outside.sum()))
    return values


def _generator(seed: int, stream: int) -> np.random.Generator:
    """A generator of `seed` independent of `default_rng(seed)` and of the other streams."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))


class _Network:
    """The head's layers in float64 and one gradient-descent step on them.

    Layer i computes `x_i @ W_i + b_i` of its input `x_i` (dropped out while training), with a
    ReLU after every layer but the last. The gradient buffers are allocated once and updated in
    place; a step allocates only its (batch, width) activations and dropout masks.
    """

    def __init__(self, layers: Sequence[tuple[np.ndarray, np.ndarray]], dropout: float, rng: np.random.Generator):
        self.weights = [np.array(w, dtype=np.float64) for w, _ in layers]
        self.biases = [np.array(b, dtype=np.float64) for _, b in layers]
        self.weight_gradients = [np.empty_like(w) for w in self.weights]
        self.bias_gradients = [np.empty_like(b) for b in self.biases]
        self.dropout = dropout
        self._rng = rng
        self._updates = list(zip(self.weights + self.biases, self.weight_gradients + self.bias_gradients, strict=True))

    def step(self, features: np.ndarray, labels: np.ndarray, learning_rate: float) -> None:
        """One gradient-descent step on the batch's mean cross entropy, with fresh dropout masks."""
        self.gradients(features, labels, self._keep_masks(len(labels)))
        for value, gradient in self._updates:
            gradient *= learning_rate
            value -= gradient

    def gradients(self, features: np.ndarray, labels: np.ndarray, keep: Sequence[np.ndarray | None]) -> None:
        """Fills the gradient buffers with d(mean cross entropy)/d(weights, biases) for the batch.

        `keep[i]` multiplies layer i's input: 0 for a dropped unit, 1/(1 - rate) for a kept one,
        as `tf.nn.dropout` scales them; None for no dropout.
        """
        last = len(self.weights) - 1
        x = np.asarray(features, dtype=np.float64)
        inputs: list[np.ndarray] = []
        for index, (weights, biases) in enumerate(zip(self.weights, self.biases, strict=True)):
            if keep[index] is not None:
                x = x * keep[index]
            inputs.append(x)
            x = x @ weights
            x += biases
            if index < last:
                np.maximum(x, 0.0, out=x)
        # softmax(logits) - onehot(labels), over the batch size: the gradient of the mean cross entropy.
        x -= x.max(axis=1, keepdims=True)
        np.exp(x, out=x)
        x /= x.sum(axis=1, keepdims=True)
        x[np.arange(len(labels)), labels] -= 1.0
        x /= len(labels)
        for index in range(last, -1, -1):
            np.matmul(inputs[index].T, x, out=self.weight_gradients[index])
            np.sum(x, axis=0, out=self.bias_gradients[index])
            if index:
                x = x @ self.weights[index].T
                if keep[index] is not None:
                    x *= keep[index]
                x *= inputs[index] != 0  # through the ReLU: zero where it was zero (or dropped)

    def head(self) -> SoftmaxHead:
        """The layers rounded to float32, as the head returned holds them."""
        layers = zip(self.weights, self.biases, strict=True)
        return SoftmaxHead(tuple((w.astype(np.float32), b.astype(np.float32)) for w, b in layers), self.dropout)

    def _keep_masks(self, batch_size: int) -> list[np.ndarray | None]:
        if not self.dropout:
            return [None] * len(self.weights)
        scale = 1.0 / (1.0 - self.dropout)
        return [scale * (self._rng.random((batch_size, w.shape[0])) >= self.dropout) for w in self.weights]


def _validation_batch(rng: np.random.Generator, count: int, batch_size: int) -> np.ndarray:
    """retrain.py's rule: a random batch drawn with replacement, or the whole set for -1."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if batch_size < 0:
        return np.arange(count)
    return rng.integers(0, count, size=batch_size)


class _Summaries:
    """TensorBoard scalars in `train/` and `validation/`: the only use of TensorFlow here, imported on demand."""

    def __init__(self, root: Path) -> None:
        import tensorflow as tf

        self._scalar = tf.summary.scalar
        self._train = tf.summary.create_file_writer(str(root / "train"))
        self._validation = tf.summary.create_file_writer(str(root / "validation"))

    def write(self, record: EvalRecord) -> None:
        with self._train.as_default(step=record.step):
            self._scalar("accuracy", record.train_accuracy)
            self._scalar("cross_entropy", record.cross_entropy)
        if record.validation_accuracy is not None:
            with self._validation.as_default(step=record.step):
                self._scalar("accuracy", record.validation_accuracy)
                self._scalar("cross_entropy", record.validation_cross_entropy)

    def flush(self) -> None:
        self._train.flush()
        self._validation.flush()
