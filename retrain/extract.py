"""Bottleneck extraction: every image through the backbone once, batched, with decoding overlapped.

Cache hits cost a file read and a hash. Misses are decoded and resized by a thread pool (Pillow
releases the GIL) a few batches ahead of the forward pass, so the backbone rarely waits for
pixels; each vector is written to the cache as soon as its batch is done, so a killed run loses at
most one batch of work. Augmented copies of training images (`retrain.augment`) go through the
same steps, each copy under its own cache key; an image is decoded once for all its missing copies.

Files with identical bytes have identical keys: the first is computed, the others take its vectors,
so they are equal by construction, whatever batches the forward pass happened to see.

Decoding memory is bounded by a budget in bytes (`DECODE_MEMORY_BYTES`, `serve.budget`), not by the
number of threads: a PNG of 144 Mpx is half a megabyte on disk and two gigabytes decoded. Each decode
holds its cost, computed from the image's header, until its pixels are resized; an image that alone
needs more than the budget is skipped, named, before anything is decoded.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np

from retrain.augment import Augmentation, variant_digest, variant_pixels
from retrain.backbones import Backbone
from retrain.cache import BottleneckCache, image_digest
from retrain.errors import RetrainError
from retrain.files import read_regular_file
from retrain.progress import progress_bar
from retrain.runtimes import FeatureRuntime, open_runtime
from serve.budget import DecodeBudget
from serve.memory import large_buffers_mapped
from serve.preprocess import ImageDecodeError, ImageTooLargeError, InputSpec, decoded, normalize, preprocess
from serve.text import printable

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
BATCHES_IN_FLIGHT = 3
LOOKUP_CHUNK = 64
"""Files a cache-lookup task reads: a task per file spent more on futures and the GIL than on reading."""
DECODE_MEMORY_BYTES = 1024 * 2**20
"""Memory for decoding images at once (`--decode_memory_mb`), by `serve.budget.decode_cost`: 13 to 29
bytes a pixel by mode, so 1 GiB decodes a 64-Mpx RGB photo, or several small ones side by side; a
12000x12000 PNG (144 Mpx: 1.7 GiB as L, 2.1 GiB as RGB) is skipped. It comes on top of what the
process holds anyway (the backbone, the vectors)."""


@dataclass
class ExtractionStats:
    """What extraction did: how many vectors came from the cache, how many forward passes ran."""

    cached: int = 0
    computed: int = 0
    duplicates: int = 0  # vectors of files identical to another in this run, copied from its vectors
    runtime: str | None = None  # what computed them, when any were computed
    setup_seconds: float = 0.0  # opening the runtime (a first conversion included), within the extraction
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)


@dataclass(frozen=True)
class _Versions:
    """Which versions of each image to compute: the image itself, or `copies` augmented copies."""

    augmentation: Augmentation | None = None
    copies: int = 0
    seed: int = 0

    @property
    def per_image(self) -> int:
        return self.copies or 1

    def keys(self, cache: BottleneckCache, digest: str) -> list[str]:
        """The cache key of each version of the image whose bytes hash to `digest`."""
        if not self.copies:
            return [cache.key(digest)]
        return [cache.key(variant_digest(digest, self.augmentation, copy, self.seed)) for copy in range(self.copies)]

    def pixels(
        self, data: bytes, digest: str, spec: InputSpec, which: Sequence[int], budget: DecodeBudget
    ) -> list[np.ndarray]:
        """Normalised backbone input of the given versions; the image is decoded once for all, within `budget`."""
        if not self.copies:
            return [preprocess(data, spec, budget=budget)]
        with decoded(data, budget=budget) as image:
            return [
                normalize(variant_pixels(image, digest, spec, self.augmentation, copy, self.seed), spec)
                for copy in which
            ]


@dataclass(frozen=True)
class _Job:
    """An image with versions missing from the cache, and the later files with the same bytes."""

    index: int
    path: Path
    digest: str
    versions: tuple[int, ...]
    twins: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Decoded:
    row: int  # index * versions per image + version
    key: str
    pixels: np.ndarray


@dataclass(frozen=True)
class _Failed:
    index: int
    reason: str
    versions: int  # how many vectors this image stood for


def compute_bottlenecks(
    paths: Sequence[Path],
    backbone: Backbone,
    cache: BottleneckCache,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    augmentation: Augmentation | None = None,
    copies: int = 0,
    seed: int = 0,
    runtime: Callable[[], FeatureRuntime] | None = None,
    cluster: Callable[[Sequence[tuple[Path, str]]], None] | None = None,
    budget: DecodeBudget | None = None,
) -> tuple[np.ndarray, np.ndarray, ExtractionStats]:
    """Bottleneck vectors for `paths`, from the cache or the backbone.

    `runtime` opens the runtime that computes missing vectors (by default `open_runtime`'s choice
    for this backbone); it is called only when some vector is missing, so a run whose vectors are
    all cached converts and loads nothing. `cluster` (`retrain.cluster.RayExtraction`), given the
    missing images as (path, content digest) pairs, computes their vectors elsewhere into the cache;
    whatever it leaves missing is computed here.

    Returns `(vectors, ok, stats)`: `vectors` has one row per path; `ok[i]` is False for a file
    that could not be read or decoded (its row is zeros, and `stats.skipped` says why).

    With `copies` > 0 the vectors are of `copies` augmented copies of each image instead (never of
    the image itself; `augmentation` must be enabled): `vectors` has shape (len(paths), copies, D),
    copy k of an image is the same on every run with the same `seed`, and each copy is cached under
    its own key. `stats.cached` and `stats.computed` count vectors, `stats.skipped` files.

    `budget` bounds the memory of the decodes in flight (default: a budget of DECODE_MEMORY_BYTES
    for this call); an image that alone needs more is skipped.
    """
    versions = _versions(augmentation, copies, seed)
    workers = workers or min(8, max(2, os.cpu_count() or 2))  # decoding threads beyond the cores only contend
    rows = len(paths) * versions.per_image
    vectors = np.zeros((rows, backbone.feature_dim), dtype=np.float32)
    done = np.zeros(rows, dtype=bool)
    stats = ExtractionStats()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bottleneck") as pool:
        jobs = misses = _from_cache(pool, paths, cache, versions, vectors, done, stats)
        if misses and cluster is not None and not versions.copies:
            cluster([(job.path, job.digest) for job in misses])
            stats.runtime = getattr(cluster, "name", "cluster")
            misses = _collect(misses, cache, vectors, done, stats)
        failures: dict[int, str] = {}
        if misses:
            opened = time.monotonic()
            forward = runtime() if runtime else open_runtime(backbone, cache.root)
            stats.runtime, stats.setup_seconds = stats.runtime or forward.name, time.monotonic() - opened
            budget = budget or DecodeBudget(DECODE_MEMORY_BYTES)
            decode = partial(_decode, spec=backbone.input_spec, cache=cache, versions=versions, budget=budget)
            with (
                large_buffers_mapped(),  # freed decoding buffers go back to the system: the budget bounds RSS
                progress_bar(total=sum(len(job.versions) for job in misses), desc="Computing bottlenecks") as bar,
            ):
                for batch in _decoded_batches(pool, misses, decode, batch_size):
                    decoded = [item for item in batch if isinstance(item, _Decoded)]
                    failed = [item for item in batch if isinstance(item, _Failed)]
                    for item in failed:
                        _skip(stats, paths[item.index], item.reason)
                        failures[item.index] = item.reason
                    if decoded:
                        features = forward(np.stack([item.pixels for item in decoded]))
                        for item, vector in zip(decoded, features, strict=True):
                            cache.put(item.key, vector)
                            vectors[item.row], done[item.row] = vector, True
                        stats.computed += len(decoded)
                    bar.update(len(decoded) + sum(item.versions for item in failed))
        _copy_to_twins(jobs, paths, versions, vectors, done, failures, stats)
    ok = done.reshape(len(paths), versions.per_image).all(axis=1)
    vectors = vectors.reshape(len(paths), versions.per_image, backbone.feature_dim)
    vectors[~ok] = 0  # an image with some copies cached but now undecodable has no vectors at all
    return (vectors if copies else vectors[:, 0]), ok, stats


def _versions(augmentation: Augmentation | None, copies: int, seed: int) -> _Versions:
    if copies < 0:
        raise RetrainError(f"--augmentation_copies must be >= 0, not {copies}")
    if copies and (augmentation is None or not augmentation.enabled):
        raise RetrainError(
            "--augmentation_copies needs a distortion: --flip_left_right, --random_crop, --random_scale "
            "or --random_brightness"
        )
    return _Versions(augmentation, copies, seed) if copies else _Versions()


def _from_cache(
    pool: ThreadPoolExecutor,
    paths: Sequence[Path],
    cache: BottleneckCache,
    versions: _Versions,
    vectors: np.ndarray,
    done: np.ndarray,
    stats: ExtractionStats,
) -> list[_Job]:
    """Fills `vectors` rows from the cache; returns the images with versions still to compute, one
    job per distinct content (a file identical to an earlier miss becomes that job's twin)."""
    misses: dict[str, _Job] = {}  # by content digest
    chunks = [paths[start : start + LOOKUP_CHUNK] for start in range(0, len(paths), LOOKUP_CHUNK)]
    lookups = chain.from_iterable(pool.map(lambda chunk: [_lookup(path, cache, versions) for path in chunk], chunks))
    for index, (digest, found, error) in enumerate(progress_bar(lookups, total=len(paths), desc="Checking cache")):
        if error is not None:
            _skip(stats, paths[index], error)
            continue
        missing = []
        for version, vector in enumerate(found):
            if vector is None:
                missing.append(version)
            else:
                row = index * versions.per_image + version
                vectors[row], done[row] = vector, True
                stats.cached += 1
        if not missing:
            continue
        if digest in misses:  # same bytes, same keys, same misses
            misses[digest].twins.append(index)
        else:
            misses[digest] = _Job(index, paths[index], digest, tuple(missing))
    return list(misses.values())


def _collect(
    jobs: list[_Job], cache: BottleneckCache, vectors: np.ndarray, done: np.ndarray, stats: ExtractionStats
) -> list[_Job]:
    """Fills in, from the cache, the rows a cluster computed; returns the jobs it left undone."""
    undone = []
    for job in jobs:
        vector = cache.get(cache.key(job.digest))
        if vector is None:
            undone.append(job)
            continue
        vectors[job.index], done[job.index] = vector, True
        stats.computed += 1
    return undone


def _copy_to_twins(
    jobs: list[_Job],
    paths: Sequence[Path],
    versions: _Versions,
    vectors: np.ndarray,
    done: np.ndarray,
    failures: dict[int, str],
    stats: ExtractionStats,
) -> None:
    """Gives each twin its first file's computed vectors, or its first file's reason to be skipped."""
    for job in jobs:
        for twin in job.twins:
            if job.index in failures:
                _skip(stats, paths[twin], failures[job.index])
                continue
            for version in job.versions:
                source, target = job.index * versions.per_image + version, twin * versions.per_image + version
                vectors[target], done[target] = vectors[source], done[source]
                stats.duplicates += 1


def _lookup(path: Path, cache: BottleneckCache, versions: _Versions) -> tuple[str, list[np.ndarray | None], str | None]:
    """(content digest, cached vector or None for each version, read error or None) for one file."""
    try:
        data = read_regular_file(path)
    except OSError as e:
        return "", [], f"cannot read file: {e.strerror or e}"
    digest = image_digest(data)
    return digest, [cache.get(key) for key in versions.keys(cache, digest)], None


def _decode(
    job: _Job, spec: InputSpec, cache: BottleneckCache, versions: _Versions, budget: DecodeBudget
) -> list[_Decoded] | _Failed:
    """Reads one image and preprocesses its missing versions, or says why it cannot."""
    try:
        data = read_regular_file(job.path)
        digest = image_digest(data)
        keys = versions.keys(cache, digest)
        pixels = versions.pixels(data, digest, spec, job.versions, budget)
    except OSError as e:
        return _Failed(job.index, f"cannot read file: {e.strerror or e}", len(job.versions))
    except ImageTooLargeError as e:
        return _Failed(job.index, f"too large to decode: {e}", len(job.versions))
    except ImageDecodeError as e:
        return _Failed(job.index, f"not a decodable image: {e}", len(job.versions))
    first_row = job.index * versions.per_image
    return [
        _Decoded(first_row + version, keys[version], item) for version, item in zip(job.versions, pixels, strict=True)
    ]


def _decoded_batches(
    pool: ThreadPoolExecutor,
    jobs: list[_Job],
    decode: Callable[[_Job], list[_Decoded] | _Failed],
    batch_size: int,
) -> Iterator[list[_Decoded | _Failed]]:
    """Batches of `batch_size` decoded versions (and the failures met on the way), in order, with
    about BATCHES_IN_FLIGHT batches decoding ahead."""
    pending: deque[tuple[Future, int]] = deque()
    todo = iter(jobs)
    window = batch_size * BATCHES_IN_FLIGHT
    in_flight = 0  # versions being decoded
    batch: list[_Decoded | _Failed] = []
    size = 0

    def fill() -> None:
        nonlocal in_flight
        while in_flight < window and (job := next(todo, None)) is not None:
            pending.append((pool.submit(decode, job), len(job.versions)))
            in_flight += len(job.versions)

    fill()
    while pending:
        future, count = pending.popleft()
        result = future.result()
        in_flight -= count
        fill()
        for item in result if isinstance(result, list) else [result]:
            batch.append(item)
            size += isinstance(item, _Decoded)
            if size == batch_size:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _skip(stats: ExtractionStats, path: Path, reason: str) -> None:
    log.warning("skipping %s: %s", printable(path), printable(reason))
    stats.skipped.append((path, reason))
