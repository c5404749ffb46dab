"""The parts of an export that need TensorFlow: the SavedModel, `model.keras`, a whole-network
TFLite conversion.

A run writes them only when asked (`--export saved_model,keras`, `--saved_model_dir`), or, for
model.tflite, when the backbone has no cached feature model to append the head to (it was
fine-tuned, or the converter rejects it alone). Importing this module imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from retrain.backbones import Backbone
from retrain.heads import Head
from serve.preprocess import SUBPIXEL, InputSpec

PIXELS_SIGNATURE = "classify_pixels"


def save_classifier(directory: Path, backbone: Backbone, head: Head, labels: list[str]) -> None:
    """A SavedModel of backbone + head with the bytes (`serving_default`) and pixels signatures."""
    module = _Classifier(backbone, head, labels)
    tf.saved_model.save(
        module,
        str(directory),
        signatures={"serving_default": module.serve_image_bytes, PIXELS_SIGNATURE: module.classify_pixels},
    )


def save_keras_model(path: Path, backbone: Backbone, head: Head) -> None:
    """Backbone + head as one Keras model, for Keras users and for a later `--base_model`."""
    spec = backbone.input_spec
    model = keras.Sequential(
        [keras.Input((spec.height, spec.width, 3), name="images"), backbone.model, *head.keras_layers()],
        name="retrained",
    )
    model.save(path)


def convert_to_tflite(saved_model_dir: Path) -> bytes:
    """The pixels signature as a float32 TFLite flatbuffer with a free batch dimension."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[PIXELS_SIGNATURE])
    return converter.convert()


class _Classifier(tf.Module):
    """Backbone + trained head, with the two serving entry points."""

    def __init__(self, backbone: Backbone, head: Head, labels: list[str]):
        super().__init__(name="retrained_classifier")
        spec = backbone.input_spec
        self.spec = spec
        self.backbone = backbone.model
        # Keras 3 variables must be listed as TensorFlow variables, or the TFLite converter does not
        # find them in the SavedModel and silently drops the backbone's weights.
        self.backbone_variables = _tf_variables(backbone.model.variables)
        self.head_layers = head.keras_layers()
        self.head_variables = _tf_variables([v for layer in self.head_layers for v in layer.variables])
        self.label_table = tf.constant(labels)
        self.classify_pixels = tf.function(
            self._classify_pixels,
            input_signature=[tf.TensorSpec([None, spec.height, spec.width, 3], tf.float32, name="images")],
        )
        self.serve_image_bytes = tf.function(
            self._serve_image_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
        )

    def _classify_pixels(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        scores = self.backbone(images)
        for layer in self.head_layers:
            scores = layer(scores)
        return {"scores": scores}

    def _serve_image_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(
            lambda data: decode_and_preprocess(data, self.spec),
            image_bytes,
            fn_output_signature=tf.TensorSpec([self.spec.height, self.spec.width, 3], tf.float32),
        )
        scores = self._classify_pixels(pixels)["scores"]
        classes = tf.broadcast_to(self.label_table, tf.shape(scores))
        return {"scores": scores, "classes": classes}


def _tf_variables(variables: list) -> list[tf.Variable]:
    return [v.value if isinstance(v, keras.Variable) else v for v in variables]


def decode_and_preprocess(data: tf.Tensor, spec: InputSpec) -> tf.Tensor:
    """`serve.preprocess.preprocess` in TensorFlow ops, for the SavedModel's bytes signature.

    Same JPEG DCT, the whole image sampled bilinearly as `serve.preprocess.resize_float` does
    (corners on corners, positions rounded to 1/32 pixel, edges clamped; exact in float32), halves
    rounded up to 8-bit, and normalisation: the pixels are identical. EXIF orientation and alpha
    compositing are Pillow-only.
    """
    image = tf.cond(
        tf.io.is_jpeg(data),
        # Pillow's libjpeg uses the accurate integer DCT; TensorFlow's default is the fast one.
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    rows, row_weights = _taps(tf.shape(image)[0], spec.height)
    columns, column_weights = _taps(tf.shape(image)[1], spec.width)
    picked = tf.gather(tf.cast(image, tf.float32), rows)  # (2, height, W, 3)
    blended = picked[0] * (1 - row_weights)[:, None, None] + picked[1] * row_weights[:, None, None]
    picked = tf.gather(blended, columns, axis=1)  # (height, 2, width, 3)
    resized = picked[:, 0] * (1 - column_weights)[None, :, None] + picked[:, 1] * column_weights[None, :, None]
    pixels = tf.clip_by_value(tf.floor(resized + 0.5), 0.0, 255.0)
    return (pixels - spec.mean) / spec.std


def _taps(limit: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """`serve.preprocess._taps` of the whole axis, in TensorFlow ops (float64 positions, rounded alike)."""
    scale = tf.cast(limit, tf.float64) / size
    positions = tf.round(tf.range(size, dtype=tf.float64) * scale * SUBPIXEL) / SUBPIXEL
    first = tf.floor(positions)
    indices = tf.clip_by_value(tf.cast(tf.stack([first, first + 1]), tf.int32), 0, limit - 1)
    return indices, tf.cast(positions - first, tf.float32)


def is_keras_model(backbone: Backbone) -> bool:
    """Whether the backbone can be saved inside a Keras model (TF Hub modules cannot)."""
    return isinstance(backbone.model, keras.Model)
