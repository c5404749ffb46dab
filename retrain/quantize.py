"""Smaller copies of model.tflite for devices: float16 weights, or int8 weights (dynamic range).

Both are made by Google's AI Edge Quantizer (`ai-edge-quantizer`, no TensorFlow) from the float
model, and keep its float32 input and output, so the preprocessing, the metadata and serve's
Runner are those of model.tflite:

    tflite_fp16   every weight of a convolution or fully connected layer stored as float16, turned
                  back into float32 once when the model is loaded (DEQUANTIZE): half the size, the
                  same arithmetic
    tflite_int8   the same weights as int8 with one scale per output channel; activations are
                  quantized on the fly at each layer (dynamic range), so no calibration images are
                  needed: about a quarter of the size

Full integer quantization (int8 activations too, calibrated on training images) was left out: it
changes the input to int8, which MediaPipe reads as another preprocessing contract, and on these
models it gained nothing over dynamic range in size (docs/decisions.md #50).
"""

from __future__ import annotations

import contextlib
import io

VARIANTS = {"tflite_fp16": "model_fp16.tflite", "tflite_int8": "model_int8.tflite"}


def quantize(model: bytes, variant: str) -> bytes:
    """`model` (a float TFLite flatbuffer) as the variant asks; its metadata buffer is carried over but
    not its appended files (add the metadata again)."""
    from ai_edge_quantizer import quantizer, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import (
        ComputePrecision,
        OpQuantizationConfig,
        TensorDataType,
        TensorQuantizationConfig,
        TFLOperationName,
    )

    if variant == "tflite_int8":
        chosen = recipe.dynamic_wi8_afp32()
    elif variant == "tflite_fp16":
        manager = recipe_manager.RecipeManager()
        weights = TensorQuantizationConfig(num_bits=16, dtype=TensorDataType.FLOAT)
        config = OpQuantizationConfig(
            weight_tensor_config=weights, compute_precision=ComputePrecision.FLOAT, explicit_dequantize=True
        )
        manager.add_quantization_config(
            regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED, op_config=config,
            algorithm_key=AlgorithmName.FLOAT_CASTING,
        )  # fmt: skip
        chosen = manager.get_quantization_recipe()
    else:
        raise ValueError(f"no quantized variant {variant!r}; choose from {', '.join(VARIANTS)}")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress report
        result = quantizer.Quantizer(model, chosen).quantize(enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model)
