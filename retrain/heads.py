"""The new top of the network: a softmax head (optionally with one hidden ReLU layer) or a prototype head.

Each head maps bottleneck vectors to class probabilities twice over: in numpy, for evaluation on
cached vectors, and as Keras layers, for the export and for training end to end. Both compute
the same function, so every path through retrain scores an image the same way. Keras is imported
only when its layers are asked for: a run on cached bottlenecks never needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

# Cosine similarities lie in [-1, 1]; scaled by 10 their softmax ranks like nearest-prototype and
# gives a clear winner a clear score (a 0.3 cosine lead is ~95%), without pretending calibration.
PROTOTYPE_SCALE = 10.0


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class SoftmaxHead:
    """`softmax(relu(x @ W1 + b1) @ W2 + b2)`, or `softmax(x @ W + b)` without a hidden layer.

    `dropout` acts only while training; it is kept so the Keras layers can go on training.
    """

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    dropout: float = 0.0

    kind = "softmax"

    @property
    def hidden_units(self) -> int:
        return self.layers[0][0].shape[1] if len(self.layers) > 1 else 0

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        x = features.astype(np.float64)
        for index, (weights, biases) in enumerate(self.layers):
            x = x @ weights + biases
            if index < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return _softmax(x)

    def keras_layers(self) -> list[keras.layers.Layer]:
        """Dropout + Dense layers holding this head's weights; the last one ends in softmax."""
        import keras

        result: list[keras.layers.Layer] = []
        for index, (weights, biases) in enumerate(self.layers):
            last = index == len(self.layers) - 1
            if self.dropout:
                result.append(keras.layers.Dropout(self.dropout, name=f"head_dropout_{index}"))
            dense = keras.layers.Dense(
                weights.shape[1], activation="softmax" if last else "relu", name="final" if last else "hidden"
            )
            dense.build((None, weights.shape[0]))
            dense.set_weights([weights, biases])
            result.append(dense)
        return result

    @classmethod
    def from_keras_layers(cls, layers: list[keras.layers.Layer], dropout: float) -> SoftmaxHead:
        import keras

        dense = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
        return cls(tuple((w.copy(), b.copy()) for w, b in (layer.get_weights() for layer in dense)), dropout)

    def describe(self) -> dict:
        return {"type": self.kind, "hidden_units": self.hidden_units, "dropout": self.dropout}


@dataclass(frozen=True)
class PrototypeHead:
    """Nearest class mean: each class is the normalised mean of its L2-normalised training vectors.

    Nothing is trained, so it works from one image per class, where a softmax layer has too many
    parameters for the data (Snell et al., Prototypical Networks, 2017, with cosine distance).
    """

    prototypes: np.ndarray  # (num_classes, feature_dim), unit rows
    scale: float = PROTOTYPE_SCALE

    kind = "prototype"

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return _softmax(self.scale * (_l2_normalize(features.astype(np.float64)) @ self.prototypes.T))

    def keras_layers(self) -> list[keras.layers.Layer]:
        from retrain.prototype_layer import PrototypeLayer

        layer = PrototypeLayer(len(self.prototypes), self.scale, name="prototypes")
        layer.build((None, self.prototypes.shape[1]))
        layer.set_weights([self.prototypes.astype(np.float32)])
        return [layer]

    def describe(self) -> dict:
        return {"type": self.kind, "scale": self.scale}


Head = SoftmaxHead | PrototypeHead


def fit_prototypes(features: np.ndarray, labels: np.ndarray, num_classes: int) -> PrototypeHead:
    """Class means of the normalised vectors; a class with no training vectors gets a zero prototype,
    whose cosine with anything is 0."""
    unit = _l2_normalize(features.astype(np.float64))
    prototypes = np.zeros((num_classes, features.shape[1]))
    for label in range(num_classes):
        members = unit[labels == label]
        if len(members):
            prototypes[label] = members.mean(axis=0)
    return PrototypeHead(_l2_normalize(prototypes))
