"""Training the softmax head on cached bottleneck vectors held in memory.

The loop is retrain.py's: plain gradient descent on random mini-batches drawn with replacement,
the final layer initialised from a truncated normal (stddev 0.001), and every `eval_step_interval`
steps the train-batch accuracy and cross entropy plus the accuracy on a random validation batch.
An optional hidden ReLU layer (He-initialised) and dropout on each layer's input follow TF Hub's
`make_image_classifier`. Each step is one traced TensorFlow call on tensors already in memory, so
4000 steps take seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from retrain.heads import SoftmaxHead


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
    tf.random.set_seed(hparams.random_seed)
    x_train = tf.constant(train_features, tf.float32)
    y_train = tf.constant(train_labels, tf.int32)
    variables = _initial_layers(train_features.shape[1], num_classes, hparams)
    learning_rate = tf.constant(hparams.learning_rate, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def train_step(batch: tf.Tensor) -> tf.Tensor:
        x, y = tf.gather(x_train, batch), tf.gather(y_train, batch)
        with tf.GradientTape() as tape:
            logits = _logits(variables, x, hparams.dropout)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        for variable, gradient in zip(variables, tape.gradient(loss, variables), strict=True):
            variable.assign_sub(learning_rate * gradient)
        return loss

    def snapshot() -> SoftmaxHead:
        values = [v.numpy() for v in variables]
        return SoftmaxHead(tuple(zip(values[::2], values[1::2], strict=True)), hparams.dropout)

    writers = _summary_writers(summaries_dir) if summaries_dir else None
    history: list[EvalRecord] = []
    steps = hparams.how_many_training_steps
    for step in range(steps):
        batch = rng.integers(0, len(train_labels), size=hparams.train_batch_size, dtype=np.int32)
        train_step(batch)
        if step % hparams.eval_step_interval == 0 or step + 1 == steps:
            record = evaluate(
                snapshot().probabilities,
                step,
                (train_features[batch], train_labels[batch]),
                (validation_features, validation_labels),
                rng,
                hparams.validation_batch_size,
            )
            history.append(record)
            if writers:
                _write_summaries(writers, record)
            if on_eval:
                on_eval(record)
    if writers:
        for writer in writers:
            writer.flush()
    return snapshot(), history


def initial_softmax_head(feature_dim: int, num_classes: int, hparams: HParams) -> SoftmaxHead:
    """The untrained head `train_head` starts from, for training end to end from scratch."""
    values = [v.numpy() for v in _initial_layers(feature_dim, num_classes, hparams)]
    return SoftmaxHead(tuple(zip(values[::2], values[1::2], strict=True)), hparams.dropout)


def _initial_layers(feature_dim: int, num_classes: int, hparams: HParams) -> list[tf.Variable]:
    """[W1, b1, (W2, b2)]: a He-initialised hidden layer when asked, then retrain.py's final layer."""
    seed = hparams.random_seed
    variables = []
    width = feature_dim
    if hparams.hidden_units:
        stddev = float(np.sqrt(2.0 / feature_dim))
        variables += [
            tf.Variable(tf.random.truncated_normal([feature_dim, hparams.hidden_units], stddev=stddev, seed=seed + 1)),
            tf.Variable(tf.zeros([hparams.hidden_units])),
        ]
        width = hparams.hidden_units
    variables += [
        tf.Variable(tf.random.truncated_normal([width, num_classes], stddev=0.001, seed=seed)),
        tf.Variable(tf.zeros([num_classes])),
    ]
    return variables


def _logits(variables: list[tf.Variable], x: tf.Tensor, dropout: float) -> tf.Tensor:
    """The training-mode forward pass: dropout on each layer's input, ReLU between layers."""
    pairs = list(zip(variables[::2], variables[1::2], strict=True))
    for index, (weights, biases) in enumerate(pairs):
        if dropout:
            x = tf.nn.dropout(x, rate=dropout)
        x = tf.matmul(x, weights) + biases
        if index < len(pairs) - 1:
            x = tf.nn.relu(x)
    return x


def _validation_batch(rng: np.random.Generator, count: int, batch_size: int) -> np.ndarray:
    """retrain.py's rule: a random batch drawn with replacement, or the whole set for -1."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if batch_size < 0:
        return np.arange(count)
    return rng.integers(0, count, size=batch_size)


def _summary_writers(summaries_dir: str | Path):
    root = Path(summaries_dir)
    return tf.summary.create_file_writer(str(root / "train")), tf.summary.create_file_writer(str(root / "validation"))


def _write_summaries(writers, record: EvalRecord) -> None:
    train_writer, validation_writer = writers
    with train_writer.as_default(step=record.step):
        tf.summary.scalar("accuracy", record.train_accuracy)
        tf.summary.scalar("cross_entropy", record.cross_entropy)
    if record.validation_accuracy is not None:
        with validation_writer.as_default(step=record.step):
            tf.summary.scalar("accuracy", record.validation_accuracy)
            tf.summary.scalar("cross_entropy", record.validation_cross_entropy)
