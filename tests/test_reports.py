"""Per-class metrics against scikit-learn, and the two report plots as pictures a person can read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from sklearn.metrics import precision_recall_fscore_support

from retrain import metrics, plots

DIGITS = [str(d) for d in range(10)]


def test_per_class_metrics_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    true = rng.integers(0, 5, size=200)
    predicted = np.where(rng.uniform(size=200) < 0.7, true, rng.integers(0, 5, size=200))
    predicted[predicted == 3] = 2  # class 3 is never predicted
    true[true == 4] = 0  # class 4 never occurs
    labels = ["a", "b", "c", "d", "e"]
    ours = metrics.per_class_metrics(true, predicted, labels)
    p, r, f, s = precision_recall_fscore_support(true, predicted, labels=range(5), zero_division=0)
    assert [m.label for m in ours] == labels
    for m, expected in zip(ours, zip(p, r, f, s, strict=True), strict=True):
        assert (m.precision, m.recall, m.f1, m.support) == pytest.approx(expected)
    assert metrics.macro_f1(ours) == pytest.approx(np.mean(f[s > 0]))  # over the classes present: e is not
    assert ours[3].precision == 0.0 and ours[4].support == 0


def test_confusion_matrix_rows_are_true_columns_predicted() -> None:
    matrix = metrics.confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    rng = np.random.default_rng(1)
    true, predicted = rng.integers(0, 4, size=50), rng.integers(0, 4, size=50)
    assert np.array_equal(metrics.confusion_matrix(true, predicted, 4), sklearn_confusion_matrix(true, predicted))


def test_the_printed_table_is_aligned_and_ends_with_the_macro_average() -> None:
    labels = ["daisy", "a very long label name that goes on and on", "7"]
    lines = metrics.format_per_class(metrics.per_class_metrics(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]), labels))
    assert lines[0].split() == ["Class", "Precision", "Recall", "F1", "Support"]
    assert lines[-1].startswith("macro avg") and lines[-1].endswith("(3 of 3 classes with test images)")
    assert len(lines) == 5
    assert len({len(line) for line in lines[:-1]} | {len(lines[-1].split("  (")[0])}) == 1  # columns line up
    assert lines[1].split()[1:] == ["1.000", "1.000", "1.000", "1"]


def test_confusion_matrix_figure_names_the_classes_and_counts_every_cell(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    matrix = metrics.confusion_matrix(rng.integers(0, 10, size=188), rng.integers(0, 10, size=188), 10)
    figure = plots.confusion_matrix_figure(matrix, DIGITS, "Confusion matrix, test set (188 images)")
    assert figure.labels == DIGITS
    assert (figure.x_label, figure.y_label) == ("Predicted label", "True label")
    assert figure.title == "Confusion matrix, test set (188 images)"
    printed = [figure.cell_text(row, column)[0] for row in range(10) for column in range(10)]
    assert sorted(map(int, printed)) == sorted(matrix.ravel().tolist())
    path = tmp_path / "confusion_matrix.png"
    plots.save_png(figure, path, {"Classes": json.dumps(DIGITS)})
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 400
        assert json.loads(image.text["Classes"]) == DIGITS
    assert [p.name for p in tmp_path.iterdir()] == ["confusion_matrix.png"]  # no temporary file left


def test_training_curves_show_train_and_validation_and_where_fine_tuning_starts(tmp_path: Path) -> None:
    steps = list(range(0, 600, 10))
    accuracy = [min(1.0, 0.3 + s / 500) for s in steps]
    entropy = [2.0 / (1 + s / 50) for s in steps]
    validation = [None if i % 3 else a - 0.05 for i, a in enumerate(accuracy)]
    figure = plots.training_curves_figure(steps, accuracy, validation, entropy, entropy, phase_boundary=400)
    accuracy_panel, entropy_panel = figure.panels
    assert accuracy_panel.x_label == entropy_panel.x_label == "Training step"
    assert accuracy_panel.legend == ["train", "validation", plots.FINE_TUNING_LABEL]
    validation_line = next(line for line in accuracy_panel.lines if line.label == "validation")
    assert len(validation_line.x) == len([v for v in validation if v is not None])
    plots.save_png(figure, tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.width > 600


def test_training_curves_without_validation_draw_only_training() -> None:
    figure = plots.training_curves_figure([0, 10, 20], [0.5, 0.7, 0.9], [None] * 3, [1.0, 0.6, 0.3], [None] * 3)
    for panel in figure.panels:
        assert panel.legend == ["train"]


def test_plots_that_fail_cost_a_warning_not_the_model(
    tiny_digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The plots are drawn into the finished export; when drawing fails the export stays whole."""
    import contextlib
    import io

    from retrain.pipeline import RetrainConfig, run
    from retrain.train import HParams

    def full_disk(*args, **kwargs) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "save_png", full_disk)
    config = RetrainConfig(
        image_dir=str(tiny_digits),
        output_dir=str(tmp_path / "model"),
        bottleneck_dir=str(tmp_path / "cache"),
        hparams=HParams(how_many_training_steps=20),
    )
    with contextlib.redirect_stdout(io.StringIO()):
        result = run(config)
    assert "report plots could not be drawn (OSError" in caplog.text
    assert {p.name for p in result.output_dir.iterdir()} == {"labels.txt", "model.json", "model.tflite"}


def test_cluster_summary_says_when_every_vector_came_with_the_first_batch(capsys) -> None:
    """A small set comes back in one batch: there is no rate after start-up to print (it said 0.0 images/s)."""
    from retrain import report
    from retrain.cluster import ClusterTiming

    report.cluster_extraction(ClusterTiming(images=36, seconds=3.1, start_up_seconds=3.0, first_batch=36, nodes=1))
    report.cluster_extraction(ClusterTiming(images=100, seconds=4.0, start_up_seconds=2.0, first_batch=20, nodes=2))
    one_batch, steady = capsys.readouterr().out.splitlines()
    assert one_batch == (
        "Ray: 36 images through the backbone on 1 node in 3.1s (all with the first batch, 3.0s after the start, "
        "workers included)."
    )
    assert steady == (
        "Ray: 100 images through the backbone on 2 nodes in 4.0s (40.0 images/s after 2.0s to start the workers)."
    )
