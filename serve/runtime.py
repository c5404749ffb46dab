"""A retrain export loaded for serving: model.json, labels and LiteRT interpreters. No TensorFlow.

`model.tflite` takes preprocessed pixels, so every request goes through the same
`serve.preprocess` function that computed the training bottlenecks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.model_info import TFLITE_FILE, ModelDirError, ModelInfo, read_model_info
from serve.quiet import stderr_silenced

SIGNATURE = "classify_pixels"


@dataclass(frozen=True)
class Ranked:
    label: str
    score: float


class Runner:
    """One LiteRT interpreter of a file or of a flatbuffer in memory (a shared backbone cut from an
    export). Not thread-safe: each worker thread owns one."""

    def __init__(self, model: Path | bytes, threads: int, signature: str = SIGNATURE, output: str = "scores"):
        from ai_edge_litert.interpreter import Interpreter

        source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        with stderr_silenced():  # LiteRT announces its XNNPACK delegate on stderr
            interpreter = Interpreter(**source, num_threads=threads)
            self._run = interpreter.get_signature_runner(signature)
            self._run(images=np.zeros((1, *interpreter.get_input_details()[0]["shape_signature"][1:]), np.float32))
        self._output = output

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) float32 pixels -> (N, num_labels) softmax scores (or a backbone's features)."""
        return self._run(images=np.ascontiguousarray(pixels, dtype=np.float32))[self._output]


@dataclass(frozen=True)
class LoadedModel:
    """Everything about one export a server needs: where it is, what it expects, how to run it."""

    directory: Path  # the resolved directory, not a `latest` link
    info: ModelInfo
    runners: list[Runner]
    version: int  # TF Serving's version number: see export_version

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    def rank(self, scores: np.ndarray, top_k: int) -> list[Ranked]:
        """The `top_k` labels of one score vector, best first."""
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [Ranked(self.labels[i], float(scores[i])) for i in order]


def load_model(
    model_dir: str | Path, workers: int = 1, threads_per_worker: int | None = None, variant: str = "tflite"
) -> LoadedModel:
    """Loads and checks an export: ModelDirError (one readable line) if it cannot serve. `variant` is the
    model.json `files` entry to run: tflite (model.tflite), or a smaller copy (tflite_fp16, tflite_int8).

    The check runs one inference on a blank image, so a truncated or mismatched model.tflite is
    refused here, at start-up or reload, and never reaches a request.
    """
    directory = Path(model_dir).expanduser()
    if not directory.is_dir():
        raise ModelDirError(f"--model_dir {model_dir} is not a directory")
    directory = directory.resolve()
    info = read_model_info(directory)
    if variant != "tflite" and variant not in info.files:
        raise ModelDirError(f"{directory} has no {variant} variant (export it with `retrain --export {variant}`)")
    tflite = directory / info.files.get(variant, TFLITE_FILE)
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
    try:
        runners = [Runner(tflite, threads) for _ in range(workers)]
        spec = info.input_spec
        scores = runners[0].scores(np.zeros((1, spec.height, spec.width, 3), np.float32))
    except (ValueError, RuntimeError, OSError) as e:
        raise ModelDirError(f"{tflite} cannot be run: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if scores.shape != (1, len(info.labels)):
        raise ModelDirError(f"{tflite} gives {scores.shape[-1]} scores but model.json lists {len(info.labels)} labels")
    return LoadedModel(directory, info, runners, export_version(directory))


def export_version(directory: Path) -> int:
    """TF Serving's version number of an export: its folder's name in the `<name>/<version>` layout
    retrain writes, else (an export folder named otherwise) model.json's modification time, in seconds."""
    if directory.name.isdigit():
        return int(directory.name)
    return int((directory / "model.json").stat().st_mtime)
