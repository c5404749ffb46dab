"""Bottlenecks from the backbone's TFLite feature model, run by LiteRT (XNNPACK) on the CPU.

A batch is split between `interpreters` LiteRT interpreters, each with `threads_per_interpreter`
threads of its own; LiteRT releases the GIL while it runs, so they run side by side. Each
interpreter is used by one thread at a time.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from serve.quiet import stderr_silenced


class LiteRTRuntime:
    """The feature model in LiteRT interpreters; `(N, H, W, 3) -> (N, D)`."""

    name = "litert"

    def __init__(self, model_path: Path, threads: int | None = None, interpreters: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        threads = threads or os.cpu_count() or 1
        self.model_path = Path(model_path)
        self.threads = threads
        per_interpreter = max(1, threads // interpreters)
        with stderr_silenced():  # LiteRT announces its XNNPACK delegate on stderr, at the first run
            self._runners = [
                _Runner(Interpreter(str(model_path), num_threads=per_interpreter)) for _ in range(interpreters)
            ]
        self._pool = ThreadPoolExecutor(interpreters, thread_name_prefix="litert") if interpreters > 1 else None

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if self._pool is None or len(pixels) < len(self._runners):
            return self._run(0, pixels)
        chunks = np.array_split(pixels, len(self._runners))
        return np.concatenate(list(self._pool.map(self._run, range(len(chunks)), chunks)))

    def _run(self, index: int, pixels: np.ndarray) -> np.ndarray:
        return self._runners[index](pixels)


class _Runner:
    """One interpreter's single input and output, resized to each batch size as it comes.

    By tensor index, not by signature: a converted TF Hub module may carry no signature."""

    def __init__(self, interpreter):
        self._interpreter = interpreter
        self._input = interpreter.get_input_details()[0]
        self._output = interpreter.get_output_details()[0]["index"]
        self._batch = None
        self(np.zeros((1, *self._input["shape_signature"][1:]), np.float32))  # fail here, not mid-run

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], pixels.shape)
            self._interpreter.allocate_tensors()
            self._batch = len(pixels)
        self._interpreter.set_tensor(self._input["index"], pixels)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output)
