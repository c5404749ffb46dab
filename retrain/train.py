"""Training the new softmax layer on cached bottleneck vectors held in memory.

The loop is retrain.py's: plain gradient descent on random mini-batches drawn with replacement,
weights initialised from a truncated normal (stddev 0.001), and every `eval_step_interval` steps
the train-batch accuracy and cross entropy plus the accuracy on a random validation batch.
Each step is one traced TensorFlow call on tensors already in memory, so 4000 steps take seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class HParams:
    """Hyper-parameters of the head's training, with retrain.py's names and defaults."""

    how_many_training_steps: int = 4000
    train_batch_size: int = 10
    learning_rate: float = 0.01
    eval_step_interval: int = 10
    validation_batch_size: int = 100
    random_seed: int = 0


@dataclass(frozen=True)
class EvalRecord:
    """Metrics at one evaluation step; `validation_accuracy` is None when there is no validation set."""

    step: int
    train_accuracy: float
    cross_entropy: float
    validation_accuracy: float | None
    validation_count: int


@dataclass(frozen=True)
class Head:
    """The trained layer: `softmax(features @ weights + biases)`."""

    weights: np.ndarray  # (feature_dim, num_classes)
    biases: np.ndarray  # (num_classes,)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = features.astype(np.float64) @ self.weights + self.biases
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def accuracy_and_cross_entropy(head: Head, features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 accuracy and mean cross entropy of `head` on labelled vectors."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    probabilities = head.probabilities(features)
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == labels))
    cross_entropy = float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-12))))
    return accuracy, cross_entropy


def train_head(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    validation_features: np.ndarray,
    validation_labels: np.ndarray,
    num_classes: int,
    hparams: HParams,
    on_eval: Callable[[EvalRecord], None] | None = None,
    summaries_dir: str | Path | None = None,
) -> tuple[Head, list[EvalRecord]]:
    """Trains the softmax layer; calls `on_eval` at every evaluation step and returns the head and history."""
    rng = np.random.default_rng(hparams.random_seed)
    tf.random.set_seed(hparams.random_seed)
    feature_dim = train_features.shape[1]
    x_train = tf.constant(train_features, tf.float32)
    y_train = tf.constant(train_labels, tf.int32)
    weights = tf.Variable(
        tf.random.truncated_normal([feature_dim, num_classes], stddev=0.001, seed=hparams.random_seed)
    )
    biases = tf.Variable(tf.zeros([num_classes]))
    learning_rate = tf.constant(hparams.learning_rate, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def train_step(batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = tf.gather(x_train, batch), tf.gather(y_train, batch)
        with tf.GradientTape() as tape:
            logits = tf.matmul(x, weights) + biases
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        grad_w, grad_b = tape.gradient(loss, [weights, biases])
        weights.assign_sub(learning_rate * grad_w)
        biases.assign_sub(learning_rate * grad_b)
        return loss, tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), y), tf.float32))

    writers = _summary_writers(summaries_dir) if summaries_dir else None
    history: list[EvalRecord] = []
    steps = hparams.how_many_training_steps
    for step in range(steps):
        batch = rng.integers(0, len(train_labels), size=hparams.train_batch_size, dtype=np.int32)
        train_step(batch)
        if step % hparams.eval_step_interval == 0 or step + 1 == steps:
            head = Head(weights.numpy(), biases.numpy())
            train_accuracy, cross_entropy = accuracy_and_cross_entropy(head, train_features[batch], train_labels[batch])
            val_index = _validation_batch(rng, len(validation_labels), hparams.validation_batch_size)
            validation_accuracy = None
            if len(val_index):
                validation_accuracy, _ = accuracy_and_cross_entropy(
                    head, validation_features[val_index], validation_labels[val_index]
                )
            record = EvalRecord(step, train_accuracy, cross_entropy, validation_accuracy, len(val_index))
            history.append(record)
            if writers:
                _write_summaries(writers, record)
            if on_eval:
                on_eval(record)
    if writers:
        for writer in writers:
            writer.flush()
    return Head(weights.numpy(), biases.numpy()), history


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
