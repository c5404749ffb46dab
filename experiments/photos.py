"""Photo-like labelled image folders, made deterministically from a seed, for experiment d and its test.

Two kinds, both written as JPEGs of photo sizes (240 to 500 pixels a side, quality 85), one
sub-folder per class as `retrain --image_dir` reads them:

`write_patterns`: six kinds of patterned object (stripes, checks, dots, rings, bricks, waves) on
cluttered backgrounds. The class is the object's pattern; its colours, size, position, rotation,
outline and pattern scale are random, other shapes stand in front of it, and every picture has
its own smooth colour field, texture, lighting, blur and sensor noise. Half of the pictures also
show a faint patch of another class's pattern in the background, so a pattern seen somewhere in
the picture does not by itself give the class away.

`write_real_crops`: crops of the two real photographs scikit-learn ships (its
`sklearn/datasets/images/china.jpg`, a pagoda over a lake, and `flower.jpg`, a dahlia), read from
the installed package: each class is a region (the pagoda's roofs, its balconies, the trees, the
lake, the sky, the dahlia's heart, its rim, the leaves behind it), each picture a random close-up
of it (size, position, a small rotation, a mirror image), colour-jittered (one in five grey),
resized to a photo size, with noise. Classes that look alike (roofs and balconies, sky and lake,
trees and leaves, the dahlia's heart and rim) keep it from being trivial.

A picture's randomness comes from `numpy.random.default_rng([seed, kind, class, index])` alone, so
a folder is the same, byte for byte, however often and in whichever order it is written (with the
same Pillow and libjpeg).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

QUALITY = 85
SIZES = ((320, 240), (400, 300), (480, 360), (500, 375), (240, 320), (300, 400), (375, 500))
"""Width x height: landscape and portrait, as cameras and phones take them."""

Pattern = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def _square(wave: np.ndarray, sharpness: float = 6.0) -> np.ndarray:
    """A square wave with soft edges (no aliasing) from a sine: values in [0, 1]."""
    return np.clip(0.5 + sharpness * wave, 0.0, 1.0)


def _stripes(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    return _square(np.sin(2 * np.pi * u / period))


def _checks(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    return _square(np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period), 10.0)


def _dots(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    row = np.floor(v / period)
    du = np.mod(u + 0.5 * period * np.mod(row, 2), period) - period / 2  # every other row shifted: a hex-like lattice
    dv = np.mod(v, period) - period / 2
    distance = np.sqrt(du**2 + dv**2) / period
    return np.clip((0.3 - distance) * 12 + 0.5, 0.0, 1.0)


def _rings(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    return _square(np.sin(2 * np.pi * np.sqrt(u**2 + v**2) / period))


def _bricks(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    height = period / 2
    row = np.floor(v / height)
    across = np.mod(u + 0.5 * period * np.mod(row, 2), period)
    mortar = np.minimum(np.mod(v, height), height - np.mod(v, height)) < 0.1 * height
    mortar |= np.minimum(across, period - across) < 0.06 * period
    return np.where(mortar, 0.0, 1.0)


def _waves(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    return _square(np.sin(2 * np.pi * (u + 0.6 * period * np.sin(2 * np.pi * v / (2.5 * period))) / period))


PATTERNS: dict[str, Pattern] = {
    "stripes": _stripes,
    "checks": _checks,
    "dots": _dots,
    "rings": _rings,
    "bricks": _bricks,
    "waves": _waves,
}
PATTERN_CLASSES = tuple(PATTERNS)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _two_colours(rng: np.random.Generator, least: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours at least `least` apart (Euclidean, 0-255 RGB), so a pattern is visible."""
    first = _colour(rng)
    while True:
        second = _colour(rng)
        if np.linalg.norm(first - second) >= least:
            return first, second


