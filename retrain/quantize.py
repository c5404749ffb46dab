"""Smaller copies of model.tflite for devices: float16 weights, or int8 weights and activations.

Both are made by Google's AI Edge Quantizer (`ai-edge-quantizer`, no TensorFlow) from the float
model, and keep its float32 input and output, so the preprocessing, the metadata and serve's
Runner are those of model.tflite:

    tflite_fp16   every weight of a convolution or fully connected layer stored as float16, turned
                  back into float32 once when the model is loaded (DEQUANTIZE): half the size, the
                  same arithmetic
    tflite_int8   weights and activations in int8 (full integer quantization), the activations'
                  ranges calibrated on training images: about a quarter of the size and, where the
                  CPU has int8 kernels (XNNPACK's), faster. The quantizer makes the graph's input
                  and output int8 too, which MediaPipe Tasks refuses (it takes uint8 or float32
                  images), so a QUANTIZE operator is put before the first and a DEQUANTIZE after the
                  last: the file still takes the float pixels of the metadata's normalisation.

Full integer quantization can cost accuracy that a set's numbers do not forgive (one activation scale
a tensor), so it is checked, not trusted: on held-out images (never the calibration ones) its top-1
must agree with the float model's on at least AGREEMENT of them. Where it does not, or where the
quantizer cannot make the graph integer (an operator without integer kernels), model_int8.tflite is
made with int8 weights and float activations instead (dynamic range: the same size, the float
model's accuracy, no faster on x86), and model.json and the log say which (docs/decisions.md #50).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from retrain.tflite_graph import TFLiteGraph
from serve.runtime import SIGNATURE, Runner

log = logging.getLogger(__name__)

VARIANTS = {"tflite_fp16": "model_fp16.tflite", "tflite_int8": "model_int8.tflite"}
CALIBRATION_IMAGES = 100  # training images, spread over the classes, that set the activations' ranges
CHECK_IMAGES = 300  # held-out images on which int8 must agree with the float model
AGREEMENT = 0.985
FULL_INTEGER = "int8 weights and activations"
DYNAMIC_RANGE = "int8 weights, float activations (dynamic range)"
FLOAT16 = "float16 weights"


@dataclass(frozen=True)
class Quantized:
    model: bytes
    method: str  # FULL_INTEGER, DYNAMIC_RANGE or FLOAT16, for model.json and the log
    agreement: float | None = None  # top-1 agreement with the float model on the check images


def quantize(
    model: bytes, variant: str, calibration: Sequence[np.ndarray] = (), check: Sequence[np.ndarray] = ()
) -> Quantized:
    """`model` (a float TFLite flatbuffer: images -> scores) as the variant asks. For tflite_int8,
    `calibration` (training images) sets the activations' ranges and `check` (held-out images) decides
    between full integer and dynamic range; both preprocessed, each (1, H, W, 3). The metadata is not
    carried over (add it again)."""
    if variant == "tflite_fp16":
        quantized = _quantize(model, _float16_recipe())
        return Quantized(quantized, FLOAT16, agreement(model, quantized, check))
    if variant != "tflite_int8":
        raise ValueError(f"no quantized variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if not calibration:
        raise ValueError("tflite_int8 is calibrated on images: pass some preprocessed training images")
    from ai_edge_quantizer import recipe

    try:
        integer = float_edges(_quantize(model, recipe.static_wi8_ai8(), calibration))
    except Exception as e:  # an operator without integer kernels, or a quantizer that cannot place one
        reason = f"full int8 quantization failed ({type(e).__name__}: {e})"
    else:
        agreed = agreement(model, integer, check)
        if agreed is None or agreed >= AGREEMENT:
            return Quantized(integer, FULL_INTEGER, agreed)
        reason = f"full int8 agreed with the float model on {agreed:.1%} of {len(check)} held-out images"
    log.warning("%s (needs %.1f%%): model_int8.tflite has int8 weights only (dynamic range)", reason, AGREEMENT * 100)
    dynamic = _quantize(model, recipe.dynamic_wi8_afp32())
    return Quantized(dynamic, DYNAMIC_RANGE, agreement(model, dynamic, check))


def agreement(model: bytes, other: bytes, images: Sequence[np.ndarray]) -> float | None:
    """The share of `images` on which the two models' top-1 labels agree (None without images)."""
    if not images:
        return None
    first, second = Runner(model, threads=os.cpu_count() or 1), Runner(other, threads=os.cpu_count() or 1)
    same = sum(int(first.scores(image).argmax() == second.scores(image).argmax()) for image in images)
    return same / len(images)


def float_edges(model: bytes) -> bytes:
    """`model` with a float32 input and output: a QUANTIZE operator first, a DEQUANTIZE last, each
    with the quantization parameters the quantizer chose for the tensor it replaces at the edge."""
    graph = TFLiteGraph.unpack(model)
    subgraph = graph.subgraph
    (images,), (scores,) = subgraph.inputs, subgraph.outputs
    if subgraph.tensors[images].type != schema.TensorType.FLOAT32:
        quantized, images = images, _float_twin(graph, images, "images")
        graph.operator(
            schema.BuiltinOperator.QUANTIZE, [images], quantized, schema.BuiltinOptions.QuantizeOptions, None
        )
        subgraph.operators.insert(0, subgraph.operators.pop())
    if subgraph.tensors[scores].type != schema.TensorType.FLOAT32:
        quantized, scores = scores, _float_twin(graph, scores, "scores")
        graph.operator(
            schema.BuiltinOperator.DEQUANTIZE, [quantized], scores, schema.BuiltinOptions.DequantizeOptions, None
        )
    return graph.pack({"images": images}, {"scores": scores}, SIGNATURE)


def _float_twin(graph: TFLiteGraph, index: int, name: str) -> int:
    """A new float32 tensor shaped as tensor `index`, which is renamed `<name>_int8`."""
    tensor = graph.subgraph.tensors[index]
    signature = None if tensor.shapeSignature is None else [int(d) for d in tensor.shapeSignature]
    tensor.name = f"{name}_int8"
    return graph.tensor([int(d) for d in tensor.shape], name, shape_signature=signature)


def _float16_recipe() -> list:
    from ai_edge_quantizer import recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import (
        ComputePrecision,
        OpQuantizationConfig,
        TensorDataType,
        TensorQuantizationConfig,
        TFLOperationName,
    )

    manager = recipe_manager.RecipeManager()
    weights = TensorQuantizationConfig(num_bits=16, dtype=TensorDataType.FLOAT)
    config = OpQuantizationConfig(
        weight_tensor_config=weights, compute_precision=ComputePrecision.FLOAT, explicit_dequantize=True
    )
    manager.add_quantization_config(
        regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED, op_config=config,
        algorithm_key=AlgorithmName.FLOAT_CASTING,
    )  # fmt: skip
    return manager.get_quantization_recipe()


def _quantize(model: bytes, chosen: list, calibration: Sequence[np.ndarray] = ()) -> bytes:
    from ai_edge_quantizer import quantizer

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress report
        run = quantizer.Quantizer(model, chosen)
        ranges = run.calibrate({SIGNATURE: [{"images": image} for image in calibration]}) if calibration else None
        result = run.quantize(ranges, enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model)
