"""Export of a trained classifier: SavedModel for TensorFlow Serving, TFLite for serve, labels, model.json.

Everything is written into a hidden staging folder next to the destination and renamed into place
at the end, so an export is either complete or absent. The SavedModel's `serving_default` takes
encoded image bytes and decodes them in TensorFlow with the same steps as `serve.preprocess`;
`model.tflite` takes already-preprocessed pixels, which serve computes with that very function.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf

from retrain.backbones import Backbone
from retrain.backbones.base_model import KERAS_MODEL_FILE
from retrain.errors import RetrainError
from retrain.heads import Head, SoftmaxHead
from retrain.paths import check_writable
from retrain.tflite_head import append_softmax_head
from serve.model_info import MODEL_JSON, SAVED_MODEL_DIR, TFLITE_FILE, ModelInfo
from serve.preprocess import CENTRAL_FRACTION, InputSpec

PIXELS_SIGNATURE = "classify_pixels"
LATEST_LINK = "latest"


def default_output_dir(models_dir: str | Path = "models") -> Path:
    """`models/<UTC timestamp>`, made unique if a run in the same second already took the name."""
    base = Path(models_dir) / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    candidate, suffix = base, 1
    while candidate.exists():
        candidate, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    return candidate


def check_output_dir(output_dir: str | Path) -> None:
    """Fails early, before any work, when the export could not be written; creates nothing."""
    target = Path(output_dir)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / MODEL_JSON).exists())):
        raise RetrainError(f"--output_dir {output_dir} exists and is not an earlier export; choose another")
    check_writable(target, "--output_dir")


def export_model(
    output_dir: str | Path,
    backbone: Backbone,
    head: Head,
    info: ModelInfo,
    update_latest: bool = False,
    write_reports: Callable[[Path], None] | None = None,
    feature_model: Path | None = None,
) -> Path:
    """Writes the export atomically and returns its path; with `update_latest`, repoints `<parent>/latest`.

    `write_reports(folder)` adds the report files (plots) beside model.json before the rename.
    `feature_model`, the backbone's converted TFLite feature model (when the backbone is exactly the
    one exported, not fine-tuned), makes model.tflite by appending a softmax head to it
    (`retrain.tflite_head`) instead of converting the whole network again.
    """
    target = Path(output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()  # unlike mkdtemp, keeps the umask's permissions: an export is meant to be shared
    try:
        saved_model = staging / SAVED_MODEL_DIR
        save_classifier(saved_model, backbone, head, info.labels)
        if feature_model is not None and isinstance(head, SoftmaxHead):
            tflite = append_softmax_head(feature_model.read_bytes(), head.layers)
        else:
            tflite = convert_to_tflite(saved_model)
        (staging / TFLITE_FILE).write_bytes(tflite)
        if isinstance(backbone.model, keras.Model):
            save_keras_model(staging / KERAS_MODEL_FILE, backbone, head)
        if write_reports:
            write_reports(staging)
        info.write(staging)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if update_latest:
        point_latest_at(target)
    return target


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


def point_latest_at(target: Path) -> None:
    """Atomically repoints the `latest` symlink beside `target` (a relative link, so volumes can move)."""
    link = target.parent / LATEST_LINK
    temporary = target.parent / f".{LATEST_LINK}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    os.symlink(target.name, temporary)
    os.replace(temporary, link)


def _move_into_place(staging: Path, target: Path) -> None:
    """Renames the finished export over `target`; an earlier export there is removed only afterwards."""
    if not target.exists():
        os.rename(staging, target)
        return
    retired = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, retired)
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


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

    Same JPEG DCT, integer central square crop, float bicubic resize (Keys a=-0.5, antialiased
    like Pillow), rounding to 8-bit and normalisation: the pixels are identical for PNG and for
    JPEGs small enough that Pillow's draft mode does not apply. EXIF orientation, alpha
    compositing and draft mode are Pillow-only.
    """
    image = tf.cond(
        tf.io.is_jpeg(data),
        # Pillow's libjpeg uses the accurate integer DCT; TensorFlow's default is the fast one.
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.maximum(1, tf.cast(CENTRAL_FRACTION * tf.cast(tf.minimum(height, width), tf.float32), tf.int32))
    image = tf.slice(image, [(height - side + 1) // 2, (width - side + 1) // 2, 0], [side, side, 3])
    resized = tf.image.resize(tf.cast(image, tf.float32), [spec.height, spec.width], method="bicubic", antialias=True)
    pixels = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
    return (pixels - spec.mean) / spec.std
