"""The prototype head as a Keras layer, for exports and for loading them (`--base_model`).

Kept apart from `retrain.heads` so that importing the heads does not import Keras.
"""

from __future__ import annotations

import keras

from retrain.heads import PROTOTYPE_SCALE


@keras.saving.register_keras_serializable(package="retrain")
class PrototypeLayer(keras.layers.Layer):
    """Softmax over scaled cosine similarities to one fixed unit vector per class."""

    def __init__(self, num_classes: int, scale: float = PROTOTYPE_SCALE, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.scale = scale

    def build(self, input_shape) -> None:
        self.prototypes = self.add_weight(
            name="prototypes", shape=(self.num_classes, input_shape[-1]), initializer="zeros", trainable=False
        )

    def call(self, features):
        unit = features / keras.ops.maximum(keras.ops.norm(features, axis=-1, keepdims=True), 1e-12)
        return keras.ops.softmax(self.scale * keras.ops.matmul(unit, keras.ops.transpose(self.prototypes)))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "scale": self.scale}
