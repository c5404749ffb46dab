"""retrain end to end on the bundled digits: accuracy, the cache, export agreement, bad input.

These run the real default backbone (EfficientNet-Lite0 with converted ImageNet weights) on real
image files; the full-digits run is the `make demo` job and is shared by the tests below it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retrain.pipeline import RetrainConfig, RunResult, run
from retrain.train import HParams
from serve.preprocess import InputSpec, preprocess
from serve.runtime import Runner

from .conftest import DIGITS, REPO, copy_digits, export_vectors, jpeg_bytes

RETRAIN = [sys.executable, "-m", "retrain"]


def retrain_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the real command line in a fresh process, as a user would."""
    return subprocess.run([*RETRAIN, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_demo_reaches_85_percent_and_prints_retrain_py_lines(digits_run) -> None:
    result, log, _root = digits_run
    assert result.extraction.computed == 1797 and result.extraction.cached == 0
    assert result.test_accuracy is not None and result.test_accuracy >= 0.97  # 87% before the feature choice
    for line in ("Step 0: Train accuracy = ", "Step 3999: Cross entropy = ", "Step 3990: Validation accuracy = "):
        assert line in log
    assert f"Final test accuracy = {result.test_accuracy * 100:.1f}% (N={result.test_count})" in log
    assert log.count("Validation accuracy") == 401  # every 10 steps and the last, as in retrain.py


def test_export_layout_model_json_and_latest_link(digits_run) -> None:
    result, _, root = digits_run
    export = result.output_dir
    assert export == root / "models" / "digits" / "1"  # <models_dir>/<image folder's name>/<version>
    assert os.readlink(root / "models" / "latest") == "digits/1"  # relative: works wherever models/ is mounted
    assert {p.name for p in export.iterdir()} == {
        "labels.txt", "model.json", "model.tflite", "saved_model", "model.keras",
        "confusion_matrix.png", "training_curves.png",
    }  # fmt: skip
    assert (export / "labels.txt").read_text().split() == [str(d) for d in range(10)]
    info = json.loads((export / "model.json").read_text())
    assert info["backbone"].startswith("efficientnet_lite0@imagenet")
    choice = info["bottlenecks"]["choice"]
    assert choice["method"] == "validation split (172 images)" and choice["chosen"] == info["bottlenecks"]["features"]
    assert [c["features"] for c in choice["candidates"]] == ["final", "middle", "final+middle"]
    assert info["input"] == {"height": 224, "width": 224, "mean": 127.0, "std": 128.0, "preprocessing_version": 2}
    assert info["metrics"]["test_accuracy"] == result.test_accuracy
    assert info["counts"]["skipped_images"] == 0 and sum(info["counts"]["per_class"].values()) == 1797
    assert info["flags"]["how_many_training_steps"] == 4000 and info["versions"]["tensorflow"]
    assert info["files"] == {
        "tflite": "model.tflite", "labels": "labels.txt", "saved_model": "saved_model", "keras": "model.keras"
    }  # fmt: skip
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_model_json_validation_accuracy_is_on_the_whole_split(digits_run) -> None:
    """Not the last logged step's: that one scores a random batch of 100, drawn with replacement."""
    from retrain.images import discover

    result, _, _ = digits_run
    info = json.loads((result.output_dir / "model.json").read_text())
    validation = discover(str(DIGITS), 10, 10).splits["validation"]
    paths, truth = [e.path for e in validation], [e.label_index for e in validation]
    predicted = np.argmax(result.head.probabilities(export_vectors(result.output_dir, paths)), axis=1)
    assert info["metrics"]["validation_count"] == len(paths) == 172
    assert info["metrics"]["final_validation_accuracy"] == pytest.approx(np.mean(predicted == truth), abs=1e-12)
    assert info["training"]["history"][-1]["validation_count"] == 100


# Runs `retrain` with the given flags, then says which heavy modules the process had loaded.
RETRAIN_AND_LIST_MODULES = """
import atexit, sys
heavy = ("tensorflow", "keras", "tensorflow_hub")
atexit.register(lambda: print("LOADED", sorted(m for m in heavy if m in sys.modules)))
from retrain.cli import entry_point
entry_point(sys.argv[1:])
"""


def test_a_rerun_on_cached_bottlenecks_never_imports_tensorflow(digits_run, tmp_path: Path) -> None:
    """Every vector cached and the feature model converted: the head trains in numpy and model.tflite
    is the feature model with the head appended. Same seed, same vectors: the same model as the
    first run's, within float rounding (scores to 1e-6)."""
    result, _, root = digits_run
    args = ["--image_dir", str(DIGITS), "--bottleneck_dir", str(root / "cache"), "--output_dir", str(tmp_path / "m")]
    completed = subprocess.run(
        [sys.executable, "-c", RETRAIN_AND_LIST_MODULES, *args], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.rstrip().endswith("LOADED []")
    assert completed.stderr == ""
    assert f"Final test accuracy = {result.test_accuracy * 100:.1f}% (N={result.test_count})" in completed.stdout
    assert "(remembered: the same vectors, labels and settings as an earlier run)" in completed.stdout
    export = tmp_path / "m"
    assert {p.name for p in export.iterdir()} == {
        "labels.txt", "model.json", "model.tflite", "confusion_matrix.png", "training_curves.png"
    }  # fmt: skip
    info, first = (json.loads((e / "model.json").read_text()) for e in (export, result.output_dir))
    assert info["files"] == {"tflite": "model.tflite", "labels": "labels.txt"}
    assert info["bottlenecks"]["choice"] == first["bottlenecks"]["choice"]
    paths, _ = _test_images(result)
    spec = InputSpec(224, 224, 127.0, 128.0)
    pixels = np.stack([preprocess(p.read_bytes(), spec) for p in paths[:32]])
    scores = [Runner(e / "model.tflite", threads=2).scores(pixels) for e in (export, result.output_dir)]
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-6)


def test_a_very_first_run_never_imports_tensorflow_either(tmp_path: Path) -> None:
    """No cache and nothing converted ahead of time: the default backbone's feature model is written
    by retrain's own builder, the vectors come from LiteRT, and the export is composed."""
    images = copy_digits(tmp_path / "images", ["1", "4", "7"], per_class=15)
    args = ["--image_dir", str(images), "--bottleneck_dir", str(tmp_path / "cache")]
    args += ["--output_dir", str(tmp_path / "m")]
    env = {k: v for k, v in os.environ.items() if k != "RETRAIN_FEATURE_MODELS_DIR"}
    completed = subprocess.run(
        [sys.executable, "-c", RETRAIN_AND_LIST_MODULES, *args, "--how_many_training_steps", "200"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=env,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.rstrip().endswith("LOADED []")
    assert "45 computed" in completed.stdout and "with LiteRT" in completed.stdout
    assert list((tmp_path / "cache" / "feature_models").glob("*.tflite"))  # written by retrain, not converted
    assert (tmp_path / "m" / "model.tflite").is_file()


def test_each_tap_is_cached_on_its_own_so_every_feature_set_reuses_the_run(digits_run, tmp_path: Path) -> None:
    """The demo computed final and middle in one pass; asking for either alone computes nothing."""
    _, _, root = digits_run
    for name, dims in (("middle", 448), ("final", 1280)):
        completed = retrain_cli(
            "--image_dir", str(DIGITS), "--bottleneck_dir", str(root / "cache"), "--output_dir", str(tmp_path / name),
            "--bottleneck_layers", name, "--how_many_training_steps", "50",
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        assert "Bottlenecks: 1797 from cache, 0 computed" in completed.stdout
        assert "Bottleneck features, scored" not in completed.stdout  # asked for, not chosen
        bottlenecks = json.loads((tmp_path / name / "model.json").read_text())["bottlenecks"]
        assert (bottlenecks["features"], bottlenecks["dims"], bottlenecks["choice"]) == (name, dims, None)


def test_saved_model_dir_asks_for_the_saved_model(digits_run, tmp_path: Path) -> None:
    _, _, root = digits_run
    completed = retrain_cli(
        "--image_dir", str(DIGITS), "--bottleneck_dir", str(root / "cache"), "--output_dir", str(tmp_path / "m"),
        "--how_many_training_steps", "20", "--saved_model_dir", str(tmp_path / "serving" / "1"),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "m" / "saved_model" / "saved_model.pb").is_file()
    assert (tmp_path / "serving" / "1" / "saved_model.pb").is_file()
    assert not (tmp_path / "m" / "model.keras").exists()
    files = json.loads((tmp_path / "m" / "model.json").read_text())["files"]
    assert files == {"tflite": "model.tflite", "labels": "labels.txt", "saved_model": "saved_model"}


def _test_images(result: RunResult) -> tuple[list[Path], np.ndarray]:
    """The test split's files and the in-process model's top-1 on them (head on cached bottlenecks)."""
    from retrain.images import discover

    paths = [e.path for e in discover(DIGITS).splits["testing"]]
    vectors = export_vectors(result.output_dir, paths)
    return paths, np.argmax(result.head.probabilities(vectors), axis=1)


def test_tflite_and_savedmodel_agree_with_the_in_process_model(digits_run) -> None:
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    result, _, _ = digits_run
    paths, expected = _test_images(result)
    spec = InputSpec.from_json(json.loads((result.output_dir / "model.json").read_text())["input"])

    runner = Interpreter(model_path=str(result.output_dir / "model.tflite")).get_signature_runner("classify_pixels")
    pixels = np.stack([preprocess(p.read_bytes(), spec) for p in paths])
    tflite_top1 = np.concatenate(
        [runner(images=pixels[i : i + 32])["scores"].argmax(1) for i in range(0, len(paths), 32)]
    )

    serving = tf.saved_model.load(str(result.output_dir / "saved_model")).signatures["serving_default"]
    outputs = serving(image_bytes=tf.constant([p.read_bytes() for p in paths]))
    saved_top1 = outputs["scores"].numpy().argmax(1)
    assert outputs["classes"].numpy()[0].tolist() == [str(d).encode() for d in range(10)]

    assert np.mean(tflite_top1 == expected) >= 0.99
    assert np.mean(saved_top1 == expected) >= 0.99


def test_second_run_does_no_forward_passes(digits_run, tmp_path: Path) -> None:
    _result, _, root = digits_run
    completed = retrain_cli(
        "--image_dir",
        str(DIGITS),
        "--bottleneck_dir",
        str(root / "cache"),
        "--output_dir",
        str(tmp_path / "again"),
        "--how_many_training_steps",
        "100",
    )
    assert completed.returncode == 0, completed.stderr
    assert "Bottlenecks: 1797 from cache, 0 computed" in completed.stdout
    assert "Final test accuracy = " in completed.stdout and (tmp_path / "again" / "model.tflite").is_file()
    # Nothing on stderr but, for a feature set not exported before, its TFLite model being written (0.1 s).
    assert all("writing the TFLite feature model" in line for line in completed.stderr.splitlines())


def test_killed_extraction_resumes_with_correct_vectors(digits_run, tmp_path: Path) -> None:
    """SIGKILL mid-extraction, restart: finished entries are reused, and every vector is right."""
    _result, _, root = digits_run
    images = copy_digits(tmp_path / "images", ["2", "5", "8"], per_class=100)
    cache = tmp_path / "cache"
    args = [
        "--image_dir",
        str(images),
        "--bottleneck_dir",
        str(cache),
        "--how_many_training_steps",
        "20",
        "--extraction_batch_size",
        "4",
        "--output_dir",
        str(tmp_path / "model"),
    ]
    process = subprocess.Popen([*RETRAIN, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(cache.rglob("*.npy"))) < 40 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = _images_cached(images, cache)  # every tap of the image written (a tap alone is a miss)
    assert 0 < done_before < 300 and not (tmp_path / "model").exists()

    completed = retrain_cli(*args)
    assert completed.returncode == 0, completed.stderr
    assert f"Bottlenecks: {done_before} from cache, {300 - done_before} computed" in completed.stdout
    resumed = {p.name: np.load(p) for p in cache.rglob("*.npy") if not p.name.startswith(".tmp-")}
    reference = {p.name: np.load(p) for p in (root / "cache").rglob("*.npy")}
    assert len(resumed) == 2 * 300 and set(resumed) <= set(reference)  # two taps an image: final and middle
    for name, vector in resumed.items():
        np.testing.assert_allclose(vector, reference[name], atol=1e-4)


def _images_cached(images: Path, cache_dir: Path) -> int:
    """How many of the images under `images` have every tap of the default feature sets cached."""
    from retrain.backbones import load_backbone
    from retrain.backbones.taps import feature_sets, tap_caches, tapped
    from retrain.cache import bottleneck_cache, image_digest

    network = load_backbone()
    joint = tapped(network, feature_sets(network)["final+middle"])
    cache = bottleneck_cache(cache_dir, tap_caches(joint))
    paths = [p for p in images.rglob("*.png")]
    return sum(cache.get(cache.key(image_digest(p.read_bytes()))) is not None for p in paths)


def test_undecodable_images_are_skipped_and_named(tmp_path: Path) -> None:
    images = copy_digits(tmp_path / "images", ["3", "4"], per_class=15)
    bad = {
        images / "3" / "truncated.jpg": jpeg_bytes(64, 64)[:300],
        images / "3" / "empty.png": b"",
        images / "4" / "notes.jpg": b"this is text, not a photo\n",
    }
    for path, data in bad.items():
        path.write_bytes(data)
    completed = retrain_cli(
        "--image_dir",
        str(images),
        "--bottleneck_dir",
        str(tmp_path / "cache"),
        "--output_dir",
        str(tmp_path / "m"),
        "--how_many_training_steps",
        "30",
        "--print_misclassified_test_images",
    )
    assert completed.returncode == 0, completed.stderr
    for path in bad:
        assert f"skipping {path}" in completed.stderr
    assert "3 skipped" in completed.stdout and "=== MISCLASSIFIED TEST IMAGES ===" in completed.stdout
    counts = json.loads((tmp_path / "m" / "model.json").read_text())["counts"]
    assert counts["skipped_images"] == 3 and sorted(counts["skipped_files"]) == sorted(map(str, bad))


def _bad_input_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    one_class = copy_digits(tmp_path / "one", ["1"], per_class=5)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    digits = copy_digits(tmp_path / "two", ["0", "1"], per_class=5)
    return {
        "missing-flag": ([], "--image_dir is required"),
        "no-such-dir": (["--image_dir", str(tmp_path / "nope")], "does not exist"),
        "no-class-folders": (["--image_dir", str(tmp_path / "empty")], "no class folders"),
        "single-class": (["--image_dir", str(one_class)], "only one class"),
        "unwritable-output": (
            ["--image_dir", str(digits), "--output_dir", str(tmp_path / "a_file" / "model")],
            "cannot be created",
        ),
        "bottleneck-dir-is-a-file": (
            ["--image_dir", str(digits), "--bottleneck_dir", str(tmp_path / "a_file" / "cache")],
            "--bottleneck_dir",
        ),
        "bad-flag-value": (["--image_dir", str(digits), "--how_many_training_steps", "0"], "how_many_training_steps"),
        "unknown-architecture": (["--image_dir", str(digits), "--architecture", "alexnet"], "unknown --architecture"),
        "unknown-export": (["--image_dir", str(digits), "--export", "tflite,onnx"], "unknown --export format 'onnx'"),
        "unknown-feature-set": (
            ["--image_dir", str(digits), "--bottleneck_layers", "penultimate"],
            "--bottleneck_layers 'penultimate': choose from auto, final, middle, final+middle",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing-flag",
        "no-such-dir",
        "no-class-folders",
        "single-class",
        "unwritable-output",
        "bottleneck-dir-is-a-file",
        "bad-flag-value",
        "unknown-architecture",
        "unknown-export",
        "unknown-feature-set",
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case: str, tmp_path: Path) -> None:
    args, message = _bad_input_cases(tmp_path)[case]
    before = sorted(tmp_path.rglob("*"))
    cache = tmp_path / "cache"
    completed = retrain_cli("--bottleneck_dir", str(cache), "--models_dir", str(tmp_path / "models"), *args)
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1 and completed.stderr.startswith("retrain: error: ")
    assert message in completed.stderr
    assert sorted(tmp_path.rglob("*")) == before  # no model, no cache, no staging folder


def test_tfhub_module_backbone_trains_and_exports(tmp_path: Path) -> None:
    """Any SavedModel feature-vector module works as a backbone, through to a TFLite export."""
    from ai_edge_litert.interpreter import Interpreter

    from .test_backbones_download import _save_tiny

    module_dir = tmp_path / "module"
    _save_tiny(module_dir, size=None)
    images = copy_digits(tmp_path / "images", ["0", "1"], per_class=10)
    config = RetrainConfig(
        image_dir=str(images),
        output_dir=str(tmp_path / "model"),
        bottleneck_dir=str(tmp_path / "cache"),
        tfhub_module=str(module_dir),
        image_size=64,
        hparams=HParams(how_many_training_steps=20),
    )
    with contextlib.redirect_stdout(io.StringIO()):
        result = run(config)
    info = json.loads((result.output_dir / "model.json").read_text())
    assert info["backbone"].startswith("tfhub:") and info["input"]["height"] == 64 and info["input"]["std"] == 255.0
    runner = Interpreter(model_path=str(result.output_dir / "model.tflite")).get_signature_runner("classify_pixels")
    scores = runner(images=np.zeros((3, 64, 64, 3), np.float32))["scores"]
    assert scores.shape == (3, 2) and np.allclose(scores.sum(1), 1, atol=1e-5)


def test_cli_help_lists_retrain_py_flags() -> None:
    completed = retrain_cli("--help")
    assert completed.returncode == 0
    for flag in (
        "--image_dir",
        "--how_many_training_steps",
        "--train_batch_size",
        "--learning_rate",
        "--testing_percentage",
        "--validation_percentage",
        "--eval_step_interval",
        "--bottleneck_dir",
        "--tfhub_module",
        "--saved_model_dir",
        "--output_labels",
        "--print_misclassified_test_images",
        "--summaries_dir",
        "--random_seed",
        "--architecture",
    ):
        assert flag in completed.stdout
    assert os.environ.get("CI") is None or completed.stderr == ""


def test_models_are_named_by_their_folder_and_numbered_by_version(tmp_path: Path) -> None:
    """TF Serving's layout: low, high, then low again give low/1, high/1, low/2; latest follows."""
    low, high = copy_digits(tmp_path / "low", ["0", "1", "2"], 20), copy_digits(tmp_path / "high", ["7", "8"], 20)
    models, cache = tmp_path / "models", tmp_path / "cache"
    outputs = []
    for image_dir in (low, high, low):
        config = RetrainConfig(
            str(image_dir),
            models_dir=str(models),
            bottleneck_dir=str(cache),
            hparams=HParams(how_many_training_steps=20),
        )
        with contextlib.redirect_stdout(io.StringIO()):
            outputs.append(run(config).output_dir)
    assert outputs == [models / "low" / "1", models / "high" / "1", models / "low" / "2"]
    assert os.readlink(models / "latest") == "low/2"
    assert json.loads((models / "high" / "1" / "model.json").read_text())["labels"] == ["7", "8"]
    assert sorted(p.name for p in models.iterdir()) == ["high", "latest", "low"]  # no lock or staging left


@pytest.mark.parametrize("name", ["latest", ".hidden", "has space", "a/b", "caf\u00e9", "x" * 129])
def test_a_model_name_that_is_no_path_segment_is_refused_before_any_work(name: str, tmp_path: Path) -> None:
    digits = copy_digits(tmp_path / "digits", ["0", "1"], 3)
    completed = retrain_cli("--image_dir", str(digits), "--models_dir", str(tmp_path / "models"), "--model_name", name)
    assert completed.returncode == 2 and completed.stderr.startswith("retrain: error: --model_name "), completed.stderr
    assert not (tmp_path / "models").exists()
