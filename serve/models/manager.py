"""The model manager: per model name, which versions are served, with TF Serving's states.

    LOADING     being loaded and test-run; not answering yet
    AVAILABLE   answering requests (the highest available one answers when no version is named)
    UNLOADING   no longer chosen; finishing the requests that already hold it
    END         unloaded, or refused (then with the reason as its error)

A pass (`reconcile`) asks the catalog for the models and their version folders, lets each model's
version policy choose among the folders that have not been refused, loads what is chosen and not
loaded yet, and only then unloads what is no longer chosen. So a new version replaces the old one
without a moment with neither; a version that fails to load is refused (END with its error; it is
not tried again until its files change or SIGHUP) and the policy chooses again without it, which
keeps the previous version serving; a removed version folder means the policy chooses the next
highest, which is loaded again if it was unloaded. A model keeps its last good version while
nothing the policy chooses can load (even if that version's folder is gone): only removing the
model itself leaves it with none. Passes run on the watcher thread, one at a time:
every `poll_seconds`, and at once on SIGHUP.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from serve.model_info import ModelDirError
from serve.models.config import ModelConfig, ModelConfigError
from serve.models.repository import Catalog, fingerprint
from serve.models.servable import ServedModel
from serve.text import printable

log = logging.getLogger("serve")

LOADING, AVAILABLE, UNLOADING, END = "LOADING", "AVAILABLE", "UNLOADING", "END"
ENDED_KEPT = 16  # END entries of unloaded versions kept in a model's status, the newest


class ModelNotFoundError(LookupError):
    """No such model, version or version label (HTTP 404)."""


class NoModelError(RuntimeError):
    """Nothing to answer with yet, but something is coming: a first load (HTTP 503, with Retry-After)."""


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error: str = ""  # why it was refused, for END


@dataclass(frozen=True)
class Refusal:
    model: str
    version: int
    directory: Path
    error: str
    fingerprint: tuple


@dataclass
class _Loaded:
    served: ServedModel
    fingerprint: tuple


@dataclass
class _Model:
    config: ModelConfig
    loaded: dict[int, _Loaded] = field(default_factory=dict)
    loading: set[int] = field(default_factory=set)
    unloading: dict[int, list[ServedModel]] = field(default_factory=dict)
    refused: dict[int, Refusal] = field(default_factory=dict)
    ended: list[int] = field(default_factory=list)
    removed: bool = False


class ModelManager:
    """Serves the models a catalog describes; `load(name, version, folder)` makes a ServedModel or
    raises ModelDirError. `on_change(name, versions)` hears the versions available after each change."""

    def __init__(
        self,
        catalog: Catalog,
        load: Callable[[str, int, Path], ServedModel],
        on_change: Callable[[str, list[int]], None] | None = None,
    ):
        self.catalog = catalog
        self._load = load
        self._on_change = on_change or (lambda name, versions: None)
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()  # the table, for readers and writers
        self._pass_lock = threading.Lock()  # one reconcile at a time
        self._passes = 0
        self._wake = threading.Event()
        self._retry = False  # the next pass retries refused versions (SIGHUP)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- reading ------------------------------------------------------------------------------

    @contextmanager
    def lease(self, name: str, version: int | None = None, label: str | None = None) -> Iterator[ServedModel]:
        """The version of `name` asked for (by number or label; else the highest available), kept
        loaded until the block ends."""
        with self._lock:
            model = self._model(name)
            if label is not None:
                version = model.config.version_for(label)
                if version is None:
                    raise ModelNotFoundError(f"model {name!r} has no version labelled {printable(label)!r}")
            if version is None:
                if not model.loaded:
                    raise self._nothing_available(model)
                version = max(model.loaded)
            entry = model.loaded.get(version)
            if entry is None:
                available = ", ".join(map(str, sorted(model.loaded))) or "none"
                raise ModelNotFoundError(
                    f"version {version} of model {name!r} is not available (available: {available})"
                )
            served = entry.served
            served.acquire()
        try:
            yield served
        finally:
            served.release()

    def names(self) -> list[str]:
        """The models being served or loaded, by name."""
        with self._lock:
            return sorted(name for name, model in self._models.items() if not model.removed)

    def status(self, name: str) -> list[VersionStatus]:
        """Every version TF Serving would list for `name`: the newest first."""
        with self._lock:
            model = self._model(name)
            states: dict[int, VersionStatus] = {}
            for version in model.ended:
                states[version] = VersionStatus(version, END)
            for version, refusal in model.refused.items():
                states[version] = VersionStatus(version, END, refusal.error)
            for version in model.unloading:
                states[version] = VersionStatus(version, UNLOADING)
            for version in model.loading:
                states[version] = VersionStatus(version, LOADING)
            for version in model.loaded:
                states[version] = VersionStatus(version, AVAILABLE)
        return [states[version] for version in sorted(states, reverse=True)]

    def available(self) -> dict[str, list[ServedModel]]:
        """Each model's available versions, the highest first (for /readyz and the page)."""
        with self._lock:
            return {
                name: [model.loaded[v].served for v in sorted(model.loaded, reverse=True)]
                for name, model in sorted(self._models.items())
                if not model.removed and model.loaded
            }

    def refusals(self) -> list[Refusal]:
        """Versions refused and not loaded since; the reasons."""
        with self._lock:
            return [r for model in self._models.values() for r in model.refused.values() if not model.removed]

    @property
    def ready(self) -> bool:
        """A first pass has run and some model answers."""
        with self._lock:
            return self._passes > 0 and any(model.loaded for model in self._models.values() if not model.removed)

    # --- changing -----------------------------------------------------------------------------

    def reconcile(self, retry_refused: bool = False, quiet: bool = False) -> None:
        """One pass over the catalog: loads, refuses and unloads until each model's policy is met.
        `quiet` leaves refusals unlogged, for a caller that reports them itself (serve's start)."""
        with self._pass_lock:
            try:
                configs = self.catalog.models()
            except ModelConfigError as e:
                log.error("cannot read the models to serve, keeping those served: %s", e)
                with self._lock:
                    configs = [model.config for model in self._models.values() if not model.removed]
            for config in configs:
                self._reconcile_model(config, retry_refused, quiet)
            names = {config.name for config in configs}
            with self._lock:
                gone = [name for name, model in self._models.items() if name not in names and not model.removed]
            for name in gone:
                self._remove(name)
            with self._lock:
                self._passes += 1

    def request_reload(self) -> None:
        """Signal-safe: asks the watcher for a pass now, retrying refused versions (SIGHUP)."""
        self._retry = True
        self._wake.set()

    def look_now(self) -> None:
        """Asks the watcher for a pass now (a job has just exported a version)."""
        self._wake.set()

    def watch(self, poll_seconds: float) -> None:
        """Starts the watcher thread: a pass on request and, if poll_seconds > 0, every poll_seconds."""
        self._watcher = threading.Thread(target=self._watch, args=(poll_seconds,), name="model-watch", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._watcher:
            self._watcher.join()
        with self._lock:
            served = [entry.served for model in self._models.values() for entry in model.loaded.values()]
        for each in served:
            each.retire()

    def _watch(self, poll_seconds: float) -> None:
        while not self._stop.is_set():
            self._wake.wait(poll_seconds if poll_seconds > 0 else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            retry, self._retry = self._retry, False
            if retry:
                log.warning("SIGHUP: looking for models and versions again, retrying refused ones")
                getattr(self.catalog, "reread", lambda: None)()
            try:
                self.reconcile(retry_refused=retry)
            except Exception:  # a bug must not stop the watcher: the served versions stay
                log.exception("model watcher pass failed")

    def _reconcile_model(self, config: ModelConfig, retry_refused: bool, quiet: bool) -> None:
        with self._lock:
            model = self._models.get(config.name)
            if model is None or model.removed:
                model = self._models[config.name] = _Model(config)
            model.config = config
        folders = self.catalog.versions(config)
        prints = {version: fingerprint(folder) for version, folder in folders.items()}
        with self._lock:  # a refusal stands until its files change
            for version in list(model.refused):
                if retry_refused or prints.get(version) != model.refused[version].fingerprint:
                    del model.refused[version]
        while True:
            with self._lock:
                candidates = [v for v in folders if v not in model.refused or v in model.loaded]
                chosen = config.policy.choose(candidates)
                stale = [
                    v
                    for v in sorted(chosen, reverse=True)
                    if v not in model.refused and (v not in model.loaded or model.loaded[v].fingerprint != prints[v])
                ]
            if not stale:
                break
            for version in stale:
                self._load_version(model, version, folders[version], prints[version], quiet)
        with self._lock:
            unchosen = [v for v in model.loaded if v not in chosen]
            if unchosen and not any(v in model.loaded for v in chosen):
                unchosen.remove(max(unchosen))  # nothing chosen could load: the last good version stays
        for version in unchosen:
            self._unload(model, version)

    def _load_version(self, model: _Model, version: int, folder: Path, prints: tuple, quiet: bool) -> None:
        name = model.config.name
        with self._lock:
            model.loading.add(version)
        try:
            served = self._load(name, version, folder)
        except ModelDirError as e:
            with self._lock:
                model.loading.discard(version)
                model.refused[version] = Refusal(name, version, prints[0], str(e), prints)
                serving = sorted(model.loaded)
            if quiet:
                pass
            elif serving:
                log.error("model %s version %d refused, still serving %s: %s", name, version, _listed(serving), e)
            else:
                log.error("model %s version %d refused: %s", name, version, e)
            return
        with self._lock:
            model.loading.discard(version)
            replaced = model.loaded.get(version)
            model.loaded[version] = _Loaded(served, prints)
            if version in model.ended:
                model.ended.remove(version)
            serving = sorted(model.loaded)
        if replaced is not None:  # the same version number with new files: the old instance drains
            replaced.served.retire()
        log.warning(
            "model %s version %d loaded from %s (%d labels); serving versions %s",
            name,
            version,
            printable(prints[0]),
            len(served.model.labels),
            _listed(serving),
        )
        self._on_change(name, serving)

    def _unload(self, model: _Model, version: int) -> None:
        with self._lock:
            entry = model.loaded.pop(version)
            model.unloading.setdefault(version, []).append(entry.served)
            serving = sorted(model.loaded)
        log.warning("model %s version %d unloading; serving versions %s", model.config.name, version, _listed(serving))
        entry.served.when_closed(lambda: self._ended(model, version, entry.served))
        entry.served.retire()
        self._on_change(model.config.name, serving)

    def _ended(self, model: _Model, version: int, served: ServedModel) -> None:
        with self._lock:
            draining = model.unloading.get(version, [])
            if served in draining:
                draining.remove(served)
            if not draining:
                model.unloading.pop(version, None)
                if version not in model.loaded and version not in model.ended:
                    model.ended = [*model.ended, version][-ENDED_KEPT:]
            if model.removed and not model.unloading and self._models.get(model.config.name) is model:
                del self._models[model.config.name]

    def _remove(self, name: str) -> None:
        with self._lock:
            model = self._models[name]
            model.removed = True
            if not model.loaded and not model.unloading:
                del self._models[name]
        log.warning("model %s is gone from %s; unloading it", name, printable(self.catalog.describe()))
        for version in list(model.loaded):
            self._unload(model, version)
        self._on_change(name, [])

    def _model(self, name: str) -> _Model:
        """Under self._lock: the model, or ModelNotFoundError naming what is served."""
        model = self._models.get(name)
        if model is None or model.removed:
            served = sorted(n for n, m in self._models.items() if not m.removed)
            listed = ", ".join(repr(n) for n in served[:20]) + (", ..." if len(served) > 20 else "")
            raise ModelNotFoundError(f"model {printable(name)!r} not found; this server serves {listed or 'none yet'}")
        return model

    def _nothing_available(self, model: _Model) -> NoModelError:
        """A model that is there but has no version to answer with yet: loading, or waiting for one
        (503 with Retry-After: the next pass may bring one)."""
        name = model.config.name
        if model.loading:
            return NoModelError(f"no model loaded yet: model {name!r} is loading")
        if model.refused:
            newest = model.refused[max(model.refused)]
            return NoModelError(f"no model loaded yet: model {name!r} version {newest.version} was refused")
        return NoModelError(
            f"no model loaded yet: waiting for a version of {name!r} in {printable(model.config.base_path)}"
        )


def _listed(versions: list[int]) -> str:
    return ", ".join(map(str, versions)) or "none"
