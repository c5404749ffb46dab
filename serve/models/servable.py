"""One loaded version of a model, as requests use it: lent out, and closed only when given back.

A request takes a lease for its whole life. When the manager unloads a version (a newer one is
served, its folder was removed), the version is retired: it takes no new leases, and its
interpreters are let go only when the last lease is returned, so in-flight requests finish on
the version they started with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from serve.batcher import MicroBatcher
from serve.runtime import LoadedModel


class ServedModel:
    """A loaded export with the batcher that runs it and a count of the requests using it.

    `head` is set when the batcher runs a backbone shared with other models: each image's features
    then go through this model's head. `on_closed` runs once, when the version is retired and its
    last lease is returned (the manager marks it END; a shared backbone drops one user)."""

    def __init__(
        self,
        model: LoadedModel,
        batcher: MicroBatcher,
        head: Callable[[np.ndarray], np.ndarray] | None = None,
        on_closed: Callable[[], None] | None = None,
    ):
        self.model = model
        self.batcher = batcher
        self.head = head
        self._on_closed = [on_closed] if on_closed else []
        self._leases = 0
        self._retired = False
        self._closed = False
        self._lock = threading.Lock()

    def submit(self, pixels: np.ndarray) -> Future:
        """Queues one preprocessed image; the future resolves to its score vector."""
        return self.batcher.submit(pixels, self.head)

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Runs `callback` once the version is retired and drained (at once if it already is)."""
        with self._lock:
            if not self._closed:
                self._on_closed.append(callback)
                return
        callback()

    def acquire(self) -> None:
        with self._lock:
            self._leases += 1

    def release(self) -> None:
        with self._lock:
            self._leases -= 1
            done = self._retired and self._leases == 0
        if done:
            self._close()

    def retire(self) -> None:
        """No new leases; closes now if none is out, else when the last is returned."""
        with self._lock:
            self._retired = True
            done = self._leases == 0
        if done:
            self._close()

    @property
    def in_flight(self) -> int:
        return self._leases

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            callbacks, self._on_closed = self._on_closed, []
        if self.head is None:
            self.batcher.close()
        for callback in callbacks:
            callback()
