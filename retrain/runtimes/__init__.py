"""Where bottlenecks are computed: given batches of normalised pixels, return their vectors.

    runtime = open_runtime(backbone, cache_root, "auto")
    vectors = runtime(pixels)            # (N, H, W, 3) float32 -> (N, D) float32

- `litert`: the backbone converted once to a TFLite feature model (cached beside the bottlenecks)
  and run by LiteRT's XNNPACK interpreters on every core: the engine `serve` runs, and on a CPU
  the fastest one here.
- `tensorflow`: the Keras model's forward pass, traced once. Chosen where TensorFlow sees a GPU,
  and when the converter rejects a backbone (the log says so).

`auto` picks between them; the extraction loop and the cache do not care which.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from retrain.backbones import Backbone
from retrain.errors import RetrainError
from retrain.quiet import import_tensorflow_quietly

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "litert", "tensorflow")
GPU_DEVICE_NODES = ("nvidia[0-9]*", "dxg")  # NVIDIA's driver; WSL's GPU paravirtualisation


class FeatureRuntime(Protocol):
    """Normalised pixels (N, H, W, 3) float32 -> bottleneck vectors (N, D) float32."""

    name: str

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...


def open_runtime(
    backbone: Backbone, cache_root: Path, choice: str = "auto", threads: int | None = None
) -> FeatureRuntime:
    """The runtime `choice` names; for `auto`, TensorFlow on a GPU and LiteRT otherwise."""
    if choice not in RUNTIMES:
        raise RetrainError(f"unknown --runtime {choice!r}; choose from {', '.join(RUNTIMES)}")
    if choice == "auto" and _tensorflow_sees_a_gpu():
        choice = "tensorflow"
    if choice == "tensorflow":
        return _tensorflow_runtime(backbone)
    from retrain.feature_models import ConversionError, cached_feature_model
    from retrain.runtimes.litert import LiteRTRuntime

    try:
        path = cached_feature_model(backbone, cache_root)
        try:
            return LiteRTRuntime(path, threads)
        except (ValueError, RuntimeError) as e:  # a damaged cache entry: LiteRT cannot load it
            log.warning("cached feature model %s is unreadable (%s); converting it again", path, e)
            return LiteRTRuntime(cached_feature_model(backbone, cache_root, reconvert=True), threads)
    except (ConversionError, ValueError, RuntimeError) as e:  # will not convert, or converts to what LiteRT rejects
        if choice == "litert":
            raise RetrainError(f"--runtime litert: {backbone.cache_id} does not convert to TFLite: {e}") from e
        log.warning("%s does not convert to TFLite (%s); computing bottlenecks with TensorFlow", backbone.cache_id, e)
        return _tensorflow_runtime(backbone)


def _tensorflow_runtime(backbone: Backbone) -> FeatureRuntime:
    import_tensorflow_quietly()
    from retrain.runtimes.tensorflow import TensorFlowRuntime

    return TensorFlowRuntime(backbone)


def _tensorflow_sees_a_gpu() -> bool:
    """Asks TensorFlow only where a GPU's device node exists: importing it costs seconds."""
    if not any(node for pattern in GPU_DEVICE_NODES for node in Path("/dev").glob(pattern)):
        return False
    import_tensorflow_quietly()
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
