"""Bottleneck extraction: every image through the backbone once, batched, with decoding overlapped.

Cache hits cost a file read and a hash. Misses are decoded and resized by a thread pool (Pillow
releases the GIL) a few batches ahead of the forward pass, so the backbone rarely waits for
pixels; each vector is written to the cache as soon as its batch is done, so a killed run loses at
most one batch of work.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from retrain.backbones import Backbone
from retrain.cache import BottleneckCache, image_digest
from retrain.progress import progress_bar
from serve.preprocess import ImageDecodeError, InputSpec, preprocess

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
BATCHES_IN_FLIGHT = 3


@dataclass
class ExtractionStats:
    """What extraction did: how many vectors came from the cache, how many forward passes ran."""

    cached: int = 0
    computed: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)


@dataclass(frozen=True)
class _Decoded:
    index: int
    key: str
    pixels: np.ndarray


@dataclass(frozen=True)
class _Failed:
    index: int
    reason: str


def compute_bottlenecks(
    paths: Sequence[Path],
    backbone: Backbone,
    cache: BottleneckCache,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, ExtractionStats]:
    """Bottleneck vectors for `paths`, from the cache or the backbone.

    Returns `(vectors, ok, stats)`: `vectors` has one row per path; `ok[i]` is False for a file
    that could not be read or decoded (its row is zeros, and `stats.skipped` says why).
    """
    workers = workers or min(8, (os.cpu_count() or 2) + 2)
    vectors = np.zeros((len(paths), backbone.feature_dim), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    stats = ExtractionStats()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bottleneck") as pool:
        misses: list[int] = []
        lookups = pool.map(lambda path: _lookup(path, cache), paths)
        for index, (vector, error) in enumerate(progress_bar(lookups, total=len(paths), desc="Checking cache")):
            if error is not None:
                _skip(stats, paths[index], error)
            elif vector is not None:
                vectors[index], ok[index] = vector, True
                stats.cached += 1
            else:
                misses.append(index)
        if misses:
            forward = _forward_function(backbone)
            with progress_bar(total=len(misses), desc="Computing bottlenecks") as bar:
                for batch in _decoded_batches(pool, paths, misses, backbone.input_spec, cache, batch_size):
                    decoded = [item for item in batch if isinstance(item, _Decoded)]
                    for failed in (item for item in batch if isinstance(item, _Failed)):
                        _skip(stats, paths[failed.index], failed.reason)
                    if decoded:
                        features = forward(np.stack([item.pixels for item in decoded]))
                        for item, vector in zip(decoded, features, strict=True):
                            cache.put(item.key, vector)
                            vectors[item.index], ok[item.index] = vector, True
                        stats.computed += len(decoded)
                    bar.update(len(batch))
    return vectors, ok, stats


def _lookup(path: Path, cache: BottleneckCache) -> tuple[np.ndarray | None, str | None]:
    """(cached vector or None, read error or None) for one file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, f"cannot read file: {e.strerror or e}"
    return cache.get(cache.key(image_digest(data))), None


def _decode(index: int, path: Path, spec: InputSpec, cache: BottleneckCache) -> _Decoded | _Failed:
    """Reads and preprocesses one image, or says why it cannot."""
    try:
        data = path.read_bytes()
        return _Decoded(index, cache.key(image_digest(data)), preprocess(data, spec))
    except OSError as e:
        return _Failed(index, f"cannot read file: {e.strerror or e}")
    except ImageDecodeError as e:
        return _Failed(index, f"not a decodable image: {e}")


def _decoded_batches(
    pool: ThreadPoolExecutor,
    paths: Sequence[Path],
    indices: list[int],
    spec: InputSpec,
    cache: BottleneckCache,
    batch_size: int,
) -> Iterator[list[_Decoded | _Failed]]:
    """Batches of decode results, in order, with at most BATCHES_IN_FLIGHT batches decoding ahead."""
    pending: deque[Future] = deque()
    todo = iter(indices)
    window = batch_size * BATCHES_IN_FLIGHT
    batch: list[_Decoded | _Failed] = []

    def fill() -> None:
        while len(pending) < window:
            index = next(todo, None)
            if index is None:
                return
            pending.append(pool.submit(_decode, index, paths[index], spec, cache))

    fill()
    while pending:
        batch.append(pending.popleft().result())
        fill()
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _skip(stats: ExtractionStats, path: Path, reason: str) -> None:
    log.warning("skipping %s: %s", path, reason)
    stats.skipped.append((path, reason))


def _forward_function(backbone: Backbone):
    """The backbone's forward pass as one traced TensorFlow graph with a free batch dimension."""
    spec = backbone.input_spec
    signature = [tf.TensorSpec([None, spec.height, spec.width, 3], tf.float32)]
    traced = tf.function(lambda images: backbone.model(images), input_signature=signature)
    return lambda images: traced(tf.constant(images)).numpy()
