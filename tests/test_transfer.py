"""Transfer-learning options end to end: each flag, run through the real `retrain` command on real
digits, changes what is trained and exported the way the README says, and the reports match."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support

from retrain.backbones import load_backbone
from retrain.cli import main
from retrain.errors import RetrainError
from retrain.finetune import weight_layers
from retrain.heads import fit_prototypes
from retrain.images import discover
from serve.preprocess import preprocess
from serve.runtime import load_model

from .conftest import copy_digits, export_vectors

LABELS = ["0", "1", "7"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("transfer")


@pytest.fixture(scope="module")
def digits(root: Path) -> Path:
    """75 digits of three classes: 57 training, 7 validation, 11 test images."""
    return copy_digits(root / "digits", LABELS, per_class=25)


@pytest.fixture(scope="module")
def few(root: Path) -> Path:
    """Two images per class: too few for a hold-out split."""
    return copy_digits(root / "few", LABELS, per_class=2)


def retrain(root: Path, name: str, *args: str) -> tuple[str, Path]:
    """The `retrain` command in this process (TensorFlow loads once); returns its log and export.
    Exports include model.keras, the file `--base_model` reads."""
    output = root / "models" / name
    log = io.StringIO()
    flags = ["--output_dir", str(output), "--bottleneck_dir", str(root / "cache"), "--export", "tflite,keras"]
    with contextlib.redirect_stdout(log):
        main.main(args=[*args, *flags], standalone_mode=False)
    return log.getvalue(), output


def model_json(export: Path) -> dict:
    return json.loads((export / "model.json").read_text())


def tflite_predictions(export: Path, paths: list[Path]) -> np.ndarray:
    """What serve would answer: the export's model.tflite on serve's preprocessing."""
    model = load_model(export)
    pixels = np.stack([preprocess(path.read_bytes(), model.info.input_spec) for path in paths])
    return np.argmax(model.runners[0].scores(pixels), axis=1)


def test_split(image_dir: Path) -> tuple[list[Path], np.ndarray]:
    examples = discover(image_dir).splits["testing"]
    return [e.path for e in examples], np.array([e.label_index for e in examples])


test_split.__test__ = False  # a helper, not a test


def assert_png(path: Path, classes: list[str] | None = None) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
        if classes is not None:
            assert json.loads(image.text["Classes"]) == classes


@pytest.fixture(scope="module")
def hidden_run(root: Path, digits: Path) -> tuple[str, Path]:
    return retrain(
        root, "hidden", "--image_dir", str(digits), "--hidden_units", "16", "--dropout", "0.3",
        "--how_many_training_steps", "300", "--eval_step_interval", "50",
    )  # fmt: skip


def test_hidden_layer_and_dropout_are_trained_and_exported(hidden_run) -> None:
    _, export = hidden_run
    info = model_json(export)
    assert info["head"] == {"type": "softmax", "hidden_units": 16, "dropout": 0.3}
    full = keras.saving.load_model(export / "model.keras")
    dense = [layer for layer in full.layers if isinstance(layer, keras.layers.Dense)]
    assert [tuple(layer.kernel.shape) for layer in dense] == [(info["bottlenecks"]["dims"], 16), (16, 3)]
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in full.layers) == 2


def test_per_class_scores_are_printed_stored_and_match_what_serve_answers(hidden_run, digits: Path) -> None:
    log, export = hidden_run
    info = model_json(export)
    paths, truth = test_split(digits)
    served = tflite_predictions(export, paths)
    assert info["metrics"]["test_accuracy"] == pytest.approx(np.mean(served == truth))
    precision, recall, f1, support = precision_recall_fscore_support(truth, served, labels=[0, 1, 2], zero_division=0)
    stored = info["metrics"]["per_class"]
    assert [row["label"] for row in stored] == LABELS
    for row, p, r, f, s in zip(stored, precision, recall, f1, support, strict=True):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p, r, f, s), abs=1e-4)
    header = next(i for i, line in enumerate(log.splitlines()) if line.startswith("Class"))
    table = log.splitlines()[header + 1 : header + 4]
    assert [line.split()[0] for line in table] == LABELS


def test_report_plots_are_pngs_of_the_classes_and_the_curves_cover_training(hidden_run) -> None:
    _, export = hidden_run
    assert_png(export / "confusion_matrix.png", LABELS)
    assert_png(export / "training_curves.png")
    history = model_json(export)["training"]["history"]
    assert [record["step"] for record in history] == [0, 50, 100, 150, 200, 250, 299]
    assert all(record["validation_cross_entropy"] is not None for record in history)


@pytest.mark.parametrize("head", ["prototype", "softmax"])
def test_too_few_images_are_cross_validated_not_tested(root: Path, few: Path, head: str) -> None:
    log, export = retrain(
        root, f"few-{head}", "--image_dir", str(few), "--head", head, "--how_many_training_steps", "100"
    )
    metrics = model_json(export)["metrics"]
    assert metrics["test_accuracy"] is None and metrics["test_count"] == 0
    validation = metrics["cross_validation"]
    assert validation["method"] == "leave-one-out" and validation["folds"] == validation["images"] == 6
    assert f"leave-one-out cross-validation over 6 images = {validation['accuracy'] * 100:.1f}%" in log
    assert sum(row["support"] for row in metrics["per_class"]) == 6
    assert_png(export / "confusion_matrix.png", LABELS)
    if head == "prototype":
        assert not (export / "training_curves.png").exists()  # nothing was trained step by step
        paths = sorted(few.rglob("*.png"))
        truth = np.array([LABELS.index(p.parent.name) for p in paths])
        vectors = export_vectors(export, paths)  # the feature set the run chose
        correct = [
            np.argmax(
                fit_prototypes(vectors[np.arange(6) != i], truth[np.arange(6) != i], 3).probabilities(
                    vectors[i : i + 1]
                )
            )
            == truth[i]
            for i in range(6)
        ]
        assert validation["accuracy"] == pytest.approx(np.mean(correct))
        nearest = np.argmax(fit_prototypes(vectors, truth, 3).probabilities(vectors), axis=1)
        assert list(tflite_predictions(export, paths)) == list(nearest)


def test_fewer_training_images_keep_the_same_test_images(root: Path, digits: Path) -> None:
    _, two = retrain(
        root, "two-per-class", "--image_dir", str(digits), "--head", "prototype", "--train_images_per_class", "2"
    )
    _, tenth = retrain(root, "tenth", "--image_dir", str(digits), "--head", "prototype", "--train_fraction", "0.1")
    for export, training in ((two, 6), (tenth, 6)):
        counts = model_json(export)["counts"]
        assert counts["training_images"] == training and counts["testing_images"] == 11


def test_fine_tuning_changes_only_the_top_layers_and_the_export_has_them(root: Path, digits: Path) -> None:
    log, export = retrain(
        root, "fine-tuned", "--image_dir", str(digits), "--fine_tune_layers", "2", "--fine_tune_steps", "20",
        "--how_many_training_steps", "50", "--eval_step_interval", "10", "--validation_batch_size", "-1",
    )  # fmt: skip
    assert "Fine-tuning the top 2 backbone layers with the head for 20 steps (learning rate 0.001" in log
    tuned = weight_layers(keras.saving.load_model(export / "model.keras").layers[0])
    original = weight_layers(load_backbone(model_json(export)["backbone"].split("@", 1)[0]).model)
    changed = [
        not all(np.array_equal(a, b) for a, b in zip(t.get_weights(), o.get_weights(), strict=True))
        for t, o in zip(tuned, original, strict=True)
    ]
    assert changed[-2:] == [True, True] and not any(changed[:-2])
    info = model_json(export)
    assert info["training"]["fine_tuning_from_step"] == 50
    assert max(record["step"] for record in info["training"]["history"]) == 69
    paths, truth = test_split(digits)
    assert info["metrics"]["test_accuracy"] == pytest.approx(np.mean(tflite_predictions(export, paths) == truth))
    assert_png(export / "training_curves.png")


@pytest.fixture(scope="module")
def small_cnn_run(root: Path, digits: Path) -> tuple[str, Path]:
    return retrain(
        root, "small-cnn", "--image_dir", str(digits), "--architecture", "small_cnn",
        "--how_many_training_steps", "300", "--eval_step_interval", "100",
    )  # fmt: skip


def test_small_cnn_trains_from_scratch_without_the_cache(small_cnn_run, root: Path, digits: Path) -> None:
    log, export = small_cnn_run
    assert "no bottleneck cache" in log
    info = model_json(export)
    assert info["backbone"] == "small_cnn@scratch-32px" and info["training"]["end_to_end"] is True
    assert not list((root / "cache").glob("small_cnn*"))
    paths, truth = test_split(digits)
    served = tflite_predictions(export, paths)
    assert info["metrics"]["test_accuracy"] == pytest.approx(np.mean(served == truth))
    assert np.mean(served == truth) >= 0.8  # three digit classes are easy even from scratch


@pytest.mark.parametrize("hidden_units", [0, 10])
def test_pixels_is_regression_on_raw_pixels(root: Path, digits: Path, hidden_units: int) -> None:
    _, export = retrain(
        root, f"pixels-{hidden_units}", "--image_dir", str(digits), "--architecture", "pixels", "--image_size", "8",
        "--hidden_units", str(hidden_units), "--how_many_training_steps", "200",
    )  # fmt: skip
    full = keras.saving.load_model(export / "model.keras")
    shapes = [tuple(layer.kernel.shape) for layer in full.layers if isinstance(layer, keras.layers.Dense)]
    assert shapes == ([(192, 3)] if hidden_units == 0 else [(192, 10), (10, 3)])
    assert not weight_layers(full.layers[0])  # the pixels "backbone" has no weights
    assert model_json(export)["backbone"] == "pixels@none-8px"


@pytest.mark.parametrize("fine_tune", [0, 1])
def test_base_model_transfers_an_earlier_network(small_cnn_run, root: Path, fine_tune: int) -> None:
    other = copy_digits(root / "other", ["2", "5", "8"], per_class=25)
    _, base = small_cnn_run
    log, export = retrain(
        root, f"transfer-{fine_tune}", "--image_dir", str(other), "--base_model", str(base),
        "--fine_tune_layers", str(fine_tune), "--fine_tune_steps", "30", "--how_many_training_steps", "200",
    )  # fmt: skip
    assert "Backbone base_model@" in log and "32x32 input, 1024 features" in log
    convs = [weight_layers(keras.saving.load_model(e / "model.keras").layers[0])[:3] for e in (base, export)]
    same = [
        all(np.array_equal(a, b) for a, b in zip(x.get_weights(), y.get_weights(), strict=True))
        for x, y in zip(*convs, strict=True)
    ]
    assert same == ([True, True, True] if fine_tune == 0 else [True, True, False])
    assert model_json(export)["labels"] == ["2", "5", "8"]


def test_fine_tuning_after_a_head_that_fits_its_images_warns(small_cnn_run, root: Path, caplog) -> None:
    """Table a of docs/experiments.md: a head with ~0 training loss leaves fine-tuning no gradient."""
    other = copy_digits(root / "other", ["2", "5", "8"], per_class=25)
    _, base = small_cnn_run
    retrain(
        root, "fitted", "--image_dir", str(other), "--base_model", str(base), "--fine_tune_layers", "1",
        "--fine_tune_steps", "10", "--how_many_training_steps", "3000", "--learning_rate", "0.05",
    )  # fmt: skip
    assert any("the head already fits the training images" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--head", "prototype", "--hidden_units", "8"], "--head prototype trains nothing"),
        (["--train_fraction", "0.5", "--train_images_per_class", "2"], "either --train_fraction"),
        (["--fine_tune_layers", "99999"], "has only 98 weight layers"),
        (["--architecture", "pixels", "--fine_tune_layers", "1"], "pixels has no layers to fine-tune"),
        (["--base_model", "NOWHERE"], "is not a retrain export"),
    ],
)
def test_options_that_cannot_work_are_refused_before_any_export(root: Path, digits: Path, args, message) -> None:
    with pytest.raises(RetrainError, match=message):
        retrain(root, "refused", "--image_dir", str(digits), *args)
    assert not (root / "models" / "refused").exists()


def test_base_model_without_a_keras_model_is_refused(root: Path, digits: Path, hidden_run) -> None:
    _, export = hidden_run
    stripped = root / "stripped"
    stripped.mkdir()
    for name in ("model.json", "labels.txt"):  # a valid export but for its model.keras
        (stripped / name).write_text((export / name).read_text())
    with pytest.raises(RetrainError, match=r"has no model\.keras"):
        retrain(root, "refused", "--image_dir", str(digits), "--base_model", str(stripped))


def test_augmented_copies_are_cached_and_only_of_training_images(root: Path, digits: Path) -> None:
    flags = ["--image_dir", str(digits), "--flip_left_right", "--random_crop", "10", "--random_brightness", "20"]
    flags += ["--augmentation_copies", "3", "--how_many_training_steps", "200"]
    first, export = retrain(root, "augmented", *flags)
    again, _ = retrain(root, "augmented-again", *flags)
    assert (
        "Augmented copies (flip=1,crop=10,scale=0,brightness=20): 3 per training image, 0 from cache, 171 computed"
        in first
    )
    assert "3 per training image, 171 from cache, 0 computed" in again  # 57 training images x 3; no hold-out image
    info = model_json(export)
    assert info["training"]["augmentation"] == {
        "flip_left_right": True, "random_crop": 10, "random_scale": 0, "random_brightness": 20, "copies": 3
    }  # fmt: skip
    _, plain = retrain(root, "not-augmented", "--image_dir", str(digits), "--how_many_training_steps", "200")
    weights = [keras.saving.load_model(e / "model.keras").layers[-1].get_weights()[0] for e in (export, plain)]
    # With 19 images a class, auto may keep another backbone's features for either run: other weights too.
    assert weights[0].shape != weights[1].shape or not np.allclose(*weights)


def test_augmentation_reaches_training_through_the_backbone(root: Path, digits: Path) -> None:
    log, export = retrain(
        root, "small-cnn-augmented", "--image_dir", str(digits), "--architecture", "small_cnn", "--flip_left_right",
        "--augmentation_copies", "2", "--how_many_training_steps", "50",
    )  # fmt: skip
    assert (
        "Augmented copies (flip=1,crop=0,scale=0,brightness=0): 2 per training image, 114 decoded for training." in log
    )
    assert model_json(export)["training"]["augmentation"]["copies"] == 2
