"""A TFLite model's one subgraph, edited through the flatbuffer schema's object API.

retrain writes TFLite models without TensorFlow in two places: the default backbone's feature
model, operator by operator (`retrain.backbones.efficientnet_lite0_tflite`), and a classifier, by
appending its head to a feature model (`retrain.tflite_head`). Both add tensors, constants and
operators to one subgraph and pack it under one signature, through the object API LiteRT ships
as `schema_py_generated`; this is that, once.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
TENSOR_TYPES = {np.dtype(np.float32): schema.TensorType.FLOAT32, np.dtype(np.int32): schema.TensorType.INT32}


class TFLiteGraph:
    """One subgraph under construction. Buffer 0 is the empty one that run-time tensors point at;
    each constant gets a buffer of its own."""

    def __init__(self, model: schema.ModelT | None = None, description: str = ""):
        if model is None:
            model = schema.ModelT()
            model.version, model.description = SCHEMA_VERSION, description
            model.buffers, model.operatorCodes = [schema.BufferT()], []
            subgraph = schema.SubGraphT()
            subgraph.name, subgraph.tensors, subgraph.operators = "main", [], []
            subgraph.inputs, subgraph.outputs = [], []
            model.subgraphs = [subgraph]
        if len(model.subgraphs) != 1:
            raise ValueError(f"expected a model with one subgraph, not {len(model.subgraphs)}")
        self.model = model
        self.subgraph = model.subgraphs[0]

    @classmethod
    def unpack(cls, data: bytes) -> TFLiteGraph:
        """An existing model (a feature model, a quantized classifier), to add operators to."""
        return cls(unpack_model(data))

    def tensor(
        self,
        shape: list[int],
        name: str,
        shape_signature: list[int] | None = None,
        buffer: int = 0,
        dtype: int = schema.TensorType.FLOAT32,
    ) -> int:
        """A new tensor; returns its index."""
        tensor = schema.TensorT()
        tensor.shape, tensor.shapeSignature, tensor.type = shape, shape_signature, dtype
        tensor.buffer, tensor.name, tensor.hasRank = buffer, name, True
        self.subgraph.tensors.append(tensor)
        return len(self.subgraph.tensors) - 1

    def activation(self, shape: tuple[int, ...], name: str) -> int:
        """A float32 tensor of `shape` per image, computed at run time, with a free batch dimension."""
        return self.tensor([1, *shape], name, shape_signature=[-1, *shape])

    def constant(self, value: np.ndarray, name: str) -> int:
        """A float32 or int32 constant in a buffer of its own; returns its tensor index."""
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value.tobytes(), np.uint8)  # C order, whatever `value`'s strides
        self.model.buffers.append(buffer)
        return self.tensor(list(value.shape), name, buffer=len(self.model.buffers) - 1, dtype=TENSOR_TYPES[value.dtype])

    def operator(self, builtin: int, inputs: list[int], output: int, options_type: int, options: object) -> None:
        operator = schema.OperatorT()
        operator.opcodeIndex = self._opcode(builtin)
        operator.inputs, operator.outputs = inputs, [output]
        operator.builtinOptionsType, operator.builtinOptions = options_type, options
        self.subgraph.operators.append(operator)

    def pack(self, inputs: dict[str, int], outputs: dict[str, int], signature: str) -> bytes:
        """The model's flatbuffer, with these inputs and outputs (name -> tensor) under `signature`."""
        self.subgraph.inputs, self.subgraph.outputs = list(inputs.values()), list(outputs.values())
        definition = schema.SignatureDefT()
        definition.signatureKey, definition.subgraphIndex = signature, 0
        definition.inputs = [_tensor_map(name, tensor) for name, tensor in inputs.items()]
        definition.outputs = [_tensor_map(name, tensor) for name, tensor in outputs.items()]
        self.model.signatureDefs = [definition]
        size = sum(len(buffer.data) for buffer in self.model.buffers if buffer.data is not None)
        builder = flatbuffers.Builder(size + (1 << 16))
        builder.Finish(self.model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())

    def _opcode(self, builtin: int) -> int:
        """The index of `builtin`'s operator code, added if the model has none yet."""
        for index, code in enumerate(self.model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
                return index
        code = schema.OperatorCodeT()
        code.builtinCode = builtin
        code.deprecatedBuiltinCode = min(builtin, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
        code.version = 1
        self.model.operatorCodes.append(code)
        return len(self.model.operatorCodes) - 1


def unpack_model(data: bytes) -> schema.ModelT:
    """The model's object tree, with every buffer's bytes inside it: a writer may keep large buffers
    after the flatbuffer, at an offset (AI Edge Quantizer does), which packing again would lose."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for buffer in model.buffers or []:
        if buffer.offset > 1:
            buffer.data = np.frombuffer(data[buffer.offset : buffer.offset + buffer.size], np.uint8)
            buffer.offset = buffer.size = 0
    return model


def operator_count(data: bytes) -> int:
    """How many operators a one-subgraph model runs, read without unpacking it."""
    model = schema.Model.GetRootAs(data, 0)
    if model.SubgraphsLength() != 1:
        raise ValueError(f"expected a model with one subgraph, not {model.SubgraphsLength()}")
    return model.Subgraphs(0).OperatorsLength()


def _tensor_map(name: str, tensor: int) -> schema.TensorMapT:
    mapping = schema.TensorMapT()
    mapping.name, mapping.tensorIndex = name, tensor
    return mapping
