"""The composed export: a head appended to the cached TFLite feature model through the flatbuffer
schema scores images as TensorFlow's own conversion of backbone + head does, and serve runs it."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from retrain.feature_models import cached_feature_model
from retrain.heads import SoftmaxHead, fit_prototypes
from retrain.runtimes.litert import LiteRTRuntime
from retrain.tflite_head import SIGNATURE, append_head, append_softmax_head
from serve.preprocess import preprocess
from serve.runtime import Runner

from .conftest import DIGITS, jpeg_bytes


@pytest.fixture(scope="module")
def feature_model(backbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_feature_model(backbone, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def pixels(backbone) -> np.ndarray:
    digits = [sorted((DIGITS / str(label)).glob("*.png"))[-1].read_bytes() for label in range(10)]
    photos = [jpeg_bytes(500, 375, seed=seed) for seed in (7, 8)]
    return np.stack([preprocess(data, backbone.input_spec) for data in digits + photos])


def _head(hidden: int, classes: int, seed: int = 0) -> SoftmaxHead:
    """A head with weights large enough that the scores are far from uniform."""
    rng = np.random.default_rng(seed)
    sizes = [1280, *([hidden] if hidden else []), classes]
    layers = tuple(
        (rng.normal(0, 0.3, (a, b)).astype(np.float32), rng.normal(0, 0.5, b).astype(np.float32))
        for a, b in itertools.pairwise(sizes)
    )
    return SoftmaxHead(layers)


@pytest.mark.parametrize("hidden", [0, 16], ids=["linear", "hidden-relu"])
def test_composed_scores_equal_the_head_on_litert_features(feature_model: Path, pixels, hidden: int, tmp_path) -> None:
    head = _head(hidden, classes=10)
    composed = append_softmax_head(feature_model.read_bytes(), head.layers)
    path = tmp_path / "model.tflite"
    path.write_bytes(composed)
    scores = Runner(path, threads=2).scores(pixels)  # serve's own runner, by the signature serve uses
    expected = head.probabilities(LiteRTRuntime(feature_model)(pixels))
    # LiteRT's float32 dense layer against numpy's float64 one, logits of magnitude ~10: ~1e-6 apart.
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert scores.max(axis=1).min() > 0.2 and np.allclose(scores.sum(axis=1), 1, atol=1e-5)


def _prototype_head(feature_model: Path, pixels: np.ndarray):
    """Prototypes of the 12 images in 3 made-up classes, so each class mixes digits and photos."""
    labels = np.arange(len(pixels)) % 3
    return fit_prototypes(LiteRTRuntime(feature_model)(pixels), labels, 3)


@pytest.mark.parametrize("kind", ["softmax", "prototype"])
def test_composed_model_equals_tensorflows_conversion_of_backbone_and_head(
    backbone, feature_model: Path, pixels, tmp_path: Path, kind: str
) -> None:
    from retrain.tensorflow_export import convert_to_tflite, save_classifier

    head = _head(0, classes=3, seed=1) if kind == "softmax" else _prototype_head(feature_model, pixels)
    save_classifier(tmp_path / "saved_model", backbone, head, ["a", "b", "c"])
    reference = tmp_path / "reference.tflite"
    reference.write_bytes(convert_to_tflite(tmp_path / "saved_model"))
    composed = tmp_path / "composed.tflite"
    composed.write_bytes(append_head(feature_model.read_bytes(), head))
    np.testing.assert_allclose(Runner(composed, 2).scores(pixels), Runner(reference, 2).scores(pixels), atol=1e-5)


def test_composed_prototype_head_scores_as_the_head_on_litert_features(feature_model: Path, pixels, tmp_path) -> None:
    head = _prototype_head(feature_model, pixels)
    path = tmp_path / "model.tflite"
    path.write_bytes(append_head(feature_model.read_bytes(), head))
    expected = head.probabilities(LiteRTRuntime(feature_model)(pixels))
    # LiteRT normalises in float32 and the similarities are scaled by 10: ~1e-6 apart from numpy's float64.
    np.testing.assert_allclose(Runner(path, threads=2).scores(pixels), expected, atol=1e-5)
    assert len(set(expected.argmax(axis=1).tolist())) > 1  # not a degenerate head


def test_the_signature_is_the_one_serve_runs(feature_model: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    composed = append_softmax_head(feature_model.read_bytes(), _head(0, classes=4).layers)
    interpreter = Interpreter(model_content=composed)
    assert interpreter.get_signature_list() == {SIGNATURE: {"inputs": ["images"], "outputs": ["scores"]}}
    assert list(interpreter.get_output_details()[0]["shape_signature"]) == [-1, 4]
