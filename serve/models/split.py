"""An export's model.tflite cut in two: the backbone, as a canonical flatbuffer that names it by
digest, and the head, as numpy computes it.

retrain composes model.tflite by appending a head (a few FULLY_CONNECTED operators with a fused
ReLU or none, a leading L2_NORMALIZATION for a prototype head, a final SOFTMAX; see
`retrain.tflite_head`) to a backbone's cached feature model, so models trained on one backbone and
feature set carry byte-identical backbones. A server runs that backbone once for all of them and
each model's head on its features. Nothing about the sharing is taken on trust: the backbone is
cut out of the model's own bytes and rewritten in one canonical form (the operators before the
head; only the tensors, buffers and operator codes they use, renumbered in order; the head's
input as the one output, under the signature `features`; no metadata), and its sha256 is the
digest. Two exports share a backbone exactly when their canonical backbones are the same bytes,
and the head is read from the operators that were cut off, weights and all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from serve.text import printable

SIGNATURE = "features"
INPUT_NAME = "images"
OUTPUT_NAME = "features"
DESCRIPTION = "retrain shared backbone: images -> features"
SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
L2_NORM_EPSILON = 1e-6  # TFLite's L2_NORMALIZATION divides by max(norm, 1e-6)

_OPERATOR_NAMES = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
_HEAD_OPERATORS = {
    schema.BuiltinOperator.FULLY_CONNECTED,
    schema.BuiltinOperator.L2_NORMALIZATION,
    schema.BuiltinOperator.SOFTMAX,
}
_KNOWN = "FULLY_CONNECTED or L2_NORMALIZATION, and SOFTMAX last"
_FUSED = {schema.ActivationFunctionType.NONE: False, schema.ActivationFunctionType.RELU: True}


@dataclass(frozen=True)
class L2Normalize:
    """TFLite's L2_NORMALIZATION over the last axis: `x / max(|x|, 1e-6)`."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True, dtype=np.float32))
        return x / np.maximum(norm, np.float32(L2_NORM_EPSILON))


@dataclass(frozen=True, eq=False)
class Dense:
    """TFLite's FULLY_CONNECTED: `x @ weights + bias`, ReLU'd if fused so."""

    weights: np.ndarray  # (D_in, D_out) float32, read-only (TFLite stores it (D_out, D_in))
    bias: np.ndarray  # (D_out,) float32, read-only
    relu: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weights + self.bias
        return np.maximum(y, np.float32(0)) if self.relu else y

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dense):
            return NotImplemented
        return (
            self.relu == other.relu
            and np.array_equal(self.weights, other.weights)
            and np.array_equal(self.bias, other.bias)
        )

    __hash__ = None  # type: ignore[assignment]  # equal by value, and arrays are not hashable


@dataclass(frozen=True)
class Softmax:
    """TFLite's SOFTMAX over the last axis: `exp(beta * (x - max x))`, normalised."""

    beta: float = 1.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        e = np.exp((x - x.max(axis=-1, keepdims=True)) * np.float32(self.beta))
        return e / e.sum(axis=-1, keepdims=True)


Layer = L2Normalize | Dense | Softmax


@dataclass(frozen=True)
class Head:
    """A model's head as numpy computes it: the trailing operators of its model.tflite."""

    layers: tuple[Layer, ...]  # in the order the operators run; the last is a Softmax
    features: int  # D, the width of the feature vectors it takes

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(N, D) float32 features -> (N, C) float32 scores, computed in float32 as the TFLite ops do."""
        x = np.asarray(features, np.float32)
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ValueError(f"the head takes (N, {self.features}) features, not {x.shape}")
        for layer in self.layers:
            x = layer(x)
        return x

    @property
    def num_classes(self) -> int:
        widths = [layer.weights.shape[1] for layer in self.layers if isinstance(layer, Dense)]
        return widths[-1] if widths else self.features


@dataclass(frozen=True)
class SplitExport:
    """model.tflite cut in two: `backbone` (images (N, H, W, 3) -> features (N, D), signature
    `features`) and `head` (features -> scores); `digest` names the backbone's exact bytes."""

    digest: str  # "sha256:<64 hex>" of `backbone`
    backbone: bytes
    head: Head


