"""The backbone registry: every pretrained network retrain can compute bottlenecks with.

A backbone is a name, the input contract its weights were trained with (size and normalisation,
see `serve.preprocess.InputSpec`), and a builder that returns a Keras model mapping a batch of
normalised images (N, H, W, 3) to feature vectors (N, D). Adding one is an entry in `BACKBONES`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from retrain.errors import RetrainError
from serve.preprocess import InputSpec


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry. `build(weights_file)` loads local weights when given a path."""

    name: str
    input_spec: InputSpec
    build: Callable[[str | None], object]
    weights_source: str


@dataclass(frozen=True)
class Backbone:
    """A built backbone, ready to compute bottlenecks.

    `cache_id` names the exact network and weights: it is part of every bottleneck cache key, so
    vectors from different weights never mix.
    """

    name: str
    cache_id: str
    input_spec: InputSpec
    model: object  # a Keras model or a loaded SavedModel: normalised images -> (N, feature_dim)
    feature_dim: int


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


DEFAULT_ARCHITECTURE = "efficientnet_lite0"


def available_architectures() -> list[str]:
    _register_builtins()
    return sorted(BACKBONES)


def registered(architecture: str) -> BackboneSpec:
    """The registry entry for `--architecture`, or a RetrainError that lists the choices."""
    _register_builtins()
    if architecture not in BACKBONES:
        raise RetrainError(f"unknown --architecture {architecture!r}; choose from {', '.join(sorted(BACKBONES))}")
    return BACKBONES[architecture]


def load_backbone(
    architecture: str = DEFAULT_ARCHITECTURE,
    weights_file: str | None = None,
    tfhub_module: str | None = None,
    image_size: int | None = None,
) -> Backbone:
    """Builds the chosen backbone: a registry entry by name, or a TF Hub feature-vector module."""
    if tfhub_module:
        from retrain.backbones.tfhub import load_tfhub_backbone

        return load_tfhub_backbone(tfhub_module, image_size)
    spec = registered(architecture)
    model = spec.build(weights_file)
    weights_id = f"file-{_file_digest(weights_file)}" if weights_file else "imagenet"
    return Backbone(
        name=spec.name,
        cache_id=f"{spec.name}@{weights_id}",
        input_spec=spec.input_spec,
        model=model,
        feature_dim=int(model.output_shape[-1]),
    )


def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()[:16]
    except OSError as e:
        raise RetrainError(f"cannot read --weights_file {path}: {e.strerror or e}") from e


def _register_builtins() -> None:
    """Importing a backbone module registers it; done lazily because each import pulls in Keras."""
    from retrain.backbones import efficientnet_lite0, keras_apps  # noqa: F401
