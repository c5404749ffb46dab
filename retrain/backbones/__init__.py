"""The backbone registry: every pretrained network retrain can compute bottlenecks with.

A backbone is a name, the input contract its weights were trained with (size and normalisation,
see `serve.preprocess.InputSpec`), and a builder that returns a Keras model mapping a batch of
normalised images (N, H, W, 3) to feature vectors (N, D). Adding one is an entry in `BACKBONES`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from retrain.errors import RetrainError
from serve.preprocess import InputSpec


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry. `build(weights_file)` loads local weights when given a path; a `resizable`
    backbone's builder also takes `image_size`. Without `pretrained` weights and without a
    `--weights_file`, the backbone trains from scratch with the head."""

    name: str
    input_spec: InputSpec
    build: Callable[..., object]
    weights_source: str
    resizable: bool = False
    pretrained: bool = True


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
    from_scratch: bool = False  # random weights: trained end to end, its vectors never cached


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
    base_model: str | None = None,
) -> Backbone:
    """Builds the chosen backbone: an earlier export, a TF Hub module, or a registry entry by name."""
    if base_model:
        from retrain.backbones.base_model import load_base_model

        return load_base_model(base_model)
    if tfhub_module:
        from retrain.backbones.tfhub import load_tfhub_backbone

        return load_tfhub_backbone(tfhub_module, image_size)
    spec = registered(architecture)
    if spec.resizable:
        model = spec.build(weights_file, image_size)
        size = int(model.input_shape[1])
        input_spec = replace(spec.input_spec, height=size, width=size)
    else:
        model = spec.build(weights_file)
        input_spec = spec.input_spec
    weights_id = f"file-{_file_digest(weights_file)}" if weights_file else "imagenet"
    if not spec.pretrained and not weights_file:
        weights_id = "scratch"
    elif spec.resizable and not weights_file:
        weights_id = "none"
    return Backbone(
        name=spec.name,
        cache_id=f"{spec.name}@{weights_id}" + (f"-{input_spec.height}px" if spec.resizable else ""),
        input_spec=input_spec,
        model=model,
        feature_dim=int(model.output_shape[-1]),
        from_scratch=not spec.pretrained and not weights_file,
    )


def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()[:16]
    except OSError as e:
        raise RetrainError(f"cannot read --weights_file {path}: {e.strerror or e}") from e


def _register_builtins() -> None:
    """Importing a backbone module registers it; done lazily because each import pulls in Keras."""
    from retrain.backbones import efficientnet_lite0, keras_apps, scratch  # noqa: F401
