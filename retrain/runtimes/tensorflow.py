"""Bottlenecks from the Keras model's forward pass, traced once with a free batch dimension."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from retrain.backbones import Backbone


class TensorFlowRuntime:
    """The backbone's own forward pass; on a GPU when TensorFlow has one."""

    name = "tensorflow"

    def __init__(self, backbone: Backbone):
        spec = backbone.input_spec
        signature = [tf.TensorSpec([None, spec.height, spec.width, 3], tf.float32)]
        model = backbone.model  # built here, eagerly: building inside the trace would not load its weights
        self._forward = tf.function(lambda images: model(images), input_signature=signature)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self._forward(tf.constant(pixels)).numpy()
