"""Backbones without pretrained weights, as baselines for transfer learning.

- `small_cnn`: three conv + max-pool blocks (32, 64, 64 filters), flattened. Without
  `--weights_file` retrain trains it from scratch, end to end with the head, on decoded images.
- `pixels`: the preprocessed pixels themselves, flattened. A softmax head on it is softmax
  regression on raw pixels; `--hidden_units` makes it a one-hidden-layer network.

Both take `--image_size` (default 32) and the usual [-1, 1] normalisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrain.backbones import BackboneSpec, register
from serve.preprocess import InputSpec

if TYPE_CHECKING:
    import keras

DEFAULT_SIZE = 32
CNN_FILTERS = (32, 64, 64)


def input_spec(size: int = DEFAULT_SIZE) -> InputSpec:
    return InputSpec(size, size, mean=127.5, std=127.5)


def build_small_cnn(weights_file: str | None = None, image_size: int | None = None) -> keras.Model:
    """Normalised (N, S, S, 3) -> (N, (S/8)^2 * 64) features; He-initialised, or loaded from `weights_file`."""
    import keras
    from keras import layers

    size = image_size or DEFAULT_SIZE
    inputs = keras.Input((size, size, 3), name="images")
    x = inputs
    for block, filters in enumerate(CNN_FILTERS, start=1):
        x = layers.Conv2D(
            filters, 3, padding="same", activation="relu", kernel_initializer="he_normal", name=f"conv{block}"
        )(x)
        x = layers.MaxPooling2D(2, name=f"pool{block}")(x)
    model = keras.Model(inputs, layers.Flatten(name="features")(x), name="small_cnn")
    if weights_file:
        model.load_weights(weights_file)
    return model


def build_pixels(weights_file: str | None = None, image_size: int | None = None) -> keras.Model:
    """Normalised (N, S, S, 3) -> (N, S*S*3): no weights at all."""
    import keras
    from keras import layers

    size = image_size or DEFAULT_SIZE
    inputs = keras.Input((size, size, 3), name="images")
    return keras.Model(inputs, layers.Flatten(name="pixels")(inputs), name="pixels")


def register_all() -> None:
    register(
        BackboneSpec(
            name="small_cnn",
            input_spec=input_spec(),
            build=build_small_cnn,
            weights_source="none: trained from scratch on your images (or --weights_file)",
            resizable=True,
            pretrained=False,
        )
    )
    register(
        BackboneSpec(
            name="pixels",
            input_spec=input_spec(),
            build=build_pixels,
            weights_source="none: the pixels are the features",
            resizable=True,
        )
    )
