"""Training through the backbone on decoded images: fine-tuning its top layers, or a small network from scratch.

The bottleneck cache cannot serve this step, since the features change with every update. Images
are decoded once into memory as the resized uint8 pixels (150 KB each at 224x224) and
normalised batch by batch. Batch-norm layers stay in inference mode (their statistics frozen), as
Keras's transfer-learning guide advises for small data. The optimiser is SGD with momentum 0.9:
plain gradient descent, retrain.py's choice for a linear head, is too slow for deep layers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from retrain.backbones import Backbone
from retrain.errors import RetrainError
from retrain.extract import DECODE_MEMORY_BYTES
from retrain.files import read_regular_file
from retrain.heads import SoftmaxHead
from retrain.progress import progress_bar
from retrain.train import EvalRecord, HParams, evaluate
from serve.budget import DecodeBudget
from serve.memory import large_buffers_mapped
from serve.preprocess import ImageDecodeError, ImageTooLargeError, InputSpec, decoded, resize_for_model

MOMENTUM = 0.9
FORWARD_BATCH = 64


@dataclass(frozen=True)
class Pixels:
    """Decoded images of one split: uint8 (N, H, W, 3) and their class indices."""

    images: np.ndarray
    labels: np.ndarray


def decode_images(
    paths: Sequence[Path], spec: InputSpec, budget: DecodeBudget | None = None
) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """uint8 pixels for every path (zeros where a file cannot be decoded) and the (file, reason) skipped.
    Decoding memory is bounded as extraction's is (`retrain.extract.DECODE_MEMORY_BYTES` by default)."""
    budget = budget or DecodeBudget(DECODE_MEMORY_BYTES)
    images = np.zeros((len(paths), spec.height, spec.width, 3), dtype=np.uint8)
    skipped: list[tuple[Path, str]] = []

    def load(index: int) -> None:
        try:
            with decoded(read_regular_file(paths[index]), budget=budget) as image:
                images[index] = resize_for_model(image, spec)
        except ImageTooLargeError as e:
            skipped.append((Path(paths[index]), f"too large to decode: {e}"))
        except (OSError, ImageDecodeError) as e:
            skipped.append((Path(paths[index]), str(e)))

    with large_buffers_mapped(), ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) + 2)) as pool:
        for _ in progress_bar(pool.map(load, range(len(paths))), total=len(paths), desc="Decoding images"):
            pass
    return images, skipped


def weight_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers that hold weights, in order, looking inside nested models."""
    found: list[keras.layers.Layer] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += weight_layers(layer)
        elif layer.weights:
            found.append(layer)
    return found


def unfreeze_top(backbone: Backbone, count: int | None) -> list[keras.layers.Layer]:
    """Makes the top `count` weight layers trainable (all of them for None) and freezes the rest."""
    if not isinstance(backbone.model, keras.Model) or not weight_layers(backbone.model):
        raise RetrainError(f"--fine_tune_layers: backbone {backbone.name} has no layers to fine-tune")
    layers = weight_layers(backbone.model)
    if count is not None and count > len(layers):
        raise RetrainError(f"--fine_tune_layers {count}: backbone {backbone.name} has only {len(layers)} weight layers")
    chosen = layers if count is None else layers[len(layers) - count :]
    backbone.model.trainable = True
    for layer in layers:
        layer.trainable = layer in chosen
    return chosen


def features_of(backbone: Backbone, images: np.ndarray) -> np.ndarray:
    """Bottleneck vectors of decoded images, computed in memory (the backbone's weights are not the cached ones)."""
    spec = backbone.input_spec
    out = np.zeros((len(images), backbone.feature_dim), dtype=np.float32)
    for start in range(0, len(images), FORWARD_BATCH):
        batch = (images[start : start + FORWARD_BATCH].astype(np.float32) - spec.mean) / spec.std
        out[start : start + FORWARD_BATCH] = keras.ops.convert_to_numpy(backbone.model(batch, training=False))
    return out


def train_end_to_end(
    backbone: Backbone,
    head: SoftmaxHead,
    train: Pixels,
    validation: Pixels,
    trainable_layers: int | None,
    steps: int,
    learning_rate: float,
    hparams: HParams,
    first_step: int = 0,
    on_eval: Callable[[EvalRecord], None] | None = None,
) -> tuple[SoftmaxHead, list[EvalRecord]]:
    """Trains the top `trainable_layers` of the backbone (all for None) together with the head.

    The backbone's Keras model is updated in place, so an export made afterwards has the new
    weights. Evaluation records continue the step numbers from `first_step`.
    """
    unfrozen = unfreeze_top(backbone, trainable_layers)
    head_layers = head.keras_layers()
    variables = [v for layer in unfrozen for v in layer.trainable_weights]
    variables += [v for layer in head_layers for v in layer.trainable_weights]
    optimizer = keras.optimizers.SGD(learning_rate, momentum=MOMENTUM)
    optimizer.build(variables)
    spec = backbone.input_spec

    def forward(images: tf.Tensor, training: bool) -> tf.Tensor:
        x = backbone.model((tf.cast(images, tf.float32) - spec.mean) / spec.std, training=False)
        for layer in head_layers:
            x = layer(x, training=training)
        return x

    @tf.function(reduce_retracing=True)
    def train_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            probabilities = forward(images, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, probabilities))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    predict = tf.function(lambda images: forward(images, training=False), reduce_retracing=True)

    def probabilities(images: np.ndarray) -> np.ndarray:
        chunks = range(0, len(images), FORWARD_BATCH)
        return np.concatenate([predict(tf.constant(images[i : i + FORWARD_BATCH])).numpy() for i in chunks])

    rng = np.random.default_rng(hparams.random_seed + 2)
    keras.utils.set_random_seed(hparams.random_seed)
    history: list[EvalRecord] = []
    for step in range(steps):
        batch = rng.integers(0, len(train.labels), size=hparams.train_batch_size)
        train_step(tf.constant(train.images[batch]), tf.constant(train.labels[batch], tf.int32))
        if step % hparams.eval_step_interval == 0 or step + 1 == steps:
            record = evaluate(
                probabilities,
                first_step + step,
                (train.images[batch], train.labels[batch]),
                (validation.images, validation.labels),
                rng,
                hparams.validation_batch_size,
            )
            history.append(record)
            if on_eval:
                on_eval(record)
    for layer in unfrozen:
        layer.trainable = False
    return SoftmaxHead.from_keras_layers(head_layers, head.dropout), history
