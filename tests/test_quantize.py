"""Quantized exports (`--export tflite_fp16,tflite_int8`): smaller files with model.tflite's metadata,
loaded as they are by MediaPipe Tasks' ImageClassifier, and served by `serve --variant`.

The issue's bar, on all 1,797 bundled digits with the installed `retrain` command's export: the float
model right on >= 97% in MediaPipe, int8 within 1.5 points of it at <= 0.35x its size. Deterministic:
a fixed seed, fixed images, the bottleneck cache of the session's digits run.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.photos import write_patterns, write_real_crops
from retrain.quantize import FULL_INTEGER, VARIANTS, quantize
from serve.preprocess import preprocess
from serve.runtime import Runner, load_model

from .conftest import DIGITS, REPO, start_server
from .test_mediapipe import classifier, mediapipe_image
from .test_tflite_metadata import packed_files, read_metadata

BIN = Path(sys.executable).parent
INT8_POINTS = 1.5
INT8_SIZE = 0.35


@pytest.fixture(scope="module")
def quantized(digits_run, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The installed command's export of the digits with every TFLite variant, and what it printed."""
    root = tmp_path_factory.mktemp("quantized")
    cache = digits_run[2] / "cache"
    command = [str(BIN / "retrain"), "--image_dir", str(DIGITS), "--models_dir", str(root / "models")]
    command += ["--bottleneck_dir", str(cache), "--export", "tflite,tflite_fp16,tflite_int8"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "models" / "digits" / "1", done.stdout


def mediapipe_accuracy(model: Path) -> float:
    files = sorted(DIGITS.glob("*/*.png"))
    right = 0
    with classifier(model) as device:
        for path in files:
            category = device.classify(mediapipe_image(path)).classifications[0].categories[0]
            right += category.category_name == path.parent.name
    return right / len(files)


def test_mediapipe_loads_every_variant_and_int8_keeps_the_accuracy_at_a_third_of_the_size(quantized) -> None:
    export, _ = quantized
    accuracy = {
        name: mediapipe_accuracy(export / file) for name, file in {"tflite": "model.tflite", **VARIANTS}.items()
    }
    size = {name: (export / file).stat().st_size for name, file in {"tflite": "model.tflite", **VARIANTS}.items()}
    print(f"MediaPipe on 1,797 digits: {accuracy}; bytes {size}")
    assert accuracy["tflite"] >= 0.97
    assert abs(accuracy["tflite_int8"] - accuracy["tflite"]) * 100 <= INT8_POINTS
    assert abs(accuracy["tflite_fp16"] - accuracy["tflite"]) * 100 <= INT8_POINTS
    assert size["tflite_int8"] <= INT8_SIZE * size["tflite"]
    assert size["tflite_fp16"] <= 0.55 * size["tflite"]


def test_each_variant_carries_the_same_metadata_and_labels(quantized) -> None:
    export, _ = quantized
    reference = read_metadata((export / "model.tflite").read_bytes())
    for file in VARIANTS.values():
        model = (export / file).read_bytes()
        metadata = read_metadata(model)
        assert (metadata.name, metadata.version, metadata.description) == (
            reference.name,
            reference.version,
            reference.description,
        )
        assert packed_files(model) == {"labels.txt": (export / "labels.txt").read_text()}


def test_model_json_and_the_log_give_each_variants_size_and_test_accuracy(quantized) -> None:
    export, printed = quantized
    info = json.loads((export / "model.json").read_text())
    variants = info["variants"]
    assert set(variants) == {"tflite", *VARIANTS}
    assert info["files"]["tflite_int8"] == "model_int8.tflite" and info["files"]["tflite_fp16"] == "model_fp16.tflite"
    test_accuracy, tested = info["metrics"]["test_accuracy"], info["metrics"]["test_count"]
    for name, entry in variants.items():
        assert entry["bytes"] == (export / entry["file"]).stat().st_size
        assert abs(entry["test_accuracy"] - test_accuracy) * 100 <= INT8_POINTS, name
        assert f"{entry['file']:<20} {entry['bytes'] / 1e6:.1f} MB" in printed
        assert f"test accuracy {entry['test_accuracy'] * 100:.1f}%" in printed
    # The float model run end to end on the test images' files (LiteRT, as a device runs it) against the
    # run's own figure from cached bottlenecks: the same network, so at most float noise at a near tie.
    assert abs(variants["tflite"]["test_accuracy"] - test_accuracy) <= 1 / tested + 1e-9


def test_serve_runs_a_variant_and_refuses_one_the_export_lacks(quantized, tmp_path: Path) -> None:
    export, _ = quantized
    images = [str(DIGITS / label / name) for label, name in (("3", "digit_0003.png"), ("7", "digit_0007.png"))]
    command = [str(BIN / "serve"), "--model_dir", str(export), "--variant", "tflite_int8", "predict", *images]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line.split(": ")[1].split(" ")[0] for line in done.stdout.splitlines()] == ["3", "7"]
    assert load_model(export, variant="tflite_int8").runners[0] is not None

    plain = tmp_path / "plain"
    plain.mkdir()
    for file in ("model.tflite", "model.json", "labels.txt"):
        (plain / file).write_bytes((export / file).read_bytes())
    info = json.loads((plain / "model.json").read_text())
    info["files"] = {"tflite": "model.tflite", "labels": "labels.txt"}
    (plain / "model.json").write_text(json.dumps(info))
    command = [str(BIN / "serve"), "--model_dir", str(plain), "--variant", "tflite_fp16", "predict", images[0]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0
    assert "has no tflite_fp16 variant" in done.stderr and "Traceback" not in done.stderr


def test_int8_is_integer_inside_and_float_at_its_edges(quantized) -> None:
    """Full integer quantization, calibrated on training images, with the float32 input and output that
    MediaPipe and serve feed (MediaPipe refuses an int8 input): a QUANTIZE first, a DEQUANTIZE last."""
    from ai_edge_litert.interpreter import Interpreter

    export, _ = quantized
    info = json.loads((export / "model.json").read_text())["variants"]["tflite_int8"]
    assert info["quantization"] == FULL_INTEGER and info["calibration_images"] == 100
    interpreter = Interpreter(model_path=str(export / "model_int8.tflite"))
    runner = interpreter.get_signature_runner("classify_pixels")
    assert [d["dtype"] for d in runner.get_input_details().values()] == [np.float32]
    assert [d["dtype"] for d in runner.get_output_details().values()] == [np.float32]
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    assert "CONV_2D" in ops and all(d["dtype"] != np.float32 for d in interpreter.get_tensor_details()
                                    if d["name"].endswith("_int8"))  # fmt: skip


def test_quantize_refuses_what_it_cannot_make() -> None:
    with pytest.raises(ValueError, match="no quantized variant"):
        quantize(b"TFL3", "tflite_int4")
    with pytest.raises(ValueError, match="calibrated on images"):
        quantize(b"TFL3", "tflite_int8")


@pytest.mark.parametrize("write", [write_patterns, write_real_crops], ids=["patterns", "real-crops"])
def test_int8_keeps_the_accuracy_on_non_square_photos(write, tmp_path: Path) -> None:
    """On every image of the two photo-like sets (not only the small test split), LiteRT as a device
    runs it: int8 within 1.5 points of the float model."""
    from retrain.pipeline import RetrainConfig, run

    images = write(tmp_path / "photos", seed=0, per_class=30)
    config = RetrainConfig(
        image_dir=str(images),
        output_dir=str(tmp_path / "model"),
        bottleneck_dir=str(tmp_path / "cache"),
        export=("tflite", "tflite_int8"),
    )
    with contextlib.redirect_stdout(io.StringIO()):
        run(config)
    export = tmp_path / "model"
    model = load_model(export)
    files = sorted(images.glob("*/*.jpg"))
    pixels = np.stack([preprocess(path.read_bytes(), model.info.input_spec) for path in files])
    truth = np.array([model.labels.index(path.parent.name) for path in files])
    accuracy = {}
    for file in ("model.tflite", "model_int8.tflite"):
        runner = Runner(export / file, threads=2)
        predicted = np.concatenate([runner.scores(pixels[i : i + 16]).argmax(axis=1) for i in range(0, len(files), 16)])
        accuracy[file] = float((predicted == truth).mean())
    method = json.loads((export / "model.json").read_text())["variants"]["tflite_int8"]["quantization"]
    print(f"{len(files)} photos: {accuracy}, int8 made with {method}")
    assert abs(accuracy["model_int8.tflite"] - accuracy["model.tflite"]) * 100 <= INT8_POINTS


def test_the_readmes_python_snippet_runs_on_model_int8(quantized, tmp_path: Path, monkeypatch, capsys) -> None:
    """README, "Device snippets": its Python block, as written, in a folder holding model_int8.tflite
    and a photo.jpg (a digit): it prints the digit's folder name first."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Device snippets: MediaPipe Tasks") :]
    snippet = section[section.index("```python\n") + len("```python\n") :]
    snippet = snippet[: snippet.index("```")]
    export, _ = quantized
    (tmp_path / "model_int8.tflite").write_bytes((export / "model_int8.tflite").read_bytes())
    Image.open(DIGITS / "7" / "digit_0007.png").convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})  # the README's own code, as written
    ranked = capsys.readouterr().out.strip()
    assert ranked.startswith("[('7', "), ranked


def test_a_server_of_a_variant_hands_that_file_to_a_browser(quantized, tmp_path: Path) -> None:
    """The page's "Run in this browser" fetches the model file the server runs, so both answer alike."""
    export, _ = quantized
    running = start_server(export, tmp_path / "server.log", "--variant", "tflite_int8")
    try:
        with running.client() as client:
            answer = client.get("/v1/models/retrained/model.tflite")
    finally:
        running.stop()
    assert answer.status_code == 200 and answer.headers["x-model-file"] == "model_int8.tflite"
    assert answer.content == (export / "model_int8.tflite").read_bytes()
