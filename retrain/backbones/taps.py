"""Taps: which layers of a backbone a bottleneck is made of, and how each is pooled.

retrain caches one vector per image: by default the backbone's last layer averaged over the
image. A middle layer pooled on a small grid keeps what the last one averages away (strokes and
where they are), which is what small, plain images such as digits need: on the bundled digits,
Lite0's block10 output on a 2x2 grid separates the classes far better than the final layer
(docs/decisions.md). A tap names a layer and a grid; a bottleneck is the concatenation of its
taps, each flattened cell by cell (row, column, channel).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tap:
    """`layer`'s output (N, H, W, C) averaged over `grid` x `grid` equal cells -> (N, grid * grid * C)."""

    layer: str  # the layer's name in the backbone's Keras model
    grid: int = 1

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ValueError(f"a tap's grid is at least 1, not {self.grid}")

    def describe(self) -> str:
        return self.layer if self.grid == 1 else f"{self.layer}:{self.grid}x{self.grid}"


def keras_tap_model(model, taps: tuple[Tap, ...]):
    """`model`'s inputs -> its `taps` pooled and concatenated, as a Keras model: what TensorFlow runs
    (a GPU, fine-tuning, the SavedModel) to compute the bottlenecks the TFLite feature model computes."""
    import keras

    pooled = []
    for tap in taps:
        x = model.get_layer(tap.layer).output
        if tap.grid == 1:
            pooled.append(keras.layers.GlobalAveragePooling2D()(x))
            continue
        height, _, channels = x.shape[1:]
        if height % tap.grid:
            raise ValueError(f"a {tap.grid}x{tap.grid} grid does not divide {tap.layer}'s {height}x{height} output")
        cell = height // tap.grid
        x = keras.layers.AveragePooling2D(cell, strides=cell, padding="valid")(x)
        pooled.append(keras.layers.Reshape((tap.grid * tap.grid * channels,))(x))
    features = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(axis=1)(pooled)
    return keras.Model(model.input, features, name=f"{model.name}_taps")
