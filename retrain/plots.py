"""The two pictures written next to an export: a confusion matrix and the training curves.

They answer the questions a person asks after a run, at a glance: which classes get mistaken for
which (the confusion matrix), and did training converge, or over-fit, or stop too early (accuracy
and cross entropy by step, train against validation). Each figure is first laid out as plain data
(titles, axis labels, ticks, lines, cells), which the tests read, then drawn with Pillow, which
retrain already loads to decode images: both pictures take milliseconds, where matplotlib's import
alone was an eighth of a warm rerun (docs/decisions.md #34). Shapes and text are drawn at twice
the size and halved, which smooths their edges. Colours are colour-blind safe (a sequential blue
map, Okabe-Ito lines).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from retrain.files import replacing
from retrain.metrics import shorten_label

MAX_ANNOTATED_CLASSES = 40
"""Above this many classes the cells are too small for their counts, so only colours are drawn."""
MAX_TICK_LABEL = 30
"""Longer class names are cut in the middle on the axes."""
MAX_MATRIX_SIDE = 2400
"""Pixels; with many classes the cells shrink so the picture stays a picture, not a poster."""
MAX_DRAWN_CELLS = 100
"""Classes up to which cells are drawn one by one with gaps; above, as one block of pixels."""

TRAIN_COLOR = "#0072B2"  # Okabe-Ito blue
VALIDATION_COLOR = "#D55E00"  # Okabe-Ito vermillion
BOUNDARY_COLOR = "#555555"
ZERO_COLOR = "#aaaaaa"  # zero counts recede, so the mistakes stand out
TEXT_COLOR = "#1a1a1a"
AXIS_COLOR = "#333333"
GRID_COLOR = "#e5e5e5"
BLUES = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b")
"""ColorBrewer's sequential blues, light to dark: a cell's colour is its share along this ramp."""
FINE_TUNING_LABEL = "fine-tuning starts"
SMOOTH_FROM_POINTS = 50
"""With at least this many evaluations, curves are smoothed (raw values stay visible, faint)."""
SUPERSAMPLE = 2
CURVES_SIZE = (1200, 460)  # pixels


@dataclass
class Line:
    """A polyline in data coordinates; `label` puts it in the legend."""

    x: np.ndarray
    y: np.ndarray
    color: str
    label: str | None = None
    width: float = 1.8  # pixels
    opacity: float = 1.0
    dashed: bool = False


@dataclass
class Panel:
    """One chart of the training curves: what it shows and on which ranges."""

    title: str
    x_label: str
    y_label: str
    lines: list[Line]
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    percent: bool = False  # y values are fractions, labelled as percentages

    @property
    def legend(self) -> list[str]:
        return [line.label for line in self.lines if line.label]

    def x_ticks(self) -> list[tuple[float, str]]:
        return [(value, _number(value)) for value in nice_ticks(*self.x_range, most=8, integer=True)]

    def y_ticks(self) -> list[tuple[float, str]]:
        values = nice_ticks(*self.y_range, most=6)
        return [(value, f"{value * 100:.0f}%" if self.percent else _number(value)) for value in values]


@dataclass
class CurvesFigure:
    """Accuracy and cross entropy side by side, with a note on smoothing when there is any."""

    panels: list[Panel]
    note: str

    def render(self) -> Image.Image:
        width, height = CURVES_SIZE
        canvas = _Canvas(width, height)
        top = 24 if self.note else 6
        if self.note:
            canvas.text((width / 2, 12), self.note, 11, BOUNDARY_COLOR)
        for index, panel in enumerate(self.panels):
            left = index * width / len(self.panels)
            _draw_panel(canvas, panel, (left, top, left + width / len(self.panels), height))
        return canvas.finish()


@dataclass
class ConfusionFigure:
    """Counts by (true label, predicted label), coloured by each true label's shares."""

    title: str
    labels: list[str]  # as written on the axes
    counts: np.ndarray
    shares: np.ndarray
    x_label: str = "Predicted label"
    y_label: str = "True label"
    colorbar_label: str = "Share of the true label's images"

    @property
    def annotated(self) -> bool:
        return len(self.labels) <= MAX_ANNOTATED_CLASSES

    @property
    def cell(self) -> int:
        """A cell's side in pixels."""
        n = len(self.labels)
        if n <= 15:
            return 60
        if n <= MAX_ANNOTATED_CLASSES:
            return max(33, 935 // n)
        return max(1, min(24, MAX_MATRIX_SIDE // n))

    @property
    def tick_size(self) -> int:
        n = len(self.labels)
        return 13 if n <= 15 else 11 if n <= 30 else 10 if n <= MAX_ANNOTATED_CLASSES else 8

    @property
    def slanted(self) -> bool:
        """Names wider than a column are written at 45 degrees."""
        return max(_text_width(name, self.tick_size) for name in self.labels) > 0.9 * self.cell

    def cell_text(self, row: int, column: int) -> tuple[str, str] | None:
        """The count printed in a cell and its colour (readable on dark and light cells), if printed."""
        if not self.annotated:
            return None
        count = int(self.counts[row, column])
        color = "white" if self.shares[row, column] > 0.5 else TEXT_COLOR if count else ZERO_COLOR
        return str(count), color

    def render(self) -> Image.Image:
        n, cell, tick = len(self.labels), self.cell, self.tick_size
        widest = max(_text_width(name, tick) for name in self.labels) if cell >= 8 else 0.0
        under = widest * 0.72 + tick if self.slanted else tick * 1.6
        left = 30 + widest + 10
        top = 44
        side = n * cell
        bar_left = left + side + 24
        width = int(bar_left + 18 + 8 + _text_width("100%", 11) + 34)
        height = int(top + side + under + 36)
        canvas = _Canvas(width, max(height, 200))
        canvas.text((left + side / 2, 22), self.title, 15, TEXT_COLOR)
        count_size = 13 if n <= 12 else 11 if n <= 25 else 8
        if n > MAX_DRAWN_CELLS:  # one pixel block per cell, no gaps: as fast for a thousand classes
            canvas.paste_cells(self.shares, (left, top), cell)
        for row in range(n if n <= MAX_DRAWN_CELLS else 0):
            for column in range(n):
                x, y = left + column * cell, top + row * cell
                # Thin white lines between cells keep neighbouring pale cells apart.
                canvas.rectangle((x, y, x + cell - 1, y + cell - 1), _blues(self.shares[row, column]))
                text = self.cell_text(row, column)
                if text:
                    canvas.text((x + cell / 2, y + cell / 2), text[0], count_size, text[1])
        if cell >= 8:
            for index, name in enumerate(self.labels):
                middle = index * cell + cell / 2
                canvas.text((left - 8, top + middle), name, tick, TEXT_COLOR, anchor="rm")
                if self.slanted:
                    canvas.text((left + middle + tick * 0.35, top + side + 6), name, tick, TEXT_COLOR, angle=45)
                else:
                    canvas.text((left + middle, top + side + 6), name, tick, TEXT_COLOR, anchor="mt")
        canvas.text((left + side / 2, top + side + under + 16), self.x_label, 14, TEXT_COLOR)
        canvas.text((12, top + side / 2), self.y_label, 14, TEXT_COLOR, angle=90)
        _draw_colorbar(canvas, (bar_left, top, bar_left + 18, top + side), self.colorbar_label)
        return canvas.finish()


def confusion_matrix_figure(matrix: np.ndarray, labels: list[str], title: str) -> ConfusionFigure:
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
    return ConfusionFigure(title, names, matrix, shares)


def training_curves_figure(
    steps: Sequence[int],
    train_accuracy: Sequence[float],
    validation_accuracy: Sequence[float | None] | None,
    train_cross_entropy: Sequence[float],
    validation_cross_entropy: Sequence[float | None] | None,
    phase_boundary: int | None = None,
) -> CurvesFigure:
    """Accuracy (left, as a percentage; values are fractions 0..1) and cross entropy (right) by step.

    Validation values that are None (steps without a validation pass) are skipped; a validation
    sequence that is None or all None draws the training line alone. `phase_boundary` is the step
    where fine-tuning began, drawn as a dashed vertical line; smoothing never averages across it.
    """
    panels, windows = [], []
    for name, train, validation in (
        ("Accuracy", train_accuracy, validation_accuracy),
        ("Cross entropy", train_cross_entropy, validation_cross_entropy),
    ):
        lines: list[Line] = []
        windows.append(_add_series(lines, steps, train, "train", TRAIN_COLOR, phase_boundary))
        if validation is not None:
            windows.append(_add_series(lines, steps, validation, "validation", VALIDATION_COLOR, phase_boundary))
        xs = [float(step) for step in steps] + ([float(phase_boundary)] if phase_boundary is not None else [])
        low, high = (min(xs), max(xs)) if xs else (0.0, 1.0)
        x_range = (low - 0.01 * (high - low), high + 0.01 * (high - low)) if high > low else (low - 1, low + 1)
        if name == "Accuracy":
            y_range = (0.0, 1.02)
        else:
            top = max((float(value) for line in lines for value in line.y), default=1.0)
            y_range = (0.0, top * 1.05 if top > 0 else 1.0)
        if phase_boundary is not None:
            lines.append(
                Line(
                    np.array([phase_boundary] * 2, float),
                    np.array(y_range),
                    BOUNDARY_COLOR,
                    FINE_TUNING_LABEL,
                    1.2,
                    1.0,
                    True,
                )
            )
        panels.append(Panel(name, "Training step", name, lines, x_range, y_range, percent=name == "Accuracy"))
    window = max(windows, default=1)
    note = f"Bold lines: centred moving average over {window} evaluations; faint lines: each evaluation"
    return CurvesFigure(panels, note if window > 1 else "")


def save_png(figure: CurvesFigure | ConfusionFigure, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Draw `figure` and write it as a PNG at `path`, via a temporary file in the same folder and a
    rename, so a reader (serve's web page) never sees half a picture. `metadata` goes into PNG text
    chunks (e.g. the class names as JSON, so a program can tell which model a picture is of)."""
    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, value)
    image = figure.render()
    with replacing(Path(path)) as temporary, temporary.open("wb") as file:
        image.save(file, format="PNG", pnginfo=info)


def nice_ticks(low: float, high: float, most: int, integer: bool = False) -> np.ndarray:
    """Round values between `low` and `high`, spaced 1, 2, 2.5 or 5 x 10^k: the finest spacing that
    puts at most `most` + 1 of them in the range (`integer`: whole numbers only)."""
    if not high > low:
        return np.array([low])
    magnitude = 10.0 ** math.floor(math.log10((high - low) / most))
    for step in (m * magnitude * scale for scale in (1, 10) for m in (1, 2, 2.5, 5)):
        if integer and (step < 1 or step != round(step)):
            continue
        first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
        if last - first <= most:
            return np.round(np.arange(first, last + 1) * step, 10)
    return np.array([low, high])


def _add_series(
    lines: list[Line],
    steps: Sequence[int],
    values: Sequence[float | None],
    label: str,
    color: str,
    boundary: int | None,
) -> int:
    """Add the (step, value) pairs whose value is not None (nothing when all are); returns the
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
        lines.append(Line(x, y, color, label))
        return 1
    window = 2 * (len(y) // 50) + 1
    lines.append(Line(x, y, color, width=0.8, opacity=0.25))
    phases = x >= boundary if boundary is not None else np.zeros(len(x), dtype=bool)
    smoothed = np.concatenate([_moving_average(y[phases == phase], window) for phase in (False, True)])
    lines.append(Line(x, smoothed, color, label))
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


def _number(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.0f}"


def _draw_panel(canvas: _Canvas, panel: Panel, box: tuple[float, float, float, float]) -> None:
    """Title, grid, axes, ticks, lines and legend of one chart inside `box` (left, top, right, bottom)."""
    y_ticks, x_ticks = panel.y_ticks(), panel.x_ticks()
    widest = max(_text_width(text, 11) for _, text in y_ticks)
    left, top = box[0] + 34 + widest, box[1] + 32
    right, bottom = box[2] - 18, box[3] - 48
    (x0, x1), (y0, y1) = panel.x_range, panel.y_range

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    canvas.text(((left + right) / 2, box[1] + 14), panel.title, 15, TEXT_COLOR)
    for value, text in y_ticks:
        _, y = at(x0, value)
        canvas.line([(left, y), (right, y)], GRID_COLOR, 1.0)
        canvas.text((left - 6, y), text, 11, TEXT_COLOR, anchor="rm")
    for value, text in x_ticks:
        x, _ = at(value, y0)
        canvas.line([(x, top), (x, bottom)], GRID_COLOR, 1.0)
        canvas.text((x, bottom + 5), text, 11, TEXT_COLOR, anchor="mt")
    canvas.line([(left, top), (left, bottom), (right, bottom)], AXIS_COLOR, 1.0)
    canvas.text(((left + right) / 2, bottom + 32), panel.x_label, 13, TEXT_COLOR)
    canvas.text((box[0] + 12, (top + bottom) / 2), panel.y_label, 13, TEXT_COLOR, angle=90)
    for line in panel.lines:
        points = [at(x, min(max(y, y0), y1)) for x, y in zip(line.x, line.y, strict=True)]
        canvas.line(points, _faded(line.color, line.opacity), line.width, line.dashed)
    _draw_legend(canvas, panel, (left, top, right, bottom), at)


def _draw_legend(canvas: _Canvas, panel: Panel, plot: tuple[float, float, float, float], at) -> None:
    """The legend in the corner of the plot that covers the fewest data points."""
    entries = [line for line in panel.lines if line.label]
    if not entries:
        return
    width = 44 + max(_text_width(line.label, 12) for line in entries)
    height = 8 + 20 * len(entries)
    left, top, right, bottom = plot
    corners = [(right - width - 8, top + 8), (right - width - 8, bottom - height - 8), (left + 8, top + 8)]
    corners.append((left + 8, bottom - height - 8))
    points = np.array([at(x, y) for line in panel.lines for x, y in zip(line.x, line.y, strict=True)]).reshape(-1, 2)

    def covered(corner: tuple[float, float]) -> int:
        x, y = corner
        inside = (points[:, 0] >= x) & (points[:, 0] <= x + width) & (points[:, 1] >= y) & (points[:, 1] <= y + height)
        return int(inside.sum())

    x, y = min(corners, key=covered)
    canvas.rectangle((x, y, x + width, y + height), "white", outline="#dddddd")
    for index, line in enumerate(entries):
        middle = y + 14 + 20 * index
        canvas.line([(x + 8, middle), (x + 30, middle)], line.color, line.width, line.dashed)
        canvas.text((x + 36, middle), line.label, 12, TEXT_COLOR, anchor="lm")


def _draw_colorbar(canvas: _Canvas, box: tuple[float, float, float, float], label: str) -> None:
    """A vertical ramp of the cell colours from 0% (bottom) to 100% (top), with ticks."""
    left, top, right, bottom = box
    steps = max(2, int(bottom - top))
    for index in range(steps):
        share = 1.0 - index / (steps - 1)
        y = top + index * (bottom - top) / steps
        canvas.rectangle((left, y, right, y + (bottom - top) / steps + 0.5), _blues(share))
    for value in nice_ticks(0.0, 1.0, most=5):
        y = bottom - value * (bottom - top)
        canvas.line([(right, y), (right + 4, y)], AXIS_COLOR, 1.0)
        canvas.text((right + 7, y), f"{value * 100:.0f}%", 11, TEXT_COLOR, anchor="lm")
    canvas.text((right + 16 + _text_width("100%", 11), (top + bottom) / 2), label, 12, TEXT_COLOR, angle=90)


def _blues(share: float) -> str:
    """The colour of a share (0..1) on the BLUES ramp, interpolated linearly."""
    position = min(max(float(share), 0.0), 1.0) * (len(BLUES) - 1)
    low = min(int(position), len(BLUES) - 2)
    fraction = position - low
    start, end = _rgb(BLUES[low]), _rgb(BLUES[low + 1])
    return "#" + "".join(f"{round(a + (b - a) * fraction):02x}" for a, b in zip(start, end, strict=True))


def _faded(color: str, opacity: float) -> str:
    """`color` at `opacity` over white (lines are drawn on a white background)."""
    return "#" + "".join(f"{round(255 - (255 - c) * opacity):02x}" for c in _rgb(color))


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


@cache
def _font(size: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font (Aileron) at `size` pixels; its bitmap font if Pillow lacks FreeType."""
    return ImageFont.load_default(size=size)


def _text_width(text: str, size: int) -> float:
    return _font(size * SUPERSAMPLE).getlength(text) / SUPERSAMPLE


class _Canvas:
    """A white picture drawn at SUPERSAMPLE times its size; positions and sizes are in final pixels."""

    def __init__(self, width: int, height: int):
        self.size = (int(width), int(height))
        self.image = Image.new("RGB", (self.size[0] * SUPERSAMPLE, self.size[1] * SUPERSAMPLE), "white")
        self.draw = ImageDraw.Draw(self.image)

    def line(self, points: Sequence[tuple[float, float]], color: str, width: float, dashed: bool = False) -> None:
        scaled = [(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in points]
        pixels = max(1, round(width * SUPERSAMPLE))
        if not dashed:
            self.draw.line(scaled, fill=color, width=pixels, joint="curve")
            return
        dash = 6.0 * SUPERSAMPLE
        for (ax, ay), (bx, by) in itertools.pairwise(scaled):
            length = math.hypot(bx - ax, by - ay)
            for start in np.arange(0.0, length, 2 * dash):
                end = min(start + dash, length)
                t0, t1 = start / length, end / length
                segment = [(ax + (bx - ax) * t0, ay + (by - ay) * t0), (ax + (bx - ax) * t1, ay + (by - ay) * t1)]
                self.draw.line(segment, fill=color, width=pixels)

    def rectangle(self, box: tuple[float, float, float, float], fill: str, outline: str | None = None) -> None:
        self.draw.rectangle([value * SUPERSAMPLE for value in box], fill=fill, outline=outline, width=SUPERSAMPLE)

    def text(
        self, xy: tuple[float, float], text: str, size: int, color: str, anchor: str = "mm", angle: float = 0
    ) -> None:
        """Text at `xy`; rotated text (counter-clockwise) is centred on `xy` when vertical, and ends
        at `xy` when slanted, as tick labels under a column do."""
        font = _font(size * SUPERSAMPLE)
        x, y = xy[0] * SUPERSAMPLE, xy[1] * SUPERSAMPLE
        if not angle:
            self.draw.text((x, y), text, fill=color, font=font, anchor=anchor)
            return
        _, _, right, bottom = font.getbbox(text, anchor="lt")
        mask = Image.new("L", (int(right) + 2, int(bottom) + 2), 0)
        ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font, anchor="lt")
        mask = mask.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
        if angle == 90:
            corner = (round(x - mask.width / 2), round(y - mask.height / 2))
        else:  # the text's end at the top right, at xy
            corner = (round(x - mask.width), round(y))
        self.image.paste(Image.new("RGB", mask.size, color), corner, mask)

    def paste_cells(self, shares: np.ndarray, corner: tuple[float, float], cell: int) -> None:
        """The matrix of `shares` as blocks of `cell` pixels, coloured on the BLUES ramp."""
        ramp = np.array([_rgb(_blues(level / 255)) for level in range(256)], dtype=np.uint8)
        colours = Image.fromarray(ramp[np.rint(np.clip(shares, 0, 1) * 255).astype(np.intp)])
        side = shares.shape[0] * cell * SUPERSAMPLE
        position = (round(corner[0] * SUPERSAMPLE), round(corner[1] * SUPERSAMPLE))
        self.image.paste(colours.resize((side, side), Image.Resampling.NEAREST), position)

    def finish(self) -> Image.Image:
        return self.image.reduce(SUPERSAMPLE)
