"""A classifier's TFLite model made by appending its head to the backbone's cached feature model.

Converting backbone + head with TensorFlow's converter takes many seconds per export, though only
the head is new. The head of a softmax classifier is a few fully connected layers and a softmax,
so it is appended to the converted feature model directly, through the TFLite flatbuffer schema
(the object API LiteRT ships as `schema_py_generated`): no TensorFlow, a fraction of a second.
The result has the signature serve runs, `classify_pixels`: images (N, H, W, 3) -> scores (N, C).
"""

from __future__ import annotations

from collections.abc import Sequence

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

SIGNATURE = "classify_pixels"
INPUT_NAME = "images"
OUTPUT_NAME = "scores"
FILE_IDENTIFIER = b"TFL3"


def append_softmax_head(
    feature_model: bytes, layers: Sequence[tuple[np.ndarray, np.ndarray]], signature: str = SIGNATURE
) -> bytes:
    """`feature_model` (images -> features, one subgraph) with `softmax(relu(...relu(x W1 + b1)...) Wn + bn)`
    appended: each (weights (D_in, D_out), biases (D_out,)) pair a fully connected layer, ReLU on all
    but the last. Returns the new model's flatbuffer."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(feature_model), 0)
    if len(model.subgraphs) != 1 or len(model.subgraphs[0].outputs) != 1:
        raise ValueError("a feature model has one subgraph with one output")
    graph = model.subgraphs[0]
    x = graph.outputs[0]
    for index, (weights, biases) in enumerate(layers):
        last = index == len(layers) - 1
        kernel = _constant(model, graph, np.ascontiguousarray(weights.T, np.float32), f"head/dense_{index}/kernel")
        bias = _constant(model, graph, np.asarray(biases, np.float32), f"head/dense_{index}/bias")
        y = _activation(graph, weights.shape[1], f"head/dense_{index}")
        options = schema.FullyConnectedOptionsT()
        options.fusedActivationFunction = (
            schema.ActivationFunctionType.NONE if last else schema.ActivationFunctionType.RELU
        )
        _operator(model, graph, schema.BuiltinOperator.FULLY_CONNECTED, [x, kernel, bias], [y],
                  schema.BuiltinOptions.FullyConnectedOptions, options)  # fmt: skip
        x = y
    scores = _activation(graph, layers[-1][0].shape[1], OUTPUT_NAME)
    options = schema.SoftmaxOptionsT()
    options.beta = 1.0
    _operator(
        model, graph, schema.BuiltinOperator.SOFTMAX, [x], [scores], schema.BuiltinOptions.SoftmaxOptions, options
    )
    graph.outputs = [scores]
    model.signatureDefs = [_signature(graph, signature)]
    builder = flatbuffers.Builder(len(feature_model) + 1024)
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