def _field(rng: np.random.Generator, width: int, height: int, cells: tuple[int, int], channels: int) -> np.ndarray:
    """Random values on a coarse grid, smoothly upsampled to (height, width, channels): values in [0, 1]."""
    grid = rng.uniform(0, 1, size=(cells[0], cells[1], channels)).astype(np.float32)
    planes = [
        np.asarray(Image.fromarray(grid[:, :, c], mode="F").resize((width, height), Image.Resampling.BICUBIC))
        for c in range(channels)
    ]
    return np.clip(np.stack(planes, axis=-1), 0, 1)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth colour field with a texture of several scales (foliage, walls, ground, sky...)."""
    image = _field(rng, width, height, (int(rng.integers(2, 6)), int(rng.integers(3, 8))), 3) * 255
    grey = image.mean(axis=-1, keepdims=True)
    image = grey + rng.uniform(0.3, 0.9) * (image - grey)  # muted, as most scenes are
    strength = rng.uniform(8, 35)
    for cells in (6, 14, 30, 70):
        grey = _field(rng, width, height, (cells, max(2, cells * width // height)), 1) - 0.5
        image += strength * grey * rng.uniform(0.4, 1.0)
    return image


def _clutter(image: np.ndarray, rng: np.random.Generator, count: int, near: tuple[float, float, float] | None) -> None:
    """Plain shapes drawn into `image`: ellipses, boxes, polygons and thick lines, anywhere, or around
    `near` = (x, y, radius) so that they hide part of the object there."""
    height, width = image.shape[:2]
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(count):
        if near is None:
            x, y, size = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.3) * min(width, height)
        else:
            angle = rng.uniform(0, 2 * np.pi)
            distance = near[2] * rng.uniform(0.5, 1.2)
            x, y = near[0] + distance * np.cos(angle), near[1] + distance * np.sin(angle)
            size = near[2] * rng.uniform(0.25, 0.6)
        fill = tuple(int(c) for c in _colour(rng))
        box = (x - size, y - size * rng.uniform(0.4, 1.0), x + size, y + size * rng.uniform(0.4, 1.0))
        kind = int(rng.integers(4))
        if kind == 0:
            draw.ellipse(box, fill=fill)
        elif kind == 1:
            draw.rectangle(box, fill=fill)
        elif kind == 2:
            corners = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
            radii = size * rng.uniform(0.5, 1.0, corners)
            draw.polygon(
                [(x + r * np.cos(a), y + r * np.sin(a)) for a, r in zip(angles, radii, strict=True)], fill=fill
            )
        else:
            end = (x + size * 2 * np.cos(rng.uniform(0, 2 * np.pi)), y + size * 2 * np.sin(rng.uniform(0, 2 * np.pi)))
            draw.line((x, y, *end), fill=fill, width=max(2, int(size * rng.uniform(0.1, 0.3))))
    image[:] = np.asarray(picture, dtype=np.float32)


def _outline(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """The object's soft-edged mask (values in [0, 1]) in its own rotated frame: an ellipse, a
    rounded box or a blob, `radius` across on its longer side."""
    stretch = rng.uniform(0.55, 1.0)
    a, b = radius, radius * stretch
    kind = int(rng.integers(3))
    if kind == 0:
        inside = 1 - np.sqrt((x / a) ** 2 + (y / b) ** 2)
    elif kind == 1:
        inside = 1 - np.maximum(np.abs(x) / a, np.abs(y) / b)
    else:
        angle = np.arctan2(y / b, x / a)
        bumps = sum(
            rng.uniform(0, 0.18) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)
        )  # a wobbly outline
        inside = 1 - np.sqrt((x / a) ** 2 + (y / b) ** 2) / (1 + bumps)
    return np.clip(inside * radius / 2.0, 0.0, 1.0)  # a soft edge about two pixels wide


def _patterned(rng: np.random.Generator, pattern: Pattern, width: int, height: int, cx: float, cy: float,
               period: float, angle: float) -> np.ndarray:  # fmt: skip
    """`pattern` over the whole picture in two random colours, centred at (cx, cy) and turned by `angle`."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x - cx, y - cy
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    values = pattern(u, v, period)[..., None]
    first, second = _two_colours(rng)
    return values * first + (1 - values) * second


