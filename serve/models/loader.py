"""Loading one version for serving: its own model.tflite, or its head on a backbone shared with others.

retrain builds model.tflite by appending a head to a backbone's feature model, and says so in
model.json: `shared_backbone` {digest, head_operators}. Such a version is cut in two here
(serve.models.split): the backbone part, whose digest must equal model.json's (checked, not
trusted: a model.tflite that does not hold the backbone model.json names is refused), and the
head. All versions of all models whose backbone digests are equal share one set of interpreters
and one micro-batcher; each adds only its head, run in numpy on the features of its own images.
An export without `shared_backbone` (made before it existed, or converted whole by TensorFlow)
runs its own model.tflite, as before.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.batcher import MicroBatcher
from serve.metrics import ServeMetrics
from serve.model_info import TFLITE_FILE, ModelDirError, ModelInfo, read_model_info
from serve.models.servable import ServedModel
from serve.models.split import split_export
from serve.runtime import LoadedModel, Runner, load_model

BACKBONE_SIGNATURE = "features"


@dataclass(frozen=True)
class Batching:
    """How versions are run: the serve flags of the same names."""

    workers: int = 1
    threads_per_worker: int | None = None
    max_batch_size: int = 4
    batch_timeout_seconds: float = 0.002


class SharedBackbones:
    """One batcher (with its interpreters) per backbone digest, counted by the versions using it."""

    def __init__(self, make_batcher: Callable[[str, list[Runner]], MicroBatcher], workers: int, threads: int):
        self._make_batcher = make_batcher
        self._workers, self._threads = workers, threads
        self._lock = threading.Lock()
        self._backbones: dict[str, tuple[MicroBatcher, int]] = {}

    def acquire(self, digest: str, backbone: bytes) -> MicroBatcher:
        with self._lock:
            if digest in self._backbones:
                batcher, users = self._backbones[digest]
            else:
                runners = [
                    Runner(backbone, self._threads, BACKBONE_SIGNATURE, BACKBONE_SIGNATURE)
                    for _ in range(self._workers)
                ]
                batcher, users = self._make_batcher(runner_label(digest), runners), 0
            self._backbones[digest] = (batcher, users + 1)
            return batcher

    def release(self, digest: str) -> None:
        with self._lock:
            batcher, users = self._backbones[digest]
            if users > 1:
                self._backbones[digest] = (batcher, users - 1)
                return
            del self._backbones[digest]
        batcher.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._backbones)


class Loader:
    """`loader(name, version, folder)` -> a ServedModel, or ModelDirError (one line) if it cannot serve."""

    def __init__(
        self,
        batching: Batching,
        metrics: ServeMetrics | None = None,
        share_backbones: bool = True,
        variant: str = "tflite",
    ):
        self.batching = batching
        self.metrics = metrics
        self.share_backbones = share_backbones
        self.variant = variant  # which TFLite file of each export; a quantized one runs whole
        self._threads = batching.threads_per_worker or max(1, (os.cpu_count() or 1) // batching.workers)
        self.backbones = SharedBackbones(self._batcher, batching.workers, self._threads)

    def __call__(self, name: str, version: int, folder: Path) -> ServedModel:
        started = time.perf_counter()
        try:
            served = self._load(version, folder, name)
        except ModelDirError:
            if self.metrics:
                self.metrics.loaded(name, time.perf_counter() - started, ok=False)
            raise
        if self.metrics:
            self.metrics.loaded(name, time.perf_counter() - started, ok=True)
        return served

    def _load(self, version: int, folder: Path, name: str) -> ServedModel:
        if not folder.is_dir():
            raise ModelDirError(f"{folder} is not a directory")
        info = read_model_info(folder)
        if self.share_backbones and info.shared_backbone is not None and self.variant == "tflite":
            return self._on_shared_backbone(version, folder.resolve(), info)
        model = load_model(folder, self.batching.workers, self.batching.threads_per_worker, self.variant)
        model = LoadedModel(model.directory, model.info, model.runners, version)
        return ServedModel(model, self._batcher(name, model.runners))

    def _on_shared_backbone(self, version: int, folder: Path, info: ModelInfo) -> ServedModel:
        tflite = folder / info.files.get("tflite", TFLITE_FILE)
        expected = info.shared_backbone
        try:
            split = split_export(tflite.read_bytes(), expected.head_operators)
        except (OSError, ValueError) as e:
            raise ModelDirError(f"{tflite} cannot be run: {e}") from e
        if split.digest != expected.digest:
            raise ModelDirError(
                f"{tflite} does not hold the backbone model.json names (shared_backbone.digest {expected.digest}, "
                f"found {split.digest})"
            )
        if split.head.num_classes != len(info.labels):
            raise ModelDirError(
                f"{tflite} gives {split.head.num_classes} scores but model.json lists {len(info.labels)} labels"
            )
        digest, head = split.digest, split.head
        try:
            batcher = self.backbones.acquire(digest, split.backbone)
        except (ValueError, RuntimeError) as e:
            raise ModelDirError(f"the backbone of {tflite} cannot be run: {str(e).splitlines()[0]}") from e
        del split  # its copy of the backbone: the shared one is all this version keeps
        model = LoadedModel(folder, info, [], version)
        served = ServedModel(model, batcher, head.scores, on_closed=lambda: self.backbones.release(digest))
        spec = info.input_spec
        try:  # the head on this backbone's features, end to end, before any request
            scores = served.submit(np.zeros((spec.height, spec.width, 3), np.float32)).result()
        except Exception as e:
            served.retire()
            raise ModelDirError(f"{tflite}: its head does not run on its backbone's features: {e}") from e
        if scores.shape != (len(info.labels),):
            served.retire()
            raise ModelDirError(f"{tflite} gives scores of shape {scores.shape} for {len(info.labels)} labels")
        return served

    def _batcher(self, runner: str, runners: list[Runner]) -> MicroBatcher:
        on_batch = self.metrics.batch_size.labels(runner).observe if self.metrics else None
        return MicroBatcher(runners, self.batching.max_batch_size, self.batching.batch_timeout_seconds, on_batch)


def runner_label(digest: str) -> str:
    """A shared backbone's name in metrics: `backbone-` and the digest's first 12 hex digits."""
    return f"backbone-{digest.removeprefix('sha256:')[:12]}"
