"""Content-addressed bottleneck cache: one small .npy file per (image bytes, backbone, preprocessing).

The key is a hash of the image's bytes, never its name, so a renamed image is a hit and an edited
one is a miss. Entries are written to a temporary file and renamed into place, so a run killed at
any moment leaves only whole entries; an entry that cannot be read is treated as a miss.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from pathlib import Path

import numpy as np

from retrain.files import replacing
from serve.preprocess import PREPROCESSING_VERSION

log = logging.getLogger(__name__)


def image_digest(data: bytes) -> str:
    """sha256 of the image bytes: the content half of a cache key."""
    return hashlib.sha256(data).hexdigest()


class BottleneckCache:
    """Bottleneck vectors of one backbone, stored under `root/<backbone>/<key[:2]>/<key>.npy`."""

    def __init__(self, root: str | Path, backbone_cache_id: str, feature_dim: int):
        self.root = Path(root).expanduser()
        self.feature_dim = feature_dim
        self._salt = f"{backbone_cache_id}|preprocessing-v{PREPROCESSING_VERSION}|"
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone_cache_id)[:60]
        salt_digest = hashlib.sha256(self._salt.encode()).hexdigest()[:12]
        self.directory = self.root / f"{readable}-{salt_digest}"
        self._header = _npy_header(feature_dim)

    def key(self, digest: str) -> str:
        """Cache key of an image, from its content digest."""
        return hashlib.sha256((self._salt + digest).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return Path(self._location(key))

    def _location(self, key: str) -> str:
        """Where an entry lives, as a string: a rerun looks up thousands, and pathlib's joins cost more."""
        return os.path.join(self.directory, key[:2], f"{key}.npy")

    def get(self, key: str) -> np.ndarray | None:
        """The cached vector, or None when missing or unreadable (a warning names the bad entry)."""
        path = self._location(key)
        try:
            with open(path, "rb") as file:
                data = file.read()
            if data.startswith(self._header) and len(data) == len(self._header) + 4 * self.feature_dim:
                vector = np.frombuffer(data, np.float32, offset=len(self._header))  # np.load parses the header
            else:
                vector = np.load(io.BytesIO(data), allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as e:
            log.warning("bottleneck cache entry %s is unreadable (%s); recomputing it", path, e)
            return None
        if vector.shape != (self.feature_dim,) or vector.dtype != np.float32 or not np.all(np.isfinite(vector)):
            log.warning("bottleneck cache entry %s has the wrong shape or values; recomputing it", path)
            return None
        return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        """Writes atomically (a temporary file in the same folder renamed over the final name), readable by
        whoever may read the cache folder."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as temporary, temporary.open("wb") as f:
            np.save(f, np.asarray(vector, dtype=np.float32), allow_pickle=False)


def _npy_header(feature_dim: int) -> bytes:
    """The bytes `np.save` writes before a float32 vector of `feature_dim` values."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(feature_dim, np.float32), allow_pickle=False)
    return buffer.getvalue()[: -4 * feature_dim]


class TapCache:
    """The bottlenecks of a backbone with several taps, each tap in a BottleneckCache of its own.

    Looks like one cache to the extraction: `key` is the image's content digest, `get` joins the
    taps' vectors (None if any is missing) and `put` splits a vector among them. Feature sets that
    share a tap share its entries; the final layer's are the ones a run without taps wrote.
    """

    def __init__(self, root: str | Path, taps: list[tuple[str, int]]):
        self.parts = [BottleneckCache(root, cache_id, width) for cache_id, width in taps]
        self.root = self.parts[0].root
        self.directory = self.parts[0].directory
        self.feature_dim = sum(part.feature_dim for part in self.parts)
        self._bounds = np.cumsum([0] + [part.feature_dim for part in self.parts])

    def key(self, digest: str) -> str:
        return digest

    def get(self, key: str) -> np.ndarray | None:
        vectors = [part.get(part.key(key)) for part in self.parts]
        if any(vector is None for vector in vectors):
            return None
        return np.concatenate(vectors)

    def put(self, key: str, vector: np.ndarray) -> None:
        for part, start, end in zip(self.parts, self._bounds[:-1], self._bounds[1:], strict=True):
            part.put(part.key(key), vector[start:end])


def bottleneck_cache(root: str | Path, taps: list[tuple[str, int]]) -> BottleneckCache | TapCache:
    """One BottleneckCache for a single tap (or an untapped backbone), a TapCache for several."""
    if len(taps) == 1:
        return BottleneckCache(root, *taps[0])
    return TapCache(root, taps)