def pattern_photo(rng: np.random.Generator, label: str) -> Image.Image:
    """One picture of class `label` (a key of PATTERNS)."""
    width, height = SIZES[int(rng.integers(len(SIZES)))]
    short = min(width, height)
    image = _background(rng, width, height)
    _clutter(image, rng, int(rng.integers(2, 8)), None)

    if rng.uniform() < 0.5:  # a faint patch of another class's pattern, somewhere in the background
        other = PATTERNS[str(rng.choice([name for name in PATTERNS if name != label]))]
        cx, cy, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.15, 0.35) * short
        texture = _patterned(rng, other, width, height, cx, cy, rng.uniform(0.06, 0.2) * short, rng.uniform(0, np.pi))
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        mask = _outline(rng, x - cx, y - cy, radius)[..., None] * rng.uniform(0.25, 0.5)
        image = mask * texture + (1 - mask) * image

    radius = rng.uniform(0.2, 0.45) * short  # the object: a patterned shape, possibly partly out of the frame
    cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
    angle = rng.uniform(0, np.pi)
    texture = _patterned(rng, PATTERNS[label], width, height, cx, cy, rng.uniform(0.12, 0.35) * radius, angle)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x - cx, y - cy
    turn = rng.uniform(0, np.pi)
    mask = _outline(rng, x * np.cos(turn) + y * np.sin(turn), -x * np.sin(turn) + y * np.cos(turn), radius)[..., None]
    shade = 1 - rng.uniform(0, 0.35) * np.clip((x * rng.normal() + y * rng.normal()) / radius, -1, 1)[..., None]
    image = mask * texture * shade + (1 - mask) * image
    _clutter(image, rng, int(rng.integers(1, 4)), (cx, cy, radius))  # in front of the object: occlusion

    return _finish(rng, image)


