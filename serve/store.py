"""The model being served, and swapping it for a new export without dropping a request.

A request takes a lease on the current model for its whole life. A reload loads and checks the
new export first (a broken one is refused and the old one keeps serving), then swaps; the old
model's batcher is closed only when its last lease is returned, so in-flight requests finish on
the model they started with. Reloads come from SIGHUP or from polling `--model_dir` (a `latest`
link that moves, or a model.json that changes).

With `wait`, the store may start empty (a container's serve up before the first retrain job has
exported anything): requests get NoModelError until the watcher loads the first export.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from serve.batcher import MicroBatcher
from serve.model_info import LABELS_TXT, MODEL_JSON, TFLITE_FILE, ModelDirError
from serve.runtime import LoadedModel, export_version

log = logging.getLogger("serve")


class NoModelError(RuntimeError):
    """No export has loaded yet; the server is up and waiting for one (HTTP 503, not a crash)."""

    def __init__(self, model_dir: Path):
        super().__init__(f"no model loaded yet: waiting for retrain to export one to {model_dir}")


class ServedModel:
    """A loaded export with its batcher and a count of requests using it."""

    def __init__(self, model: LoadedModel, batcher: MicroBatcher):
        self.model = model
        self.batcher = batcher
        self._leases = 0
        self._retired = False
        self._lock = threading.Lock()

    def _acquire(self) -> None:
        with self._lock:
            self._leases += 1

    def _release(self) -> None:
        with self._lock:
            self._leases -= 1
            done = self._retired and self._leases == 0
        if done:
            self.batcher.close()

    def _retire(self) -> None:
        with self._lock:
            self._retired = True
            done = self._leases == 0
        if done:
            self.batcher.close()


@dataclass(frozen=True)
class RefusedExport:
    """An export a reload refused, for /readyz and the model status (the previous one still serves)."""

    directory: Path
    version: int | None
    error: str


class ModelStore:
    """Holds the served model; `reload()` swaps in a new export only if it loads and runs.

    With `wait`, an export that cannot be loaded at start leaves the store empty instead of raising
    ModelDirError, so the server can start first and pick the model up when it appears.
    """

    def __init__(self, model_dir: str | Path, load: Callable[[Path], ServedModel], wait: bool = False):
        self.model_dir = Path(model_dir)
        self._load = load
        self._lock = threading.Lock()
        self._fingerprint = _fingerprint(self.model_dir)
        self._current: ServedModel | None = None
        try:
            self._current = load(self.model_dir)
        except ModelDirError as e:
            if not wait:
                raise
            log.warning("no model at %s yet (%s); waiting for one", self.model_dir, e)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.reloads = 0
        self.refused: RefusedExport | None = None  # the last export a reload refused, until one loads

    @contextmanager
    def lease(self) -> Iterator[ServedModel]:
        """The current model, kept alive (not closed by a reload) until the block ends."""
        with self._lock:
            served = self._current
            if served is None:
                raise NoModelError(self.model_dir)
            served._acquire()
        try:
            yield served
        finally:
            served._release()

    @property
    def loaded(self) -> bool:
        """False only while waiting for the first export (`wait`)."""
        return self._current is not None

    @property
    def current(self) -> LoadedModel:
        """The model serving now; NoModelError while none has loaded."""
        served = self._current
        if served is None:
            raise NoModelError(self.model_dir)
        return served.model

    def reload(self) -> bool:
        """Loads `model_dir` again; True if the new export now serves, False if it was refused."""
        fingerprint = _fingerprint(self.model_dir)
        try:
            fresh = self._load(self.model_dir)
        except ModelDirError as e:
            if self._current is None:
                log.error("still no model at %s, waiting: %s", self.model_dir, e)
            else:
                log.error("reload refused, still serving %s: %s", self._current.model.directory, e)
            self.refused = RefusedExport(self.model_dir.resolve(), _version_of(self.model_dir), str(e))
            self._fingerprint = fingerprint  # do not retry the same broken export every poll
            return False
        with self._lock:
            old, self._current = self._current, fresh
            self._fingerprint = fingerprint
            self.reloads += 1
            self.refused = None
        if old is None:
            log.warning("model loaded: now serving %s (version %d)", fresh.model.directory, fresh.model.version)
        else:
            old._retire()
            log.warning("reloaded: now serving %s (version %d)", fresh.model.directory, fresh.model.version)
        return True

    def request_reload(self) -> None:
        """Signal-safe: asks the watcher thread to reload now (SIGHUP)."""
        self._wake.set()

    def watch(self, poll_seconds: float) -> None:
        """Starts the background thread that reloads on request and, if poll_seconds > 0, on change."""
        self._watcher = threading.Thread(target=self._watch, args=(poll_seconds,), name="model-watch", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._watcher:
            self._watcher.join()
        if self._current is not None:
            self._current._retire()

    def _watch(self, poll_seconds: float) -> None:
        while not self._stop.is_set():
            requested = self._wake.wait(poll_seconds if poll_seconds > 0 else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            if requested or _fingerprint(self.model_dir) != self._fingerprint:
                self.reload()


def _fingerprint(model_dir: Path) -> tuple:
    """What changes when a new export lands or one is mended in place: where the directory resolves
    to, and the files serving reads (model.json, model.tflite, labels.txt)."""
    resolved = model_dir.resolve()
    stats = []
    for name in (MODEL_JSON, TFLITE_FILE, LABELS_TXT):
        try:
            stat = (resolved / name).stat()
            stats.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            stats.append(None)
    return resolved, *stats


def _version_of(model_dir: Path) -> int | None:
    """An export's version as LoadedModel counts it, if it has one."""
    try:
        return export_version(model_dir.resolve())
    except OSError:
        return None
