"""A classifier's TFLite model made by appending its head to the backbone's cached feature model.

Converting backbone + head with TensorFlow's converter takes many seconds per export, though only
the head is new. A head is a few operators: fully connected layers and a softmax (a softmax
head), or L2 normalisation, one fully connected layer and a softmax (a prototype head). So it is
appended to the converted feature model directly, through the TFLite flatbuffer schema (the
object API LiteRT ships as `schema_py_generated`): no TensorFlow, a fraction of a second.
The result has the signature serve runs, `classify_pixels`: images (N, H, W, 3) -> scores (N, C).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from retrain.heads import Head, PrototypeHead, SoftmaxHead
from retrain.tflite_graph import TFLiteGraph

SIGNATURE = "classify_pixels"
INPUT_NAME = "images"
OUTPUT_NAME = "scores"


def append_head(feature_model: bytes, head: Head) -> bytes:
    """`feature_model` (images -> features) followed by `head`, as one TFLite model."""
    if isinstance(head, SoftmaxHead):
        return append_softmax_head(feature_model, head.layers)
    if isinstance(head, PrototypeHead):
        return append_prototype_head(feature_model, head.prototypes, head.scale)
    raise TypeError(f"no TFLite form for {type(head).__name__}")


def append_prototype_head(
    feature_model: bytes, prototypes: np.ndarray, scale: float, signature: str = SIGNATURE
) -> bytes:
    """`feature_model` with `softmax(scale * l2_normalize(x) @ prototypes.T)` appended, as
    `heads.PrototypeHead` computes it (TFLite floors the norm at 1e-6 where numpy does at 1e-12)."""
    graph = _feature_graph(feature_model)
    unit = graph.activation((prototypes.shape[1],), "head/l2_normalize")
    graph.operator(schema.BuiltinOperator.L2_NORMALIZATION, [graph.subgraph.outputs[0]], unit,
                   schema.BuiltinOptions.L2NormOptions, schema.L2NormOptionsT())  # fmt: skip
    weights = np.asarray(prototypes, np.float64).T * scale  # (D, C), as a dense layer holds it
    similarity = _dense(graph, unit, weights, np.zeros(len(prototypes)), "head/prototypes", relu=False)
    return _finish(graph, _softmax(graph, similarity, len(prototypes)), signature)


def append_softmax_head(
    feature_model: bytes, layers: Sequence[tuple[np.ndarray, np.ndarray]], signature: str = SIGNATURE
) -> bytes:
    """`feature_model` (images -> features, one subgraph) with `softmax(relu(...relu(x W1 + b1)...) Wn + bn)`
    appended: each (weights (D_in, D_out), biases (D_out,)) pair a fully connected layer, ReLU on all
    but the last. Returns the new model's flatbuffer."""
    graph = _feature_graph(feature_model)
    x = graph.subgraph.outputs[0]
    for index, (weights, biases) in enumerate(layers):
        x = _dense(graph, x, weights, biases, f"head/dense_{index}", relu=index < len(layers) - 1)
    return _finish(graph, _softmax(graph, x, layers[-1][0].shape[1]), signature)


def _feature_graph(feature_model: bytes) -> TFLiteGraph:
    """The feature model, unpacked for editing."""
    graph = TFLiteGraph.unpack(feature_model)
    if len(graph.subgraph.outputs) != 1:
        raise ValueError("a feature model has one subgraph with one output")
    return graph


def _dense(graph: TFLiteGraph, x: int, weights: np.ndarray, biases: np.ndarray, name: str, relu: bool) -> int:
    """`x @ weights + biases` (weights (D_in, D_out)), ReLU'd if asked; returns the output tensor."""
    kernel = graph.constant(np.ascontiguousarray(np.asarray(weights).T, np.float32), f"{name}/kernel")
    bias = graph.constant(np.asarray(biases, np.float32), f"{name}/bias")
    y = graph.activation((weights.shape[1],), name)
    options = schema.FullyConnectedOptionsT()
    options.fusedActivationFunction = schema.ActivationFunctionType.RELU if relu else schema.ActivationFunctionType.NONE
    graph.operator(schema.BuiltinOperator.FULLY_CONNECTED, [x, kernel, bias], y,
                   schema.BuiltinOptions.FullyConnectedOptions, options)  # fmt: skip
    return y


def _softmax(graph: TFLiteGraph, x: int, width: int) -> int:
    scores = graph.activation((width,), OUTPUT_NAME)
    options = schema.SoftmaxOptionsT()
    options.beta = 1.0
    graph.operator(schema.BuiltinOperator.SOFTMAX, [x], scores, schema.BuiltinOptions.SoftmaxOptions, options)
    return scores


def _finish(graph: TFLiteGraph, scores: int, signature: str) -> bytes:
    """Makes `scores` the model's output under `signature`; returns the packed flatbuffer."""
    return graph.pack({INPUT_NAME: graph.subgraph.inputs[0]}, {OUTPUT_NAME: scores}, signature)