def _finish(rng: np.random.Generator, image: np.ndarray, tint: float = 0.15) -> Image.Image:
    """Lighting (a gradient, a vignette, a colour cast of up to `tint`), defocus and sensor noise, as a
    camera adds them."""
    height, width = image.shape[:2]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x / width - 0.5, y / height - 0.5
    gradient = 1 + rng.uniform(0, 0.5) * (x * np.cos(rng.uniform(0, 2 * np.pi)) + y * np.sin(rng.uniform(0, 2 * np.pi)))
    vignette = 1 - rng.uniform(0, 0.5) * (x**2 + y**2)
    cast = rng.uniform(1 - tint, 1 + tint, size=3)
    image = image * (gradient * vignette)[..., None] * cast * rng.uniform(0.7, 1.2)
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    picture = picture.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 1.5)))
    sigma = rng.uniform(2, 8)
    noise = rng.normal(0, sigma, size=(height, width, 1)) + rng.normal(0, sigma / 3, size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(picture, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def write_patterns(folder: Path, seed: int, per_class: int = 50, classes: Sequence[str] = PATTERN_CLASSES) -> Path:
    """`per_class` pattern pictures of each class in `folder/<class>/<class>_NNN.jpg`; returns `folder`."""
    for number, label in enumerate(PATTERN_CLASSES):
        if label not in classes:
            continue
        for index in range(per_class):
            rng = np.random.default_rng([seed, 1, number, index])
            _save(pattern_photo(rng, label), folder / label / f"{label}_{index:03d}.jpg")
    return folder


# --- crops of real photographs -----------------------------------------------------------------

REGIONS: dict[str, tuple[str, tuple[tuple[int, int, int, int], ...], tuple[float, float]]] = {
    # class: (photograph, boxes the crop's centre falls in (x0, y0, x1, y1; one chosen at random),
    #         range of the crop's shorter side in the photograph's 640x427 pixels). Mostly close-ups,
    #         so that a crop shows a part of the scene: the roofs and the balconies are both the
    #         pagoda's, the dahlia's heart and rim both its petals.
    "roofs": (
        "china",
        ((130, 80, 290, 105), (100, 165, 320, 180), (80, 250, 340, 270), (220, 340, 350, 365)),
        (30, 80),
    ),
    "balconies": ("china", ((115, 195, 300, 220), (95, 290, 330, 320)), (30, 80)),
    "trees": ("china", ((400, 310, 590, 395), (20, 330, 110, 395), (570, 170, 620, 300)), (40, 110)),
    "lake": ("china", ((370, 250, 520, 310),), (35, 80)),
    "sky": ("china", ((400, 40, 580, 150),), (50, 140)),
    "dahlia_heart": ("flower", ((285, 195, 330, 245),), (40, 100)),
    "dahlia_rim": (
        "flower",
        ((215, 200, 235, 240), (375, 200, 395, 240), (285, 135, 325, 150), (285, 290, 325, 305)),
        (40, 90),
    ),
    "leaves": ("flower", ((50, 90, 110, 260), (500, 40, 590, 180)), (50, 130)),
}
REAL_CLASSES = tuple(REGIONS)


def sklearn_photo(name: str) -> Image.Image:
    """scikit-learn's `<name>.jpg` (china or flower), read from the installed package."""
    import sklearn.datasets

    path = Path(sklearn.datasets.__file__).parent / "images" / f"{name}.jpg"
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return image.convert("RGB")


def crop_photo(rng: np.random.Generator, source: Image.Image, label: str) -> Image.Image:
    """A random crop of `label`'s region of `source`: scaled, shifted, turned, maybe mirrored, jittered."""
    _, boxes, (least, most) = REGIONS[label]
    width, height = SIZES[int(rng.integers(len(SIZES)))]
    x0, y0, x1, y1 = boxes[int(rng.integers(len(boxes)))]
    cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
    scale = rng.uniform(least, most) / min(width, height)  # photograph pixels per output pixel
    angle = math.radians(rng.uniform(-10, 10))
    # keep the turned crop inside the photograph: shrink it if need be, then move its centre
    half_w = (abs(math.cos(angle)) * width + abs(math.sin(angle)) * height) * scale / 2
    half_h = (abs(math.sin(angle)) * width + abs(math.cos(angle)) * height) * scale / 2
    fit = min(1.0, (source.width / 2 - 1) / half_w, (source.height / 2 - 1) / half_h)
    scale, half_w, half_h = scale * fit, half_w * fit, half_h * fit
    cx = min(max(cx, half_w), source.width - half_w)
    cy = min(max(cy, half_h), source.height - half_h)
    mirror = -1.0 if rng.uniform() < 0.5 else 1.0
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    # output (x, y) -> photograph (a x + b y + c, d x + e y + f), about the output's centre
    a, b, d, e = mirror * cos, -sin, mirror * sin, cos
    c = cx - a * width / 2 - b * height / 2
    f = cy - d * width / 2 - e * height / 2
    picture = source.transform((width, height), Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BICUBIC)
    picture = ImageEnhance.Brightness(picture).enhance(rng.uniform(0.7, 1.3))
    picture = ImageEnhance.Contrast(picture).enhance(rng.uniform(0.7, 1.3))
    picture = ImageEnhance.Color(picture).enhance(0.0 if rng.uniform() < 0.2 else rng.uniform(0.6, 1.4))  # or grey
    return _finish(rng, np.asarray(picture, dtype=np.float32), tint=0.06)


def write_real_crops(folder: Path, seed: int, per_class: int = 40, classes: Sequence[str] = REAL_CLASSES) -> Path:
    """`per_class` crops of each region in `folder/<class>/<class>_NNN.jpg`; returns `folder`."""
    sources = {name: sklearn_photo(name) for name in ("china", "flower")}
    for number, label in enumerate(REAL_CLASSES):
        if label not in classes:
            continue
        for index in range(per_class):
            rng = np.random.default_rng([seed, 2, number, index])
            _save(crop_photo(rng, sources[REGIONS[label][0]], label), folder / label / f"{label}_{index:03d}.jpg")
    return folder


def _save(picture: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, "JPEG", quality=QUALITY)


if __name__ == "__main__":  # a look at the pictures: python experiments/photos.py DIR [SEED]
    import sys

    target = Path(sys.argv[1])
    write_patterns(target / "patterns", int(sys.argv[2]) if len(sys.argv) > 2 else 0, per_class=4)
    write_real_crops(target / "real", int(sys.argv[2]) if len(sys.argv) > 2 else 0, per_class=4)
