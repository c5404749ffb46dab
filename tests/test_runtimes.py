"""Extraction runtimes: LiteRT computes the vectors TensorFlow computes, from a feature model
converted once and cached; `auto` falls back to TensorFlow for a backbone that will not convert."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrain import feature_models
from retrain.backbones import Backbone, load_backbone
from retrain.errors import RetrainError
from retrain.runtimes import open_runtime

# LiteRT (XNNPACK) and TensorFlow order float operations differently; the features are ReLU6
# outputs averaged over 49 positions, of magnitude up to ~6. Measured differences: under 2e-5.
ATOL, RTOL = 1e-4, 1e-4


def test_litert_vectors_equal_tensorflows_within_tolerance(backbone, pixels, tmp_path: Path) -> None:
    litert = open_runtime(backbone, tmp_path, "litert")
    tensorflow = open_runtime(backbone, tmp_path, "tensorflow")
    assert (litert.name, tensorflow.name) == ("litert", "tensorflow")
    expected = tensorflow(pixels)
    np.testing.assert_allclose(litert(pixels), expected, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(litert(pixels[:1]), expected[:1], atol=ATOL, rtol=RTOL)  # any batch size
    assert np.abs(expected).max() > 1.0  # a real signal, not zeros compared with zeros


@pytest.fixture(scope="module")
def converted() -> Backbone:
    """A backbone that goes through TensorFlow's converter (Lite0 has a builder of its own)."""
    return load_backbone("pixels", image_size=16)


def test_the_feature_model_is_converted_once_then_read_from_the_cache(
    converted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone = converted
    monkeypatch.delenv("RETRAIN_FEATURE_MODELS_DIR")  # nothing converted ahead of time
    conversions = []
    convert = feature_models.convert
    monkeypatch.setattr(feature_models, "convert", lambda b: conversions.append(b.cache_id) or convert(b))
    first = feature_models.cached_feature_model(backbone, tmp_path)
    assert first.parent == tmp_path / "feature_models" and first.suffix == ".tflite"
    mtime = first.stat().st_mtime_ns
    assert feature_models.cached_feature_model(backbone, tmp_path) == first
    assert conversions == [backbone.cache_id] and first.stat().st_mtime_ns == mtime
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary left behind


def test_the_key_names_the_network_and_what_made_it(
    backbone, converted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = feature_models.feature_model_name
    before = {b.cache_id: name(b) for b in (backbone, converted)}
    assert len(set(before.values())) == 2
    monkeypatch.setattr(feature_models, "converter_version", lambda: "99.0.0")
    assert name(converted) != before[converted.cache_id]  # a new converter converts again
    assert name(backbone) == before[backbone.cache_id]  # Lite0's own builder does not depend on TensorFlow


def test_the_default_backbone_is_built_without_tensorflow(backbone, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RETRAIN_FEATURE_MODELS_DIR")
    monkeypatch.setattr(feature_models, "convert", lambda b: pytest.fail("Lite0 went through the converter"))
    path = feature_models.cached_feature_model(backbone, tmp_path)
    assert path.parent == tmp_path / "feature_models" and path.stat().st_size > 10_000_000


def test_a_prebuilt_model_is_used_and_never_written(backbone, tmp_path: Path, prebuilt_feature_models: Path) -> None:
    """As in the retrain image: converted at build time into a folder the run may not write."""
    path = feature_models.cached_feature_model(backbone, tmp_path / "cache")
    assert path.parent == prebuilt_feature_models
    assert not (tmp_path / "cache").exists()


def test_a_damaged_cached_model_is_converted_again(
    backbone, pixels, tmp_path: Path, prebuilt_feature_models: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.delenv("RETRAIN_FEATURE_MODELS_DIR")
    name = feature_models.feature_model_name(backbone)
    path = tmp_path / "feature_models" / name
    path.parent.mkdir()
    good = (prebuilt_feature_models / name).read_bytes()
    path.write_bytes(good[: len(good) // 3])
    with caplog.at_level(logging.WARNING):
        runtime = open_runtime(backbone, tmp_path, "litert")
    assert "unreadable" in caplog.text and path.stat().st_size > len(good) // 2
    from retrain.runtimes.litert import LiteRTRuntime

    expected = LiteRTRuntime(prebuilt_feature_models / name)(pixels[:2])
    np.testing.assert_allclose(runtime(pixels[:2]), expected, atol=1e-6)


def test_a_backbone_the_converter_rejects_falls_back_to_tensorflow(
    converted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    backbone = converted
    """The converter is made to refuse (no backbone here is refused for real); the fallback is real."""

    def refuse(_):
        raise feature_models.ConversionError("ConverterError: op not supported")

    monkeypatch.setattr(feature_models, "convert", refuse)
    monkeypatch.delenv("RETRAIN_FEATURE_MODELS_DIR")
    with caplog.at_level(logging.WARNING):
        assert open_runtime(backbone, tmp_path / "fresh", "auto").name == "tensorflow"
    assert "does not convert to TFLite" in caplog.text and "TensorFlow" in caplog.text
    with pytest.raises(RetrainError, match="--runtime litert"):
        open_runtime(backbone, tmp_path / "fresh", "litert")


def _tensorflow_version() -> str:
    import tensorflow as tf

    return tf.__version__


@pytest.mark.skipif(bool(list(Path("/dev").glob("nvidia[0-9]*"))), reason="this machine has an NVIDIA GPU")
def test_auto_asks_tensorflow_about_gpus_only_where_a_gpu_device_exists() -> None:
    probe = "import sys; from retrain.runtimes import _tensorflow_sees_a_gpu as f; "
    probe += "print(f(), 'tensorflow' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert completed.stdout.split() == ["False", "False"]
