"""A backbone converted to a TFLite feature model once, and kept like a bottleneck.

The conversion happens the first time a backbone has images to compute; afterwards its `.tflite`
file is read from the cache. EfficientNet-Lite0 (the default) and Lite2 with their ImageNet weights
are written by retrain's own numpy builder (`retrain.backbones.efficientnet_lite_tflite`: 0.1 s, no TensorFlow);
any other goes through TensorFlow's converter (seconds, and TensorFlow's ~1 GB). The key names
the exact network and weights (the backbone's cache id) and what made the file (the builder's
version, or TensorFlow's), so a new converter never reuses an old conversion. Files are written
atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from importlib import metadata
from pathlib import Path

from retrain.backbones import Backbone
from retrain.backbones.taps import base_cache_id
from retrain.files import replacing
from retrain.quiet import import_tensorflow_quietly

log = logging.getLogger(__name__)

FEATURE_MODELS_DIR = "feature_models"
INPUT_NAME = "images"
OUTPUT_NAME = "features"
FORMAT_VERSION = 1  # of what is converted: the signature's names and shapes
PREBUILT_ENV = "RETRAIN_FEATURE_MODELS_DIR"
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tf-nightly")
# Backbones whose feature model retrain writes itself, in numpy (cache id -> the builder's version,
# part of the file's name: Lite0's tag predates Lite2 and is kept, as its files have not changed).
BUILT_WITHOUT_TENSORFLOW = {
    "efficientnet_lite0@imagenet": "efficientnet_lite0_tflite-1",
    "efficientnet_lite2@imagenet": "efficientnet_lite_tflite-1",
}


class ConversionError(Exception):
    """The TFLite converter rejected the backbone."""


def feature_model_name(backbone: Backbone) -> str:
    """The file name of the backbone's feature model, named by what makes it (`maker`)."""
    salt = f"{backbone.cache_id}|{maker(backbone)}|format-{FORMAT_VERSION}"
    digest = hashlib.sha256(salt.encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone.cache_id)[:60]
    return f"{readable}-{digest}.tflite"


def cached_feature_model(backbone: Backbone, cache_root: Path, reconvert: bool = False) -> Path:
    """The backbone's TFLite feature model: from `$RETRAIN_FEATURE_MODELS_DIR` (converted ahead of
    time, e.g. into a container image; may be read-only), else from `feature_models/` beside the
    bottlenecks in `cache_root`, converted there now if missing (or `reconvert`, for an entry found
    unreadable). ConversionError if the converter rejects the network."""
    name = feature_model_name(backbone)
    prebuilt = os.environ.get(PREBUILT_ENV)
    if prebuilt and not reconvert and (Path(prebuilt) / name).is_file():
        return Path(prebuilt) / name
    path = Path(cache_root) / FEATURE_MODELS_DIR / name
    if reconvert or not path.is_file():
        if base_cache_id(backbone) in BUILT_WITHOUT_TENSORFLOW:
            log.info("writing the TFLite feature model of %s (once; cached in %s)", backbone.cache_id, path.parent)
        else:  # the container tests look for this word: an image should ship what it would convert
            log.info("converting %s to a TFLite feature model (once; cached in %s)", backbone.cache_id, path.parent)
        save_feature_model(backbone, path)
    return path


def save_prebuilt(backbone: Backbone, folder: Path) -> Path:
    """Converts the backbone into `folder` under the name `cached_feature_model` looks for in
    `$RETRAIN_FEATURE_MODELS_DIR` (a container build, a test session); returns the file."""
    path = Path(folder) / feature_model_name(backbone)
    save_feature_model(backbone, path)
    return path


def maker(backbone: Backbone) -> str:
    """What writes the backbone's feature model: retrain's own builder (no TensorFlow) for
    EfficientNet-Lite's ImageNet weights, else TensorFlow's converter, by version."""
    if base_cache_id(backbone) in BUILT_WITHOUT_TENSORFLOW:
        return BUILT_WITHOUT_TENSORFLOW[base_cache_id(backbone)]
    return f"converter-{converter_version()}"


def converter_version() -> str:
    """TensorFlow's version, read from the installed package's metadata: finding a cached
    conversion must not cost TensorFlow's import."""
    for distribution in TENSORFLOW_DISTRIBUTIONS:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    import_tensorflow_quietly()
    import tensorflow as tf

    return tf.__version__


def save_feature_model(backbone: Backbone, path: Path) -> None:
    """Builds or converts the backbone's feature model and writes it to `path` atomically."""
    if base_cache_id(backbone) in BUILT_WITHOUT_TENSORFLOW:
        from retrain.backbones.efficientnet_lite_tflite import FINAL, feature_model_bytes
        from retrain.backbones.efficientnet_lite_variants import VARIANTS

        data = feature_model_bytes(taps=backbone.taps or FINAL, variant=VARIANTS[backbone.name])
    else:
        data = convert(backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as temporary:
        temporary.write_bytes(data)


def convert(backbone: Backbone) -> bytes:
    """The backbone as a float32 TFLite model: signature `features`, images (N, H, W, 3) -> (N, D)."""
    import_tensorflow_quietly()
    import keras
    import tensorflow as tf

    spec = backbone.input_spec
    model = backbone.model  # built here, eagerly: building inside the trace would not load its weights
    module = tf.Module()
    # Keras 3 variables must be listed as TensorFlow variables, or the converter drops the weights.
    module.variables_to_keep = [v.value if isinstance(v, keras.Variable) else v for v in model.variables]
    module.features = tf.function(
        lambda images: {OUTPUT_NAME: model(images)},
        input_signature=[tf.TensorSpec([None, spec.height, spec.width, 3], tf.float32, name=INPUT_NAME)],
    )
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([module.features.get_concrete_function()], module)
        return converter.convert()
    except Exception as e:  # the converter raises many types (ConverterError, ValueError, ...)
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise ConversionError(f"{type(e).__name__}: {first_line}") from e
