"""Any TF Hub / SavedModel image feature-vector module as a backbone (`--tfhub_module`).

A module is a local SavedModel directory or a handle (URL) that `tensorflow_hub.resolve`
downloads and caches. TF Hub's image convention is float32 images in [0, 1], so the input
contract is `(pixel - 0) / 255`; the size comes from the module's own input signature when it is
fixed, else from `image_size` (default 224).

The module is loaded with `tf.saved_model.load` and called directly, not through
`hub.KerasLayer`: that layer is built on tf_keras (Keras 2) and cannot be mixed with Keras 3
models. The returned `HubFeatureExtractor` is a `tf.Module` that holds the loaded object, so its
variables are tracked and it can be saved into a new SavedModel, or converted to TFLite, together
with a classification head.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from retrain.backbones import Backbone, built_backbone
from retrain.errors import RetrainError
from retrain.paths import user_cache_dir
from serve.preprocess import InputSpec

DEFAULT_IMAGE_SIZE = 224
TFHUB_INPUT_SPEC_MEAN = 0.0
TFHUB_INPUT_SPEC_STD = 255.0

# Signatures tried, in order, when the loaded object is not itself callable (TF1 Hub format
# modules and Keras `model.export()` artifacts only have signatures).
_SIGNATURE_KEYS = ("serving_default", "default", "image_feature_vector")
_OUTPUT_KEYS = ("default", "feature_vector", "output_0")


class TFHubModuleError(RetrainError):
    """The module cannot be used: not found, not a SavedModel, or not an image feature vector."""


class HubFeatureExtractor(tf.Module):
    """Float32 images (N, H, W, 3) in [0, 1] -> feature vectors (N, D), via a loaded SavedModel.

    Calls the object's `__call__` (with `training=False` when it takes that argument) or, for
    modules that only have signatures, one signature and one of its outputs.
    """

    def __init__(
        self,
        module: object,
        signature_key: str | None = None,
        input_key: str | None = None,
        output_key: str | None = None,
    ):
        super().__init__(name="tfhub_feature_vector")
        self.module = module  # tracked attribute: its variables are saved with whatever holds us
        self._signature_key = signature_key
        self._input_key = input_key
        self._output_key = output_key
        self._pass_training = signature_key is None and _takes_training_argument(module)

    def __call__(self, images):
        images = tf.convert_to_tensor(images, dtype=tf.float32)
        if self._signature_key is None:
            if self._pass_training:
                return self.module(images, training=False)
            return self.module(images)
        outputs = self.module.signatures[self._signature_key](**{self._input_key: images})
        return outputs[self._output_key]

    def image_input_specs(self) -> list[tf.TensorSpec]:
        """The image TensorSpecs the module was traced or exported with (shape and dtype)."""
        if self._signature_key is not None:
            signature = self.module.signatures[self._signature_key]
            return [signature.structured_input_signature[1][self._input_key]]
        specs = []
        for function in getattr(self.module.__call__, "concrete_functions", []):
            args = function.structured_input_signature[0]
            if args and isinstance(args[0], tf.TensorSpec):
                specs.append(args[0])
        return specs


def load_tfhub_backbone(handle: str, image_size: int | None = None) -> Backbone:
    """Loads a TF Hub image feature-vector module as a `Backbone`.

    Args:
        handle: a local SavedModel directory, or a URL/handle `tensorflow_hub.resolve` accepts
            (http(s)://, gs://). Downloads are cached in `$TFHUB_CACHE_DIR`, by default
            `<retrain cache>/tfhub`.
        image_size: input height and width for modules that accept any size (default 224);
            must match the module's size when that is fixed.

    Returns:
        A `Backbone` whose `model` maps [0, 1] float32 images to (N, D) vectors, and whose
        `cache_id` is `tfhub:<handle>` for URLs, or carries a content fingerprint for a local
        directory, so editing the module never reuses stale bottlenecks.

    Raises:
        TFHubModuleError: with a one-line message.
    """
    if "://" in handle:
        path = _resolve(handle)
        _check_saved_model_dir(path, handle)
        name, cache_id = handle, f"tfhub:{handle}"
    else:
        path = Path(handle).expanduser().resolve()
        if not path.exists():
            raise TFHubModuleError(f"TF Hub module directory not found: {handle}")
        _check_saved_model_dir(path, handle)
        name, cache_id = str(path), f"tfhub:{path.name}@sha256:{_fingerprint(path)[:16]}"

    loaded = _load(path, handle)
    model = _feature_extractor(loaded, handle)
    height, width = _input_size(model, handle, image_size)
    feature_dim = _feature_dim(model, height, width, handle)
    return built_backbone(
        name, cache_id, InputSpec(height, width, TFHUB_INPUT_SPEC_MEAN, TFHUB_INPUT_SPEC_STD), model, feature_dim
    )


@contextlib.contextmanager
def _default_tfhub_cache_dir() -> Iterator[None]:
    """Sets `$TFHUB_CACHE_DIR` to retrain's cache for the duration, unless the user set it."""
    if os.environ.get("TFHUB_CACHE_DIR"):
        yield
        return
    os.environ["TFHUB_CACHE_DIR"] = str(user_cache_dir() / "tfhub")
    try:
        yield
    finally:
        os.environ.pop("TFHUB_CACHE_DIR", None)


def _resolve(handle: str) -> Path:
    """Downloads (once) and unpacks the module with TF Hub's own resolver and cache."""
    import tensorflow_hub as hub

    try:
        with _default_tfhub_cache_dir():
            return Path(hub.resolve(handle))
    except Exception as e:  # URLError, HTTPError, IOError("not a valid module"), tf errors
        raise TFHubModuleError(f"could not fetch TF Hub module {handle}: {_one_line(e)}") from e


def _check_saved_model_dir(path: Path, handle: str) -> None:
    if not path.is_dir():
        raise TFHubModuleError(f"TF Hub module {handle} is not a SavedModel directory")
    if not (path / "saved_model.pb").is_file() and not (path / "saved_model.pbtxt").is_file():
        raise TFHubModuleError(f"TF Hub module {handle} is not a SavedModel directory (no saved_model.pb in {path})")


def _fingerprint(path: Path) -> str:
    """sha256 of the graph and the variables index.

    The index stores a checksum of every variable's data, so retrained weights change the
    fingerprint without hashing the (possibly large) data shards.
    """
    digest = hashlib.sha256()
    for name in ("saved_model.pb", "saved_model.pbtxt", "variables/variables.index"):
        file = path / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def _load(path: Path, handle: str) -> object:
    # TF1 Hub format modules are saved with no tags; tensorflow_hub.load does the same.
    tags = [] if (path / "tfhub_module.pb").is_file() else None
    try:
        return tf.saved_model.load(str(path), tags=tags)
    except Exception as e:
        raise TFHubModuleError(f"could not load TF Hub module {handle}: {_one_line(e)}") from e


def _feature_extractor(loaded: object, handle: str) -> HubFeatureExtractor:
    """Chooses how to call the module: `__call__` if callable, else an image signature."""
    if callable(loaded):
        return HubFeatureExtractor(loaded)
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    keys = [k for k in _SIGNATURE_KEYS if k in signatures] or (list(signatures) if len(signatures) == 1 else [])
    if not keys:
        raise TFHubModuleError(
            f"TF Hub module {handle} is not callable and has no usable signature "
            f"(found: {', '.join(signatures) or 'none'})"
        )
    key = keys[0]
    signature = signatures[key]
    inputs = {k: s for k, s in signature.structured_input_signature[1].items() if s.shape.rank == 4}
    if len(inputs) != 1:
        raise TFHubModuleError(f"TF Hub module {handle}: signature '{key}' has no single image input")
    outputs = signature.structured_outputs
    output_keys = [k for k in _OUTPUT_KEYS if k in outputs] or (list(outputs) if len(outputs) == 1 else [])
    if not output_keys:
        raise TFHubModuleError(
            f"TF Hub module {handle}: signature '{key}' has several outputs and none is a "
            f"feature vector ({', '.join(outputs)})"
        )
    return HubFeatureExtractor(loaded, key, next(iter(inputs)), output_keys[0])


def _input_size(model: HubFeatureExtractor, handle: str, image_size: int | None) -> tuple[int, int]:
    """The module's fixed (height, width) if its signature has one, else `image_size` or 224."""
    for spec in model.image_input_specs():
        if spec.shape.rank != 4 or spec.shape[-1] not in (None, 3):
            raise TFHubModuleError(f"TF Hub module {handle} does not take RGB images (input {spec.shape})")
        if spec.dtype != tf.float32:
            raise TFHubModuleError(
                f"TF Hub module {handle} takes {spec.dtype.name} images; retrain feeds float32 in [0, 1]"
            )
        height, width = spec.shape[1], spec.shape[2]
        if height is not None and width is not None:
            if image_size is not None and (height, width) != (image_size, image_size):
                raise TFHubModuleError(
                    f"TF Hub module {handle} takes {height}x{width} images, not {image_size}x{image_size}"
                )
            return height, width
    size = image_size or DEFAULT_IMAGE_SIZE
    return size, size


def _feature_dim(model: HubFeatureExtractor, height: int, width: int, handle: str) -> int:
    """Runs one dummy batch and checks the result is a (N, D) feature vector."""
    try:
        output = model(np.zeros((1, height, width, 3), np.float32))
    except Exception as e:
        raise TFHubModuleError(f"TF Hub module {handle} failed on a {height}x{width} image: {_one_line(e)}") from e
    if isinstance(output, (dict, list, tuple)):
        raise TFHubModuleError(f"TF Hub module {handle} returns several outputs, not one feature vector")
    shape = tuple(output.shape)
    if len(shape) != 2:
        raise TFHubModuleError(
            f"TF Hub module {handle} outputs shape {shape}, not a (N, D) feature vector; "
            "use an image feature-vector module"
        )
    return int(shape[1])


def _takes_training_argument(module: object) -> bool:
    """Whether the module's `__call__` has a `training` argument (TF2 Hub modules usually do)."""
    try:
        return "training" in inspect.signature(module.__call__).parameters
    except (TypeError, ValueError):
        return False


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] or type(error).__name__
