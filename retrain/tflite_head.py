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

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from retrain.heads import Head, PrototypeHead, SoftmaxHead

SIGNATURE = "classify_pixels"
INPUT_NAME = "images"
OUTPUT_NAME = "scores"
FILE_IDENTIFIER = b"TFL3"


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
    model, graph = _feature_graph(feature_model)
    x = graph.outputs[0]
    unit = _activation(graph, prototypes.shape[1], "head/l2_normalize")
    options = schema.L2NormOptionsT()
    _operator(model, graph, schema.BuiltinOperator.L2_NORMALIZATION, [x], [unit],
              schema.BuiltinOptions.L2NormOptions, options)  # fmt: skip
    weights = np.asarray(prototypes, np.float64).T * scale  # (D, C), as a dense layer holds it
    similarity = _dense(model, graph, unit, weights, np.zeros(len(prototypes)), "head/prototypes", relu=False)
    return _finish(model, graph, _softmax(model, graph, similarity, len(prototypes)), signature, len(feature_model))


def append_softmax_head(
    feature_model: bytes, layers: Sequence[tuple[np.ndarray, np.ndarray]], signature: str = SIGNATURE
) -> bytes:
    """`feature_model` (images -> features, one subgraph) with `softmax(relu(...relu(x W1 + b1)...) Wn + bn)`
    appended: each (weights (D_in, D_out), biases (D_out,)) pair a fully connected layer, ReLU on all
    but the last. Returns the new model's flatbuffer."""
    model, graph = _feature_graph(feature_model)
    x = graph.outputs[0]
    for index, (weights, biases) in enumerate(layers):
        x = _dense(model, graph, x, weights, biases, f"head/dense_{index}", relu=index < len(layers) - 1)
    return _finish(model, graph, _softmax(model, graph, x, layers[-1][0].shape[1]), signature, len(feature_model))


def _feature_graph(feature_model: bytes) -> tuple[schema.ModelT, schema.SubGraphT]:
    """The feature model, unpacked for editing, and its one subgraph."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(feature_model), 0)
    if len(model.subgraphs) != 1 or len(model.subgraphs[0].outputs) != 1:
        raise ValueError("a feature model has one subgraph with one output")
    return model, model.subgraphs[0]


def _dense(
    model: schema.ModelT,
    graph: schema.SubGraphT,
    x: int,
    weights: np.ndarray,
    biases: np.ndarray,
    name: str,
    relu: bool,
) -> int:
    """`x @ weights + biases` (weights (D_in, D_out)), ReLU'd if asked; returns the output tensor."""
    kernel = _constant(model, graph, np.ascontiguousarray(np.asarray(weights).T, np.float32), f"{name}/kernel")
    bias = _constant(model, graph, np.asarray(biases, np.float32), f"{name}/bias")
    y = _activation(graph, weights.shape[1], name)
    options = schema.FullyConnectedOptionsT()
    options.fusedActivationFunction = schema.ActivationFunctionType.RELU if relu else schema.ActivationFunctionType.NONE
    _operator(model, graph, schema.BuiltinOperator.FULLY_CONNECTED, [x, kernel, bias], [y],
              schema.BuiltinOptions.FullyConnectedOptions, options)  # fmt: skip
    return y


def _softmax(model: schema.ModelT, graph: schema.SubGraphT, x: int, width: int) -> int:
    scores = _activation(graph, width, OUTPUT_NAME)
    options = schema.SoftmaxOptionsT()
    options.beta = 1.0
    _operator(
        model, graph, schema.BuiltinOperator.SOFTMAX, [x], [scores], schema.BuiltinOptions.SoftmaxOptions, options
    )
    return scores


def _finish(model: schema.ModelT, graph: schema.SubGraphT, scores: int, signature: str, size_hint: int) -> bytes:
    """Makes `scores` the model's output under `signature`; returns the packed flatbuffer."""
    graph.outputs = [scores]
    model.signatureDefs = [_signature(graph, signature)]
    builder = flatbuffers.Builder(size_hint + 1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _constant(model: schema.ModelT, graph: schema.SubGraphT, value: np.ndarray, name: str) -> int:
    """A float32 tensor backed by a new buffer; returns its tensor index."""
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(value.tobytes(), dtype=np.uint8)
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape = list(value.shape)
    tensor.type = schema.TensorType.FLOAT32
    tensor.buffer = len(model.buffers) - 1
    tensor.name = name
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _activation(graph: schema.SubGraphT, width: int, name: str) -> int:
    """A float32 (batch, width) tensor computed at run time (buffer 0 is the empty one by convention)."""
    tensor = schema.TensorT()
    tensor.shape = [1, width]
    tensor.shapeSignature = [-1, width]
    tensor.type = schema.TensorType.FLOAT32
    tensor.buffer = 0
    tensor.name = name
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _operator(
    model: schema.ModelT,
    graph: schema.SubGraphT,
    builtin: int,
    inputs: list[int],
    outputs: list[int],
    options_type: int,
    options: object,
) -> None:
    operator = schema.OperatorT()
    operator.opcodeIndex = _opcode(model, builtin)
    operator.inputs = inputs
    operator.outputs = outputs
    operator.builtinOptionsType = options_type
    operator.builtinOptions = options
    graph.operators.append(operator)


def _opcode(model: schema.ModelT, builtin: int) -> int:
    """The index of `builtin`'s operator code, added if the model has none yet."""
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _signature(graph: schema.SubGraphT, key: str) -> schema.SignatureDefT:
    def entry(name: str, tensor: int) -> schema.TensorMapT:
        mapping = schema.TensorMapT()
        mapping.name, mapping.tensorIndex = name, tensor
        return mapping

    signature = schema.SignatureDefT()
    signature.signatureKey = key
    signature.subgraphIndex = 0
    signature.inputs = [entry(INPUT_NAME, graph.inputs[0])]
    signature.outputs = [entry(OUTPUT_NAME, graph.outputs[0])]
    return signature
