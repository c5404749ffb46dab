"""Micro-batching: images that arrive together go through the interpreter in one call.

Worker threads, each owning one LiteRT runner (an interpreter is never used by two threads), take
from one queue: the oldest waiting image, then whatever else is already queued, up to
`max_batch_size`. When that already found company (the server is busy), the worker waits up to
`max_wait` for a few more. A lone request never waits, so batching adds no latency when idle.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from serve.runtime import Runner

_STOP = object()


class MicroBatcher:
    def __init__(
        self,
        runners: list[Runner],
        max_batch_size: int = 4,
        max_wait: float = 0.002,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self._on_batch = on_batch  # told each batch's size (metrics)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self.batches = 0  # interpreter calls made, for tests and metrics
        self._threads = [
            threading.Thread(target=self._work, args=(runner,), name=f"batcher-{i}", daemon=True)
            for i, runner in enumerate(runners)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, pixels: np.ndarray, then: Callable[[np.ndarray], np.ndarray] | None = None) -> Future:
        """Queues one preprocessed image (H, W, 3); the future resolves to its output row (a score
        vector), passed through `then` first if given (a shared backbone's features through one
        model's head), in the worker thread."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("this model has been unloaded")
            self._queue.put((pixels, future, then))
        return future

    def close(self) -> None:
        """Finishes everything already queued, then stops the workers (returns at once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._queue.put(_STOP)

    def _work(self, runner: Runner) -> None:
        while True:
            batch, stop = self._next_batch()
            if batch:
                self._run(runner, batch)
            if stop:
                return

    def _next_batch(self) -> tuple[list, bool]:
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = None
        while len(batch) < self.max_batch_size:
            try:
                if deadline is None:
                    item = self._queue.get_nowait()
                else:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                if deadline is not None or len(batch) == 1 or self.max_wait <= 0:
                    break
                deadline = time.monotonic() + self.max_wait  # busy: give stragglers a moment
                continue
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, runner: Runner, batch: list) -> None:
        try:
            outputs = runner.scores(np.stack([pixels for pixels, _, _ in batch]))
        except Exception as e:
            for _, future, _ in batch:
                future.set_exception(e)
            return
        with self._lock:
            self.batches += 1
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for (_, future, then), row in zip(batch, outputs, strict=True):
            try:
                future.set_result(row if then is None else then(row[np.newaxis])[0])
            except Exception as e:
                future.set_exception(e)
