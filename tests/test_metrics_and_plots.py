"""Per-class metrics agree with scikit-learn, and the report plots are labelled, complete, valid PNGs."""

from __future__ import annotations

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
    confusion_matrix_figure,
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
    assert macro_f1(metrics) == pytest.approx(np.mean(f1))


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
    assert lines[3].split() == ["macro", "avg", "0.625", "0.750", "0.533", "1238"]
    assert len({len(line) for line in lines}) == 1  # every column ends at the same place
    for header_word in ("Precision", "Recall", "F1", "Support"):
        end = lines[0].index(header_word) + len(header_word)
        assert all(line[end - 1] != " " and (end == len(line) or line[end] == " ") for line in lines)


def test_shorten_label_keeps_both_ends() -> None:
    assert shorten_label("short") == "short"
    assert shorten_label("a" * 24) == "a" * 24
    names = [shorten_label(f"{'n' * 30}_v{i}") for i in (1, 2)]
    assert names[0] != names[1] and all(len(name) == 24 and "…" in name for name in names)


def _tick_texts(ticks) -> list[str]:
    return [tick.get_text() for tick in ticks]


def test_confusion_matrix_figure_is_labelled_and_annotated(tmp_path: Path) -> None:
    matrix = np.arange(100).reshape(10, 10) + 2000 * np.eye(10, dtype=int)  # mostly right
    matrix[3, 7] = 0
    figure = confusion_matrix_figure(matrix, DIGITS, "Confusion matrix — test set (24950 images)")
    axes = figure.axes[0]
    assert _tick_texts(axes.get_xticklabels()) == DIGITS
    assert _tick_texts(axes.get_yticklabels()) == DIGITS
    assert axes.get_xlabel() == "Predicted label" and axes.get_ylabel() == "True label"
    assert axes.get_title() == "Confusion matrix — test set (24950 images)"
    assert len(axes.texts) == 100
    # Row 3, column 7: the cell text sits at x=column, y=row and prints the raw count.
    cells = {(round(text.get_position()[1]), round(text.get_position()[0])): text.get_text() for text in axes.texts}
    assert cells[(3, 7)] == "0" and cells[(7, 3)] == "73" and cells[(0, 9)] == "9"
    assert "share" in figure.axes[1].get_ylabel().lower()  # the colourbar says what the colour means
    # Colours are each true row's shares, in the same orientation as the counts.
    np.testing.assert_allclose(axes.images[0].get_array(), matrix / matrix.sum(axis=1, keepdims=True))
    colors = {text.get_text(): text.get_color() for text in axes.texts}
    assert colors["2099"] == "white" and colors["1"] != "white"  # readable on dark cells and on light ones

    path = tmp_path / "confusion_matrix.png"
    save_png(figure, path)
    _assert_png(path, min_width=300)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_confusion_matrix_figure_long_and_many_labels() -> None:
    labels = [f"class_{i}_with_a_long_name" for i in range(24)] + ["x" * 40 + "_end"]
    figure = confusion_matrix_figure(np.eye(25, dtype=int) * 3, labels, "many")
    axes = figure.axes[0]
    assert _tick_texts(axes.get_yticklabels()) == [*labels[:24], "x" * 15 + "…" + "x" * 10 + "_end"]
    assert axes.get_xticklabels()[0].get_rotation() == 45
    assert len(axes.texts) == 25 * 25

    many = [f"c{i}" for i in range(MAX_ANNOTATED_CLASSES + 1)]
    crowded = confusion_matrix_figure(np.ones((len(many), len(many)), dtype=int), many, "crowded")
    assert len(crowded.axes[0].texts) == 0  # too small to read: colours only
    assert _tick_texts(crowded.axes[0].get_xticklabels()) == many

    with pytest.raises(ValueError, match="does not match"):
        confusion_matrix_figure(np.eye(3), ["a", "b"], "bad")


def _curves(points: int) -> tuple[list[int], list[float], list[float]]:
    steps = list(range(0, points * 10, 10))
    accuracy = np.linspace(0.1, 0.9, points).tolist()
    cross_entropy = np.linspace(2.3, 0.3, points).tolist()
    return steps, accuracy, cross_entropy


def _legend(axes) -> list[str]:
    return _tick_texts(axes.get_legend().get_texts())


def test_training_curves_figure_panels_and_validation_gaps(tmp_path: Path) -> None:
    steps, accuracy, cross_entropy = _curves(20)
    validation = [a - 0.05 if i % 4 == 0 else None for i, a in enumerate(accuracy)]
    figure = training_curves_figure(steps, accuracy, validation, cross_entropy, [c + 0.1 for c in cross_entropy])
    accuracy_axes, loss_axes = figure.axes
    assert accuracy_axes.get_title() == "Accuracy" and loss_axes.get_title() == "Cross entropy"
    assert accuracy_axes.get_xlabel() == loss_axes.get_xlabel() == "Training step"
    assert _legend(accuracy_axes) == _legend(loss_axes) == ["train", "validation"]
    validation_line = accuracy_axes.get_lines()[1]
    assert list(validation_line.get_xdata()) == steps[::4]  # None entries skipped, not drawn as 0
    assert accuracy_axes.get_ylim() == (0.0, 1.02)
    assert accuracy_axes.yaxis.get_major_formatter()(0.5, 0) == "50%"

    path = tmp_path / "training_curves.png"
    save_png(figure, path)
    _assert_png(path, min_width=800)


def test_training_curves_figure_without_validation_and_with_phase_boundary() -> None:
    steps, accuracy, cross_entropy = _curves(200)
    figure = training_curves_figure(steps, accuracy, None, cross_entropy, [None] * 200, phase_boundary=1500)
    for axes in figure.axes:
        assert _legend(axes) == ["train", FINE_TUNING_LABEL]
        boundary = axes.get_lines()[-1]
        assert list(boundary.get_xdata()) == [1500, 1500] and boundary.get_linestyle() == "--"


def test_many_evaluations_are_smoothed_within_each_phase() -> None:
    steps = list(range(0, 2000, 10))
    accuracy = [0.5 if step < 1500 else 0.9 for step in steps]  # fine-tuning jumps at step 1500
    straight = np.linspace(2.0, 0.5, 200)
    figure = training_curves_figure(steps, accuracy, None, straight.tolist(), None, phase_boundary=1500)
    raw, smoothed = figure.axes[0].get_lines()[:2]
    assert raw.get_alpha() < 1 and list(smoothed.get_xdata()) == steps  # raw values stay visible, faint
    np.testing.assert_allclose(smoothed.get_ydata(), accuracy)  # no averaging across the phase boundary
    loss = figure.axes[1].get_lines()[1].get_ydata()
    np.testing.assert_allclose(loss[5:145], straight[5:145])  # centred: a straight line stays put, no lag
    assert "moving average" in figure.get_suptitle()


def test_save_png_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "training_curves.png"
    path.write_bytes(b"old")
    steps, accuracy, cross_entropy = _curves(5)
    save_png(training_curves_figure(steps, accuracy, None, cross_entropy, None), path)
    _assert_png(path, min_width=800)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_curves.png"]


def test_metrics_need_no_tensorflow_and_plots_no_pyplot() -> None:
    code = (
        "import sys, retrain.metrics, retrain.plots; "
        "print(sorted(m for m in ('tensorflow', 'matplotlib.pyplot') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _assert_png(path: Path, min_width: int) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > min_width and image.height > 300
