"""The two pictures written next to an export: a confusion matrix and the training curves.

They answer the questions a person asks after a run, at a glance: which classes get mistaken for
which (the confusion matrix), and did training converge, or over-fit, or stop too early (accuracy
and cross entropy by step, train against validation). They are drawn on `matplotlib.figure.Figure`
objects without pyplot, so there is no global figure state, no GUI backend, and nothing to close;
`save_png` renders with Agg. Colours are colour-blind safe (a sequential blue map, Okabe-Ito lines).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from retrain.files import replacing
from retrain.metrics import shorten_label

DPI = 110
MAX_ANNOTATED_CLASSES = 40
"""Above this many classes the cells are too small for their counts, so only colours are drawn."""
MAX_TICK_LABEL = 30
"""Longer class names are cut in the middle on the axes."""

TRAIN_COLOR = "#0072B2"  # Okabe-Ito blue
VALIDATION_COLOR = "#D55E00"  # Okabe-Ito vermillion
BOUNDARY_COLOR = "#555555"
ZERO_COLOR = "#aaaaaa"  # zero counts recede, so the mistakes stand out
FINE_TUNING_LABEL = "fine-tuning starts"
SMOOTH_FROM_POINTS = 50
"""With at least this many evaluations, curves are smoothed (raw values stay visible, faint)."""


def confusion_matrix_figure(matrix: np.ndarray, labels: list[str], title: str) -> Figure:
    """A heatmap of `matrix` (rows: true label, columns: predicted label) with the count in each cell.

    Cells are coloured by the share of the true class's images (each row sums to 100%), so a small
    class's mistakes are as visible as a big one's; the printed numbers are the raw counts.
    """
    matrix = np.asarray(matrix)
    n = len(labels)
    if matrix.shape != (n, n):
        raise ValueError(f"matrix shape {matrix.shape} does not match {n} labels")
    row_totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_totals, out=np.zeros(matrix.shape, dtype=np.float64), where=row_totals > 0)

    names = [shorten_label(label, MAX_TICK_LABEL) for label in labels]
    longest = max((len(name) for name in names), default=1)
    cell = 0.55 if n <= 15 else max(0.3, 8.5 / n) if n <= MAX_ANNOTATED_CLASSES else 0.22  # inches
    side = max(4.0, n * cell)
    label_room = 0.3 + 0.075 * longest  # inches the tick labels need
    figure = Figure(figsize=(side + label_room + 2.0, side + label_room + 1.0), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()

    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.03, format=PercentFormatter(xmax=1.0))
    colorbar.set_label("Share of the true label's images")

    tick_size = 10 if n <= 15 else 8 if n <= 30 else 7 if n <= MAX_ANNOTATED_CLASSES else 6
    axes.set_xticks(range(n), names, fontsize=tick_size)
    axes.set_yticks(range(n), names, fontsize=tick_size)
    if longest * 0.075 * tick_size / 10 > cell * 0.9:  # names wider than a column: slant them
        axes.tick_params(axis="x", labelrotation=45)
        for tick in axes.get_xticklabels():
            tick.set_horizontalalignment("right")
            tick.set_rotation_mode("anchor")
    axes.set_xlabel("Predicted label", fontsize=11)
    axes.set_ylabel("True label", fontsize=11)
    axes.set_title(title, fontsize=12, pad=10)
    # Thin white lines between cells keep neighbouring pale cells apart.
    axes.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    axes.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    axes.grid(which="minor", color="white", linewidth=1.0)
    axes.tick_params(which="minor", length=0)
    axes.tick_params(which="major", length=0)
    for spine in axes.spines.values():
        spine.set_visible(False)

    if n <= MAX_ANNOTATED_CLASSES:
        count_size = 10 if n <= 12 else 8 if n <= 25 else 6
        for row in range(n):
            for column in range(n):
                count = int(matrix[row, column])
                color = "white" if shares[row, column] > 0.5 else "#1a1a1a" if count else ZERO_COLOR
                axes.text(column, row, str(count), ha="center", va="center", color=color, fontsize=count_size)
    return figure


def training_curves_figure(
    steps: Sequence[int],
    train_accuracy: Sequence[float],
    validation_accuracy: Sequence[float | None] | None,
    train_cross_entropy: Sequence[float],
    validation_cross_entropy: Sequence[float | None] | None,
    phase_boundary: int | None = None,
) -> Figure:
    """Accuracy (left, as a percentage; values are fractions 0..1) and cross entropy (right) by step.

    Validation values that are None (steps without a validation pass) are skipped; a validation
    sequence that is None or all None draws the training line alone. `phase_boundary` is the step
    where fine-tuning began, drawn as a dashed vertical line; smoothing never averages across it.
    """
    figure = Figure(figsize=(11.0, 4.2), dpi=DPI, layout="constrained")
    accuracy_axes, loss_axes = figure.subplots(1, 2)
    panels = (
        (accuracy_axes, "Accuracy", train_accuracy, validation_accuracy),
        (loss_axes, "Cross entropy", train_cross_entropy, validation_cross_entropy),
    )
    windows = []
    for axes, name, train, validation in panels:
        windows.append(_plot_series(axes, steps, train, "train", TRAIN_COLOR, phase_boundary))
        if validation is not None:
            windows.append(_plot_series(axes, steps, validation, "validation", VALIDATION_COLOR, phase_boundary))
        if phase_boundary is not None:
            axes.axvline(phase_boundary, color=BOUNDARY_COLOR, linestyle="--", linewidth=1.2, label=FINE_TUNING_LABEL)
        axes.set_title(name, fontsize=12)
        axes.set_xlabel("Training step", fontsize=11)
        axes.set_ylabel(name, fontsize=11)
        axes.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True, steps=[1, 2, 2.5, 5, 10]))
        axes.margins(x=0.01)
        axes.grid(color="#e5e5e5", linewidth=0.8)
        axes.set_axisbelow(True)
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
        axes.legend(loc="best", frameon=True, framealpha=0.9, edgecolor="none")

    if any(window > 1 for window in windows):
        window = max(windows)
        figure.suptitle(
            f"Bold lines: centred moving average over {window} evaluations; faint lines: each evaluation",
            fontsize=9,
            color=BOUNDARY_COLOR,
        )
    accuracy_axes.set_ylim(0.0, 1.02)
    accuracy_axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    loss_axes.set_ylim(bottom=0.0)
    return figure


def save_png(figure: Figure, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write `figure` as a PNG at `path`, via a temporary file in the same folder and a rename,
    so a reader (serve's web page) never sees half a picture. `metadata` goes into PNG text chunks
    (ASCII; e.g. the class names as JSON, so a program can tell which model a picture is of)."""
    path = Path(path)
    with replacing(path) as temporary, temporary.open("wb") as file:
        figure.savefig(file, format="png", dpi=DPI, bbox_inches="tight", facecolor="white", metadata=metadata or {})


