"""The content-addressed bottleneck cache: keys, atomic writes, unreadable entries."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from retrain.cache import BottleneckCache, image_digest


def test_key_follows_content_backbone_and_preprocessing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = BottleneckCache(tmp_path, "efficientnet_lite0@imagenet", 4)
    same_bytes = cache.key(image_digest(b"image"))
    assert same_bytes == cache.key(image_digest(b"image"))  # a renamed file has the same bytes
    assert same_bytes != cache.key(image_digest(b"image, edited"))
    assert same_bytes != BottleneckCache(tmp_path, "mobilenet_v2@imagenet", 4).key(image_digest(b"image"))
    monkeypatch.setattr("retrain.cache.PREPROCESSING_VERSION", 99)
    assert same_bytes != BottleneckCache(tmp_path, "efficientnet_lite0@imagenet", 4).key(image_digest(b"image"))


def test_put_then_get_round_trips_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    cache = BottleneckCache(tmp_path, "b", 3)
    key = cache.key(image_digest(b"x"))
    assert cache.get(key) is None
    cache.put(key, np.array([1.5, -2.0, 0.25], dtype=np.float32))
    np.testing.assert_array_equal(cache.get(key), [1.5, -2.0, 0.25])
    assert [p.name for p in cache.directory.rglob("*") if p.is_file()] == [f"{key}.npy"]


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", None],
    ids=["empty", "garbage", "wrong-shape"],
)
def test_unreadable_entry_is_a_miss_with_a_warning(tmp_path: Path, caplog, content: bytes | None) -> None:
    cache = BottleneckCache(tmp_path, "b", 3)
    key = cache.key(image_digest(b"x"))
    if content is None:
        BottleneckCache(tmp_path, "b", 5).put(key, np.ones(5, dtype=np.float32))  # same path, wrong length
    else:
        cache.path(key).parent.mkdir(parents=True)
        cache.path(key).write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert cache.get(key) is None
    assert str(cache.path(key)) in caplog.text
    cache.put(key, np.zeros(3, dtype=np.float32))
    np.testing.assert_array_equal(cache.get(key), np.zeros(3))