def split_export(tflite: bytes, head_operators: int) -> SplitExport:
    """Cuts model.tflite into its backbone and its last `head_operators` operators; ValueError (one line)
    if the model does not have one subgraph, or the trailing ops are not a head this module knows, or
    the count is out of range.

    A count that is too large eats into the backbone: its last operator (a CONCATENATION, a MEAN, a
    RESHAPE in retrain's feature models) is no head operator, so ValueError; had it been one, the
    backbone would have one operator fewer and so another digest. A count that is too small leaves
    part of the head (its weights) in the backbone, whose digest is then the model's own.
    """
    model = _unpack(tflite)
    subgraph = model.subgraphs[0]
    operators = list(subgraph.operators or [])
    if not isinstance(head_operators, int) or not 1 <= head_operators < len(operators):
        raise ValueError(
            f"head_operators {head_operators} is out of range: the model has {len(operators)} operators, "
            f"of which the head takes at least 1 and the backbone at least 1"
        )
    body, tail = operators[:-head_operators], operators[-head_operators:]
    try:
        head = _read_head(model, tail)  # before the backbone is rewritten, which renumbers in place
        backbone = _canonical_backbone(model, body, _listed(tail[0].inputs)[0])
    except (AttributeError, IndexError, KeyError, TypeError) as e:  # options of another type, an index past the end
        raise ValueError(f"a malformed TFLite model ({type(e).__name__}: {e})".splitlines()[0]) from e
    return SplitExport("sha256:" + hashlib.sha256(backbone).hexdigest(), backbone, head)


def _unpack(tflite: bytes) -> schema.ModelT:
    """The model's object tree; ValueError unless it is a TFLite flatbuffer with one subgraph, one
    input and one output, its data all inside the flatbuffer."""
    if len(tflite) < 8 or tflite[4:8] != FILE_IDENTIFIER:
        raise ValueError("not a TFLite model (no TFL3 identifier)")
    try:
        model = schema.ModelT.InitFromPackedBuf(tflite, 0)
    except Exception as e:  # a damaged flatbuffer fails wherever its offsets lead
        raise ValueError(f"not a readable TFLite model ({type(e).__name__}: {e})".splitlines()[0]) from e
    subgraphs = model.subgraphs or []
    if len(subgraphs) != 1:
        raise ValueError(f"the model has {len(subgraphs)} subgraphs, not one")
    subgraph = subgraphs[0]
    inputs, outputs = (len(ends) if ends is not None else 0 for ends in (subgraph.inputs, subgraph.outputs))
    if inputs != 1 or outputs != 1:
        raise ValueError(f"the model has {inputs} inputs and {outputs} outputs, not one each")
    if model.externalBuffers or model.externalBufferGroups:
        raise ValueError("the model keeps buffers outside the flatbuffer")
    return model


def _read_head(model: schema.ModelT, tail: list[schema.OperatorT]) -> Head:
    """The head computed by `tail`, a chain from the backbone's features to the model's output."""
    subgraph = model.subgraphs[0]
    for position, operator in enumerate(tail, start=1):
        if _builtin(model, operator) not in _HEAD_OPERATORS:
            name = _OPERATOR_NAMES.get(_builtin(model, operator), str(_builtin(model, operator)))
            raise ValueError(f"head operator {position} of {len(tail)} ({name}) is not one a head has ({_KNOWN})")
    x = _listed(tail[0].inputs)[0] if _listed(tail[0].inputs) else -1
    width = _feature_width(subgraph, x)
    features, layers = width, []
    for position, operator in enumerate(tail, start=1):
        code = _builtin(model, operator)
        name = _OPERATOR_NAMES.get(code, str(code))
        inputs, outputs = _listed(operator.inputs), _listed(operator.outputs)
        where = f"head operator {position} of {len(tail)} ({name})"
        if inputs[:1] != [x] or len(outputs) != 1:
            raise ValueError(f"{where} does not take the previous operator's one output and give one")
        last = position == len(tail)
        if code == schema.BuiltinOperator.L2_NORMALIZATION and len(inputs) == 1:
            if _fused(operator) is not False:
                raise ValueError(f"{where} has a fused activation")
            layers.append(L2Normalize())
        elif code == schema.BuiltinOperator.FULLY_CONNECTED and len(inputs) in (2, 3):
            dense = _dense(subgraph, model, operator, inputs, width, where)
            layers.append(dense)
            width = dense.weights.shape[1]
        elif code == schema.BuiltinOperator.SOFTMAX and len(inputs) == 1 and last:
            options = operator.builtinOptions
            layers.append(Softmax(float(options.beta) if options is not None else 1.0))
        else:
            raise ValueError(f"{where} is not one a head has ({_KNOWN})")
        x = outputs[0]
        _check_activation(subgraph, x, width, where)
    if not isinstance(layers[-1], Softmax):
        raise ValueError("the head does not end in SOFTMAX")
    if [int(i) for i in subgraph.outputs] != [x]:
        raise ValueError("the head's last operator does not give the model's output")
    return Head(tuple(layers), features)


