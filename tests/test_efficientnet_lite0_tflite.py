"""EfficientNet-Lite0's feature model written in numpy: the features of the Keras model and of
TensorFlow's conversion, without importing TensorFlow to build it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrain import feature_models
from retrain.backbones import efficientnet_lite_tflite as lite_tflite
from retrain.backbones.efficientnet_lite_tflite import feature_model_bytes
from retrain.backbones.efficientnet_lite_variants import LITE0
from retrain.backbones.taps import Tap, keras_tap_model, tap_width
from retrain.heads import SoftmaxHead
from retrain.runtimes.litert import LiteRTRuntime
from retrain.tflite_head import append_head
from serve.runtime import Runner

from .conftest import REPO

# As tests/test_runtimes.py holds LiteRT to TensorFlow: the features are ReLU6 outputs averaged over
# 49 positions, up to ~6; float operations ordered differently, and folded batch norms rounded
# differently, move them by far less (measured: 1.4e-5 from Keras, as the converted model differs
# from it by 1.3e-5; 8e-6 from the converted model).
ATOL, RTOL = 1e-4, 1e-4


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return LITE0.imagenet_state_dict()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory, state_dict) -> Path:
    path = tmp_path_factory.mktemp("lite0_tflite") / "features.tflite"
    path.write_bytes(lite_tflite.feature_model_bytes(state_dict))
    return path


@pytest.fixture(scope="module")
def runtime(model_path: Path) -> LiteRTRuntime:
    return LiteRTRuntime(model_path, threads=2)


def test_features_equal_the_keras_models_and_the_converters(backbone, pixels, runtime, tmp_path: Path) -> None:
    features = runtime(pixels)
    keras_features = np.asarray(backbone.model(pixels, training=False))
    converted = LiteRTRuntime(feature_models.cached_feature_model(backbone, tmp_path), threads=2)(pixels)
    np.testing.assert_allclose(features, keras_features, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(features, converted, atol=ATOL, rtol=RTOL)
    assert features.shape == (len(pixels), 1280)
    assert np.abs(keras_features).max() > 1.0  # a real signal, not zeros compared with zeros


def test_building_imports_neither_tensorflow_nor_keras() -> None:
    code = (
        "import sys; from retrain.backbones.efficientnet_lite_tflite import feature_model_bytes; "
        "assert len(feature_model_bytes()) > 10_000_000; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_any_batch_size(runtime, pixels) -> None:
    whole = runtime(pixels)
    for size in (1, 5, len(pixels)):
        np.testing.assert_allclose(runtime(pixels[:size]), whole[:size], atol=ATOL, rtol=RTOL)


def test_its_inputs_outputs_and_signature_are_the_converters(backbone, model_path: Path, tmp_path: Path) -> None:
    """What LiteRTRuntime and tflite_head.append_head rely on: one input, one output, their shapes
    and shape signatures (batch -1), and the converter's signature with its names."""
    from ai_edge_litert.interpreter import Interpreter

    ours = Interpreter(str(model_path))
    theirs = Interpreter(str(feature_models.cached_feature_model(backbone, tmp_path)))
    assert (
        ours.get_signature_list()
        == theirs.get_signature_list()
        == {"serving_default": {"inputs": ["images"], "outputs": ["features"]}}
    )

    def contract(details: list[dict]) -> list[tuple]:
        return [(list(d["shape"]), list(d["shape_signature"]), d["dtype"]) for d in details]

    assert (
        contract(ours.get_input_details())
        == contract(theirs.get_input_details())
        == [([1, 224, 224, 3], [-1, 224, 224, 3], np.float32)]
    )
    assert (
        contract(ours.get_output_details())
        == contract(theirs.get_output_details())
        == [([1, 1280], [-1, 1280], np.float32)]
    )


def test_a_head_appends_to_it_and_serve_runs_the_result(model_path: Path, runtime, pixels, tmp_path: Path) -> None:
    """The export path: `tflite_head` edits the feature model, serve's Runner runs the composition."""
    rng = np.random.default_rng(0)
    head = SoftmaxHead(
        ((rng.normal(0, 0.3, (1280, 10)).astype(np.float32), rng.normal(0, 0.5, 10).astype(np.float32)),)
    )
    path = tmp_path / "model.tflite"
    path.write_bytes(append_head(model_path.read_bytes(), head))
    scores = Runner(path, threads=2).scores(pixels)
    np.testing.assert_allclose(scores, head.probabilities(runtime(pixels)), atol=1e-5)


def test_a_missing_tensor_is_named(state_dict) -> None:
    broken = {k: v for k, v in state_dict.items() if k != "_blocks.7._bn1.running_var"}
    with pytest.raises(ValueError, match=r"no tensor '_blocks\.7\._bn1\.running_var' \(of shape \(480,\)\)"):
        lite_tflite.feature_model_bytes(broken)


def test_a_misshaped_tensor_is_named(state_dict) -> None:
    broken = {**state_dict, "_blocks.3._expand_conv.weight": np.zeros((144, 24, 3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"'_blocks\.3\._expand_conv\.weight' has shape \(144, 24, 3, 3\), expected"):
        lite_tflite.feature_model_bytes(broken)


def test_another_networks_tensors_are_refused(state_dict) -> None:
    """EfficientNet-B0 has squeeze-and-excitation; its checkpoint must not pass for Lite0's."""
    broken = {**state_dict, "_blocks.1._se_reduce.weight": np.zeros((4, 96, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"no place in the network: \['_blocks\.1\._se_reduce\.weight'\]"):
        lite_tflite.feature_model_bytes(broken)


def test_the_signature_names_are_the_converters() -> None:
    assert (feature_models.INPUT_NAME, feature_models.OUTPUT_NAME) == (lite_tflite.INPUT_NAME, lite_tflite.OUTPUT_NAME)


MIDDLE_AND_FINAL = (Tap("block10_add", grid=2), Tap("block7_add", grid=2), Tap("top_relu"))


def test_taps_equal_the_keras_layers_pooled_the_same_way(backbone, pixels, tmp_path: Path) -> None:
    """Middle layers on a 2x2 grid and the final layer, concatenated, in one pass: as Keras computes them."""
    path = tmp_path / "taps.tflite"
    path.write_bytes(feature_model_bytes(taps=MIDDLE_AND_FINAL))
    vectors = LiteRTRuntime(path)(pixels)
    widths = [tap_width("efficientnet_lite0@imagenet", tap) for tap in MIDDLE_AND_FINAL]
    assert vectors.shape == (len(pixels), 448 + 320 + 1280) == (len(pixels), sum(widths))
    expected = np.asarray(keras_tap_model(backbone.model, MIDDLE_AND_FINAL)(pixels))
    np.testing.assert_allclose(vectors, expected, atol=ATOL, rtol=RTOL)
    assert np.abs(expected[:, :448]).max() > 1.0  # the middle taps carry a real signal too


def test_the_final_tap_alone_is_the_default_model() -> None:
    assert feature_model_bytes(taps=(Tap("top_relu"),)) == feature_model_bytes()


@pytest.mark.parametrize(
    ("tap", "message"),
    [(Tap("block99_add"), "no layer 'block99_add'"), (Tap("top_relu", grid=5), "does not fit top_relu's 7x7")],
)
def test_a_tap_that_cannot_be_taken_is_refused(tap: Tap, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        feature_model_bytes(taps=(tap,))
