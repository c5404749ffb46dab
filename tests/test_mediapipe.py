"""No training-serving skew: MediaPipe Tasks' ImageClassifier (the `mediapipe` package, the runtime
of its Android, iOS and web Tasks) loads model.tflite as it is and answers as `serve` does.

First what it feeds a model, measured with a model whose scores are its own input: the pixels are
`serve.preprocess`'s, bit for bit. Then real exports: the bundled digits and non-square photo-like
JPEGs, classified by both; top-1 agrees on >= 99% of the images and the accuracies are within a
point. Deterministic: fixed images, a fixed seed, no timing.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import mediapipe as mp
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from mediapipe.tasks.python import BaseOptions, vision
from PIL import Image

from experiments.photos import write_patterns, write_real_crops
from retrain.tflite_graph import TFLiteGraph
from retrain.tflite_metadata import ModelCard, add_metadata
from serve.preprocess import InputSpec, preprocess
from serve.runtime import load_model

from .conftest import DIGITS, jpeg_bytes

AGREEMENT = 0.99
ACCURACY_POINTS = 1.0


def classifier(model: Path, max_results: int = 1) -> vision.ImageClassifier:
    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(model)), max_results=max_results
    )
    return vision.ImageClassifier.create_from_options(options)


def mediapipe_image(path: Path) -> mp.Image:
    """The file as an app hands it to MediaPipe: JPEGs decoded by MediaPipe itself; other files (the
    digits are 8-bit grey PNGs, which MediaPipe would pass on as one channel) as RGB pixels."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return mp.Image.create_from_file(str(path))
    rgb = np.asarray(Image.open(path).convert("RGB"))
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))


# --- what MediaPipe feeds a model -------------------------------------------------------------------


def echo_model(spec: InputSpec, path: Path) -> Path:
    """A model whose "scores" are its input, flattened (one RESHAPE), with retrain's metadata: the
    classifier then reports, as the score of category k, input value k."""
    size = spec.height * spec.width * 3
    graph = TFLiteGraph()
    images = graph.tensor([1, spec.height, spec.width, 3], "images")
    shape = graph.constant(np.array([1, size], np.int32), "shape")
    flat = graph.tensor([1, size], "scores")
    options = schema.ReshapeOptionsT()
    options.newShape = [1, size]
    graph.operator(schema.BuiltinOperator.RESHAPE, [images, shape], flat, schema.BuiltinOptions.ReshapeOptions, options)
    model = graph.pack({"images": images}, {"scores": flat}, "classify_pixels")
    card = ModelCard("echo", "its input", "1", "tests", "Apache-2.0")
    path.write_bytes(add_metadata(model, card, spec, [str(k) for k in range(size)]))
    return path


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        (DIGITS / "0" / "digit_0000.png").read_bytes(),  # 8x8, enlarged 28 times
        jpeg_bytes(640, 480, seed=1),  # landscape, shrunk
        jpeg_bytes(300, 400, seed=2),  # portrait
        _png(np.random.default_rng(0).integers(0, 256, (223, 225, 3), dtype=np.uint8)),  # noise: any error shows
        _png(np.random.default_rng(1).integers(0, 256, (700, 1000, 3), dtype=np.uint8)),
    ],
    ids=["digit", "photo-landscape", "photo-portrait", "noise-odd", "noise-large"],
)
@pytest.mark.parametrize("size", [(224, 224), (56, 40)], ids=["224x224", "56x40"])
def test_mediapipe_feeds_the_model_exactly_serves_pixels(data: bytes, size: tuple[int, int], tmp_path: Path) -> None:
    """Also into a model that is not square, so that height and width cannot be mixed up. (Sides that
    are multiples of 64 are left out: there a sample can fall exactly half-way between two 1/32 pixel
    steps, which MediaPipe rounds either way by float noise in its transform; see serve.preprocess.)"""
    spec = InputSpec(*size, 127.0, 128.0)
    with classifier(echo_model(spec, tmp_path / "echo.tflite"), max_results=-1) as echo:
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        result = echo.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)))
    fed = np.zeros(spec.height * spec.width * 3, np.float32)
    for category in result.classifications[0].categories:
        fed[category.index] = category.score
    ours = preprocess(data, spec)
    # The same 8-bit pixels: MediaPipe normalises as pixel * (1/128) - 127/128, a float rounding apart.
    np.testing.assert_allclose(fed.reshape(ours.shape), ours, rtol=0, atol=1e-5)


# --- real exports ------------------------------------------------------------------------------------


def compare(export: Path, files: list[Path]) -> tuple[float, float, float]:
    """(top-1 agreement, MediaPipe's accuracy, serve's accuracy) on `files`, each in a folder named
    by its label; every label MediaPipe answers is one of the export's."""
    model = load_model(export)
    agree = right = served_right = 0
    with classifier(export / "model.tflite") as device:
        for path in files:
            pixels = preprocess(path.read_bytes(), model.info.input_spec)[None]
            served = model.rank(model.runners[0].scores(pixels)[0], 1)[0].label
            answered = device.classify(mediapipe_image(path)).classifications[0].categories[0].category_name
            assert answered in model.labels
            agree += answered == served
            right += answered == path.parent.name
            served_right += served == path.parent.name
    n = len(files)
    print(f"{n} images: top-1 agreement {agree / n:.2%}, MediaPipe {right / n:.2%}, serve {served_right / n:.2%}")
    return agree / n, right / n, served_right / n


def test_mediapipe_answers_as_serve_on_every_bundled_digit(export: Path) -> None:
    files = sorted(DIGITS.glob("*/*.png"))
    assert len(files) == 1797
    agreement, device, served = compare(export, files)
    assert agreement >= AGREEMENT
    assert abs(device - served) * 100 <= ACCURACY_POINTS
    assert device >= 0.97  # the bar for the float model on the digits


@pytest.mark.parametrize("write", [write_patterns, write_real_crops], ids=["patterns", "real-crops"])
def test_mediapipe_answers_as_serve_on_non_square_photos(write, tmp_path: Path) -> None:
    """Photo-like JPEGs, landscape and portrait (240 to 500 pixels a side), decoded by MediaPipe."""
    from retrain.pipeline import RetrainConfig, run

    images = write(tmp_path / "photos", seed=0, per_class=30)
    sizes = {Image.open(path).size for path in images.glob("*/*.jpg")}
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)
    config = RetrainConfig(
        image_dir=str(images), output_dir=str(tmp_path / "model"), bottleneck_dir=str(tmp_path / "cache")
    )
    with contextlib.redirect_stdout(io.StringIO()):
        run(config)
    export = tmp_path / "model"
    assert json.loads((export / "model.json").read_text())["input"]["preprocessing_version"] == 2
    agreement, device, served = compare(export, sorted(images.glob("*/*.jpg")))
    assert agreement >= AGREEMENT
    assert abs(device - served) * 100 <= ACCURACY_POINTS
