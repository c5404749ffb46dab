"""An earlier retrain export as the backbone: `--base_model models/<run>`.

The export's Keras model (`model.keras`) minus its final layer becomes the feature extractor, so
a network trained by retrain on one task (a small CNN on digits 0-5, a hidden layer on even
digits) transfers to another: frozen, with a new head, or fine-tuned with `--fine_tune_layers`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras

from retrain.backbones import Backbone, built_backbone
from retrain.errors import RetrainError
from retrain.prototype_layer import PrototypeLayer
from serve.model_info import KERAS_MODEL_FILE, MODEL_JSON, ModelDirError, read_model_info


def load_base_model(model_dir: str) -> Backbone:
    """The export at `model_dir` without its head's last layer (and the dropout before it)."""
    directory = Path(model_dir).expanduser()
    try:
        info = read_model_info(directory)
    except ModelDirError as e:
        raise RetrainError(f"--base_model {model_dir}: {e}") from e
    path = directory / KERAS_MODEL_FILE
    if not path.is_file():
        raise RetrainError(
            f"--base_model {model_dir} has no {KERAS_MODEL_FILE}: retrain writes one with --export keras "
            f"(not for a TF Hub backbone); its {MODEL_JSON} says backbone {info.backbone}"
        )
    try:
        full = keras.saving.load_model(path, custom_objects={"PrototypeLayer": PrototypeLayer}, compile=False)
    except Exception as e:  # Keras raises many types for a damaged file
        raise RetrainError(f"--base_model {model_dir}: cannot load {KERAS_MODEL_FILE}: {e}") from e
    kept = list(full.layers[:-1])
    while kept and isinstance(kept[-1], keras.layers.Dropout):
        kept.pop()
    spec = info.input_spec
    features = keras.Sequential([keras.Input((spec.height, spec.width, 3)), *kept], name="base_model")
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()[:16]
    return built_backbone("base_model", f"base_model@{digest}", spec, features, int(features.output_shape[-1]))
