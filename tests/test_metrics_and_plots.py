"""Per-class metrics agree with scikit-learn, and the report plots are labelled, complete, valid PNGs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support

from retrain.metrics import (
    ClassMetrics,
    confusion_matrix,
    format_per_class,
    macro_f1,
    per_class_metrics,
    shorten_label,
    to_json,
)
from retrain.plots import (
    FINE_TUNING_LABEL,
    MAX_ANNOTATED_CLASSES,
    MAX_MATRIX_SIDE,
    TRAIN_COLOR,
    VALIDATION_COLOR,
    ZERO_COLOR,
    confusion_matrix_figure,
    nice_ticks,
    save_png,
    training_curves_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DIGITS = [str(d) for d in range(10)]


def test_confusion_matrix_rows_are_true_columns_are_predicted() -> None:
    true = np.array([0, 0, 0, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 0, 2])
    matrix = confusion_matrix(true, predicted, 3)
    expected = [
        [1, 2, 0],  # two 0s taken for 1s
        [0, 1, 0],
        [1, 0, 1],  # one 2 taken for a 0
    ]
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.dtype == np.int64
    assert matrix.sum() == 6 and matrix.sum(axis=1).tolist() == [3, 1, 2]  # row sums = true counts
    assert matrix.sum(axis=0).tolist() == [2, 3, 1]  # column sums = predicted counts


def test_confusion_matrix_rejects_out_of_range_and_mismatched_input() -> None:
    with pytest.raises(ValueError, match="in \\[0, 3\\)"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)
    np.testing.assert_array_equal(confusion_matrix(np.array([]), np.array([]), 2), np.zeros((2, 2)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = ["cat", "dog", "never_predicted", "never_present", "fox"]
    true = rng.choice([0, 1, 2, 4], size=200)  # class 3 never occurs in the truth
    predicted = np.where(rng.random(200) < 0.6, true, rng.choice([0, 1, 3, 4], size=200))
    predicted[predicted == 2] = 0  # class 2 is never predicted
    assert 2 not in predicted and 3 in predicted and 3 not in true

    metrics = per_class_metrics(true, predicted, labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=range(len(labels)), zero_division=0
    )
    assert [m.label for m in metrics] == labels
    np.testing.assert_allclose([m.precision for m in metrics], precision)
    np.testing.assert_allclose([m.recall for m in metrics], recall)
    np.testing.assert_allclose([m.f1 for m in metrics], f1)
    assert [m.support for m in metrics] == support.tolist()
    assert metrics[2].precision == 0.0 and metrics[3].recall == 0.0 and metrics[3].support == 0
    assert macro_f1(metrics) == pytest.approx(np.mean(f1[support > 0]))  # never_present is not averaged


def test_to_json_rounds_and_keeps_plain_types() -> None:
    rows = to_json([ClassMetrics("a", 2 / 3, 1.0, 0.8, 3)])
    assert rows == [{"label": "a", "precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 3}]
    assert all(type(value) in (str, float, int) for value in rows[0].values())


def test_format_per_class_is_an_aligned_table() -> None:
    long_label = "great_white_shark_photographed_underwater"
    metrics = [
        ClassMetrics("cat", 1.0, 0.5, 2 / 3, 4),
        ClassMetrics(long_label, 0.25, 1.0, 0.4, 1234),
    ]
    lines = format_per_class(metrics)
    assert len(lines) == 4
    assert lines[0].split() == ["Class", "Precision", "Recall", "F1", "Support"]
    assert lines[1].split() == ["cat", "1.000", "0.500", "0.667", "4"]
    assert lines[2].startswith("great_white_…_underwater ") and long_label not in lines[2]
    table = [*lines[:3], lines[3][: len(lines[0])]]  # the macro row goes on to say what it averages
    assert table[3].split() == ["macro", "avg", "0.625", "0.750", "0.533", "1238"]
    assert lines[3][len(lines[0]) :] == "  (2 of 2 classes with test images)"
    assert len({len(line) for line in table}) == 1  # every column ends at the same place
    for header_word in ("Precision", "Recall", "F1", "Support"):
        end = lines[0].index(header_word) + len(header_word)
        assert all(line[end - 1] != " " and (end == len(line) or line[end] == " ") for line in lines)


def test_shorten_label_keeps_both_ends() -> None:
    assert shorten_label("short") == "short"
    assert shorten_label("a" * 24) == "a" * 24
    names = [shorten_label(f"{'n' * 30}_v{i}") for i in (1, 2)]
    assert names[0] != names[1] and all(len(name) == 24 and "…" in name for name in names)


def test_confusion_matrix_figure_is_labelled_and_annotated(tmp_path: Path) -> None:
    matrix = np.arange(100).reshape(10, 10) + 2000 * np.eye(10, dtype=int)  # mostly right
    matrix[3, 7] = 0
    figure = confusion_matrix_figure(matrix, DIGITS, "Confusion matrix — test set (24950 images)")
    assert figure.labels == DIGITS and not figure.slanted
    assert figure.x_label == "Predicted label" and figure.y_label == "True label"
    assert figure.title == "Confusion matrix — test set (24950 images)"
    cells = {(row, column): figure.cell_text(row, column) for row in range(10) for column in range(10)}
    assert all(text is not None for text in cells.values())
    # Row 3, column 7: rows are true labels, columns predicted ones, and the cell prints the raw count.
    assert cells[(3, 7)][0] == "0" and cells[(7, 3)][0] == "73" and cells[(0, 9)][0] == "9"
    assert "share" in figure.colorbar_label.lower()  # the colourbar says what the colour means
    # Colours are each true row's shares, in the same orientation as the counts.
    np.testing.assert_allclose(figure.shares, matrix / matrix.sum(axis=1, keepdims=True))
    colors = {text: color for text, color in cells.values()}
    assert colors["2099"] == "white" and colors["1"] != "white"  # readable on dark cells and on light ones
    assert colors["0"] == ZERO_COLOR  # zero counts recede

    path = tmp_path / "confusion_matrix.png"
    save_png(figure, path, {"Classes": json.dumps(DIGITS)})
    _assert_png(path, min_width=300)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    with Image.open(path) as image:
        assert json.loads(image.text["Classes"]) == DIGITS
        pixels = np.asarray(image.convert("RGB"), dtype=int)
    # The darkest pixels are the diagonal's cells (shares near 100%), the palest the empty ones.
    assert pixels.sum(axis=2).min() < 3 * 80 and (pixels == 255).all(axis=2).mean() > 0.2


def test_confusion_matrix_figure_long_and_many_labels(tmp_path: Path) -> None:
    labels = [f"class_{i}_with_a_long_name" for i in range(24)] + ["x" * 40 + "_end"]
    figure = confusion_matrix_figure(np.eye(25, dtype=int) * 3, labels, "many")
    assert figure.labels == [*labels[:24], "x" * 15 + "…" + "x" * 10 + "_end"]
    assert figure.slanted  # names wider than a column are written at 45 degrees
    assert all(figure.cell_text(row, column) for row in range(25) for column in range(25))
    save_png(figure, tmp_path / "many.png")
    _assert_png(tmp_path / "many.png", min_width=800)

    many = [f"c{i}" for i in range(MAX_ANNOTATED_CLASSES + 1)]
    crowded = confusion_matrix_figure(np.ones((len(many), len(many)), dtype=int), many, "crowded")
    assert crowded.cell_text(0, 0) is None  # too small to read: colours only
    assert crowded.labels == many

    thousand = confusion_matrix_figure(np.eye(1000, dtype=int), [f"c{i}" for i in range(1000)], "a thousand")
    save_png(thousand, tmp_path / "thousand.png")
    with Image.open(tmp_path / "thousand.png") as image:
        assert max(image.size) < 3 * MAX_MATRIX_SIDE  # a picture, not a poster

    with pytest.raises(ValueError, match="does not match"):
        confusion_matrix_figure(np.eye(3), ["a", "b"], "bad")


def _curves(points: int) -> tuple[list[int], list[float], list[float]]:
    steps = list(range(0, points * 10, 10))
    accuracy = np.linspace(0.1, 0.9, points).tolist()
    cross_entropy = np.linspace(2.3, 0.3, points).tolist()
    return steps, accuracy, cross_entropy


def test_training_curves_figure_panels_and_validation_gaps(tmp_path: Path) -> None:
    steps, accuracy, cross_entropy = _curves(20)
    validation = [a - 0.05 if i % 4 == 0 else None for i, a in enumerate(accuracy)]
    figure = training_curves_figure(steps, accuracy, validation, cross_entropy, [c + 0.1 for c in cross_entropy])
    accuracy_panel, loss_panel = figure.panels
    assert accuracy_panel.title == "Accuracy" and loss_panel.title == "Cross entropy"
    assert accuracy_panel.x_label == loss_panel.x_label == "Training step"
    assert accuracy_panel.legend == loss_panel.legend == ["train", "validation"]
    validation_line = accuracy_panel.lines[1]
    assert list(validation_line.x) == steps[::4]  # None entries skipped, not drawn as 0
    assert accuracy_panel.y_range == (0.0, 1.02)
    assert dict(accuracy_panel.y_ticks())[0.6] == "60%"
    assert loss_panel.y_range[0] == 0.0 and loss_panel.y_range[1] >= 2.4  # every value in view
    assert [text for _, text in accuracy_panel.x_ticks()] == ["0", "25", "50", "75", "100", "125", "150", "175"]
    assert figure.note == ""  # 20 evaluations: drawn as they are, nothing smoothed

    path = tmp_path / "training_curves.png"
    save_png(figure, path)
    _assert_png(path, min_width=800)
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=int)
    # Both colours are on the picture: the train line (blue) and the validation line (vermillion).
    for color in (TRAIN_COLOR, VALIDATION_COLOR):
        target = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels - target).sum(axis=2) < 30).sum() > 200


def test_training_curves_figure_without_validation_and_with_phase_boundary() -> None:
    steps, accuracy, cross_entropy = _curves(200)
    figure = training_curves_figure(steps, accuracy, None, cross_entropy, [None] * 200, phase_boundary=1500)
    for panel in figure.panels:
        assert panel.legend == ["train", FINE_TUNING_LABEL]
        boundary = panel.lines[-1]
        assert list(boundary.x) == [1500, 1500] and boundary.dashed
    figure.render()


def test_many_evaluations_are_smoothed_within_each_phase() -> None:
    steps = list(range(0, 2000, 10))
    accuracy = [0.5 if step < 1500 else 0.9 for step in steps]  # fine-tuning jumps at step 1500
    straight = np.linspace(2.0, 0.5, 200)
    figure = training_curves_figure(steps, accuracy, None, straight.tolist(), None, phase_boundary=1500)
    raw, smoothed = figure.panels[0].lines[:2]
    assert raw.opacity < 1 and raw.label is None and list(smoothed.x) == steps  # raw values stay visible, faint
    np.testing.assert_allclose(smoothed.y, accuracy)  # no averaging across the phase boundary
    loss = figure.panels[1].lines[1].y
    np.testing.assert_allclose(loss[5:145], straight[5:145])  # centred: a straight line stays put, no lag
    assert "moving average over 9 evaluations" in figure.note


def test_ticks_are_round_numbers() -> None:
    assert list(nice_ticks(0.0, 1.02, most=6)) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert list(nice_ticks(-39.99, 4038.99, most=8, integer=True)) == [0, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000]
    assert list(nice_ticks(0.0, 0.021, most=6)) == [0.0, 0.005, 0.01, 0.015, 0.02]
    assert list(nice_ticks(0.0, 3.0, most=8, integer=True)) == [0, 1, 2, 3]  # no half steps
    assert list(nice_ticks(0.0, 12.0, most=4, integer=True)) == [0, 5, 10]  # 2.5 is no whole number


def test_save_png_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "training_curves.png"
    path.write_bytes(b"old")
    steps, accuracy, cross_entropy = _curves(5)
    save_png(training_curves_figure(steps, accuracy, None, cross_entropy, None), path)
    _assert_png(path, min_width=800)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_curves.png"]


def test_metrics_and_plots_need_no_tensorflow_and_no_matplotlib() -> None:
    code = (
        "import sys, retrain.metrics, retrain.plots; "
        "print(sorted(m for m in ('tensorflow', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _assert_png(path: Path, min_width: int) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > min_width and image.height > 300