def _plot_series(
    axes, steps: Sequence[int], values: Sequence[float | None], label: str, color: str, boundary: int | None
) -> int:
    """Plot the (step, value) pairs whose value is not None (nothing when all are); returns the
    smoothing window in points (1: not smoothed).

    Per-evaluation values are noisy (train accuracy is measured on one small batch), so when there
    are many points they are drawn faintly and a centred moving average is drawn over them, one
    per training phase (before and after `boundary`), so a jump where fine-tuning starts stays a jump.
    """
    points = [(step, value) for step, value in zip(steps, values, strict=True) if value is not None]
    if not points:
        return 1
    x, y = (np.asarray(column, dtype=np.float64) for column in zip(*points, strict=True))
    if len(y) < SMOOTH_FROM_POINTS:
        axes.plot(x, y, label=label, color=color, linewidth=1.8)
        return 1
    window = 2 * (len(y) // 50) + 1
    axes.plot(x, y, color=color, linewidth=0.8, alpha=0.25)
    phases = x >= boundary if boundary is not None else np.zeros(len(x), dtype=bool)
    smoothed = np.concatenate([_moving_average(y[phases == phase], window) for phase in (False, True)])
    axes.plot(x, smoothed, label=label, color=color, linewidth=1.8)
    return window


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over `window` points (odd); near the ends, over the points there are, so no lag."""
    if not len(values):
        return values
    half = window // 2
    sums = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    low = np.maximum(index - half, 0)
    high = np.minimum(index + half + 1, len(values))
    return (sums[high] - sums[low]) / (high - low)