def _builtin(model: schema.ModelT, operator: schema.OperatorT) -> int:
    if not 0 <= operator.opcodeIndex < len(model.operatorCodes or []):
        raise ValueError(f"an operator has code {operator.opcodeIndex} of {len(model.operatorCodes or [])}")
    code = model.operatorCodes[operator.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _fused(operator: schema.OperatorT) -> bool | None:
    """Whether the operator's fused activation is ReLU (True) or none (False); None for any other."""
    options = operator.builtinOptions
    return _FUSED.get(options.fusedActivationFunction if options is not None else schema.ActivationFunctionType.NONE)


def _feature_width(subgraph: schema.SubGraphT, index: int) -> int:
    tensor = _tensor(subgraph, index)
    shape = [int(n) for n in tensor.shape] if tensor.shape is not None else []
    if tensor.type != schema.TensorType.FLOAT32 or len(shape) != 2:
        raise ValueError(f"the head's input is not (N, D) float32 features: {_describe(tensor)}")
    return shape[1]


def _check_activation(subgraph: schema.SubGraphT, index: int, width: int, where: str) -> None:
    tensor = _tensor(subgraph, index)
    shape = [int(n) for n in tensor.shape] if tensor.shape is not None else []
    if tensor.type != schema.TensorType.FLOAT32 or len(shape) != 2 or shape[1] != width:
        raise ValueError(f"{where} gives {_describe(tensor)}, not (N, {width}) float32")


def _dense(
    subgraph: schema.SubGraphT,
    model: schema.ModelT,
    operator: schema.OperatorT,
    inputs: list[int],
    width: int,
    where: str,
) -> Dense:
    options = operator.builtinOptions
    relu = _fused(operator)
    if relu is None:
        raise ValueError(f"{where} has a fused activation other than RELU")
    if options is not None and options.weightsFormat != schema.FullyConnectedOptionsWeightsFormat.DEFAULT:
        raise ValueError(f"{where} has shuffled weights")
    kernel = _constant(subgraph, model, inputs[1], where)
    if kernel.ndim != 2 or kernel.shape[1] != width:
        raise ValueError(f"{where} has weights {kernel.shape}, not (D_out, {width})")
    if len(inputs) == 3 and inputs[2] >= 0:
        bias = _constant(subgraph, model, inputs[2], where)
        if bias.shape != (kernel.shape[0],):
            raise ValueError(f"{where} has bias {bias.shape}, not ({kernel.shape[0]},)")
    else:
        bias = np.zeros(kernel.shape[0], np.float32)
    weights = np.ascontiguousarray(kernel.T)
    weights.flags.writeable = bias.flags.writeable = False
    return Dense(weights, bias, relu)


def _constant(subgraph: schema.SubGraphT, model: schema.ModelT, index: int, where: str) -> np.ndarray:
    """A float32 constant tensor's value, copied out of its buffer."""
    if index < 0:
        raise ValueError(f"{where} has no weights")
    tensor = _tensor(subgraph, index)
    shape = tuple(int(n) for n in tensor.shape) if tensor.shape is not None else ()
    quantized = tensor.quantization is not None and tensor.quantization.scale is not None
    quantized = quantized and len(tensor.quantization.scale) > 0
    if tensor.type != schema.TensorType.FLOAT32 or quantized or tensor.sparsity is not None or tensor.isVariable:
        raise ValueError(f"{where} has weights that are not plain float32: {_describe(tensor)}")
    data = _buffer_data(model, tensor.buffer)
    if data is None or len(data) != 4 * int(np.prod(shape)):
        raise ValueError(f"{where} has weights {_describe(tensor)} whose buffer does not hold them")
    return np.frombuffer(bytes(data), "<f4").astype(np.float32).reshape(shape)


def _buffer_data(model: schema.ModelT, index: int) -> np.ndarray | None:
    """The bytes of buffer `index`, None when it holds none (a tensor computed at run time)."""
    if not 0 <= index < len(model.buffers):
        raise ValueError(f"a tensor points at buffer {index} of {len(model.buffers)}")
    buffer = model.buffers[index]
    if buffer.offset or buffer.size:
        raise ValueError("the model keeps buffers outside the flatbuffer")
    return buffer.data if buffer.data is not None and len(buffer.data) else None


def _describe(tensor: schema.TensorT) -> str:
    name = printable(tensor.name or "")[:100]
    types = {value: key for key, value in vars(schema.TensorType).items() if not key.startswith("_")}
    shape = [int(n) for n in tensor.shape] if tensor.shape is not None else None
    return f"{name!r} {types.get(tensor.type, tensor.type)} {shape}"


def _check_order(model: schema.ModelT, body: list[schema.OperatorT], images: int) -> None:
    """Each operator of the backbone reads only constants, the input and what earlier ones computed (so
    nothing of the head's), and computes each tensor once, never the input."""
    subgraph, known = model.subgraphs[0], {images}
    for position, operator in enumerate(body, start=1):
        for i in _listed(operator.inputs):
            if i >= 0 and i not in known and _buffer_data(model, _tensor(subgraph, i).buffer) is None:
                raise ValueError(f"backbone operator {position} reads tensor {i} before any operator computes it")
        for i in _listed(operator.outputs):
            _tensor(subgraph, i)
            if i in known:
                raise ValueError(f"backbone operator {position} computes tensor {i}, which is already known")
            known.add(i)


def _listed(indices: np.ndarray | list[int] | None) -> list[int]:
    """A vector of tensor indices as the object API unpacks it (numpy, a list, or None when absent)."""
    return [] if indices is None else [int(i) for i in indices]


def _tensor(subgraph: schema.SubGraphT, index: int) -> schema.TensorT:
    if not 0 <= index < len(subgraph.tensors):
        raise ValueError(f"an operator uses tensor {index} of {len(subgraph.tensors)}")
    return subgraph.tensors[index]


def _canonical_backbone(model: schema.ModelT, body: list[schema.OperatorT], features: int) -> bytes:
    """`body` as a model of its own, images -> features, in the one form that depends only on what
    the operators compute and the tensors they use (their names included), never on the head."""
    subgraph = model.subgraphs[0]
    images = int(subgraph.inputs[0])
    _check_order(model, body, images)
    if features not in {i for operator in body for i in _listed(operator.outputs)}:
        raise ValueError("the head's input is not computed by the backbone's operators")
    used = {images, features}
    for operator in body:
        used.update(_listed(operator.inputs), _listed(operator.outputs), _listed(operator.intermediates))
    used.discard(-1)  # an optional input left out
    for index in used:
        _tensor(subgraph, index)
    tensor_index = {old: new for new, old in enumerate(sorted(used))}
    if _buffer_data(model, 0) is not None:
        raise ValueError("the model's buffer 0 is not the empty one")

    buffers, buffer_index = [schema.BufferT()], {}
    tensors = []
    for old in sorted(used):
        tensor = subgraph.tensors[old]
        if tensor.externalBuffer:
            raise ValueError("the model keeps buffers outside the flatbuffer")
        data = _buffer_data(model, tensor.buffer)
        if data is None:
            tensor.buffer = 0  # computed at run time: the empty buffer, however the source spelled it
        else:
            if tensor.buffer not in buffer_index:
                buffer_index[tensor.buffer] = len(buffers)
                buffers.append(schema.BufferT(data=data))
            tensor.buffer = buffer_index[tensor.buffer]
        tensors.append(tensor)

    codes = sorted({operator.opcodeIndex for operator in body})
    code_index = {old: new for new, old in enumerate(codes)}
    for operator in body:
        operator.opcodeIndex = code_index[operator.opcodeIndex]
        operator.inputs = [tensor_index[i] if i >= 0 else -1 for i in _listed(operator.inputs)]
        operator.outputs = [tensor_index[i] for i in _listed(operator.outputs)]
        if operator.intermediates is not None:
            operator.intermediates = [tensor_index[i] for i in _listed(operator.intermediates)]
        operator.debugMetadataIndex = -1

    cut = schema.SubGraphT()
    cut.name, cut.tensors, cut.operators = "main", tensors, body
    cut.inputs, cut.outputs = [tensor_index[images]], [tensor_index[features]]
    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = SIGNATURE, 0
    signature.inputs = [schema.TensorMapT(name=INPUT_NAME, tensorIndex=tensor_index[images])]
    signature.outputs = [schema.TensorMapT(name=OUTPUT_NAME, tensorIndex=tensor_index[features])]
    backbone = schema.ModelT(
        version=SCHEMA_VERSION,
        operatorCodes=[model.operatorCodes[old] for old in codes],
        subgraphs=[cut],
        description=DESCRIPTION,
        buffers=buffers,
        signatureDefs=[signature],
    )
    builder = flatbuffers.Builder(sum(len(b.data) for b in buffers if b.data is not None) + (1 << 16))
    builder.Finish(backbone.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())
