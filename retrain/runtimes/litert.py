"""Bottlenecks from the backbone's TFLite feature model, run by LiteRT (XNNPACK) on the CPU.

One interpreter with as many threads as cores: on two cores, two one-thread interpreters on halves
of a batch measured no faster (docs/decisions.md #26).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from serve.quiet import stderr_silenced


class LiteRTRuntime:
    """The feature model in a LiteRT interpreter; `(N, H, W, 3) -> (N, D)`. One caller at a time.

    The interpreter is driven by tensor index, not by signature: a converted TF Hub module may
    carry no signature. Its input is resized whenever the batch size changes.
    """

    name = "litert"

    def __init__(self, model_path: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        with stderr_silenced():  # LiteRT announces its XNNPACK delegate on stderr, at the first run
            self._interpreter = Interpreter(str(model_path), num_threads=threads or os.cpu_count() or 1)
            self._input = self._interpreter.get_input_details()[0]
            self._output = self._interpreter.get_output_details()[0]["index"]
            self._batch: int | None = None
            self(np.zeros((1, *self._input["shape_signature"][1:]), np.float32))  # fail here, not mid-run

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if len(pixels) != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], pixels.shape)
            self._interpreter.allocate_tensors()
            self._batch = len(pixels)
        self._interpreter.set_tensor(self._input["index"], pixels)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output)
