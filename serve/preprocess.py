"""The one preprocessing function shared by retrain and serve: image bytes -> normalised pixels.

Pillow + numpy only, so the serve runtime needs no TensorFlow. The steps are the ones on-device
clients take, so that a model answers alike in training, in `serve` and on a phone: honour EXIF
orientation, convert any mode to RGB, then stretch the *whole* image to the backbone's input size
(no crop, the aspect ratio not kept) by bilinear sampling exactly as MediaPipe Tasks'
ImageClassifier does on the CPU (`resize_float`), round to 8 bits, and apply the backbone's
normalisation `(pixel - mean) / std`, which model.tflite's metadata states. `retrain.export`
repeats these steps in TensorFlow ops for the SavedModel that TensorFlow Serving runs.
(docs/decisions.md #49.)
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from serve.budget import DecodeBudget

# Bump when the steps below change: it is part of every bottleneck cache key.
PREPROCESSING_VERSION = 2  # 1: central 87.5% square, bicubic; 2: the whole image, MediaPipe's bilinear
SUPPORTED_PREPROCESSING = (1, 2)  # serve still answers for exports made with version 1
LEGACY_CENTRAL_FRACTION = 0.875  # version 1's crop

# Sample positions are rounded to 1/32 of a pixel, as OpenCV's warps (MediaPipe's CPU path) do.
SUBPIXEL = 32

# Decompression-bomb guard: more pixels than this is refused, not decoded (a 12k x 12k photo).
MAX_IMAGE_PIXELS = 144_000_000

# The formats retrain and serve decode (the README's .jpg .jpeg .png .gif .bmp .webp); Pillow knows
# dozens more, each a parser that a stranger's bytes could reach.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")

# How common formats begin: bytes that start like one of these but cannot be opened are a corrupt
# image (truncated inside its header), not "no image at all".
_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF"}


class ImageDecodeError(ValueError):
    """The bytes are not an image Pillow can decode (truncated, empty, not an image, too large)."""


class NotAnImageError(ImageDecodeError):
    """Empty, or no image format Pillow knows (a text file named .jpg)."""


class ImageTooLargeError(ImageDecodeError):
    """More pixels than allowed (a decompression bomb); refused before decoding."""


@dataclass(frozen=True)
class InputSpec:
    """What a backbone expects: input height and width, and `(pixel - mean) / std` normalisation."""

    height: int
    width: int
    mean: float
    std: float
    preprocessing: int = PREPROCESSING_VERSION  # an export's own, from its model.json (1 for older ones)

    def to_json(self) -> dict:
        return {"height": self.height, "width": self.width, "mean": self.mean, "std": self.std}

    @classmethod
    def from_json(cls, data: dict) -> InputSpec:
        return cls(int(data["height"]), int(data["width"]), float(data["mean"]), float(data["std"]))


def decode_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Decodes encoded image bytes to an upright RGB Pillow image, at full size.

    Images with more than `max_pixels` (default MAX_IMAGE_PIXELS) are refused from their header,
    before decoding. JPEGs are not decoded in draft mode (scaled down by the DCT): a client samples
    the full-size image, and so do training and serve (docs/decisions.md #49).
    """
    return load_image(open_image(data, max_pixels))


def open_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """The image's header, read and checked (format in FORMATS, at most `max_pixels`), nothing decoded."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise NotAnImageError("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(str(e)) from e
        except (OSError, ValueError, SyntaxError) as e:
            known = next((fmt for sig, fmt in _SIGNATURES.items() if data.startswith(sig)), None)
            if known:
                raise ImageDecodeError(f"corrupt or truncated {known} image (its header is incomplete)") from e
            raise NotAnImageError(f"not an image in a format read here ({', '.join(FORMATS)})") from e
    if image.width * image.height > limit:
        raise ImageTooLargeError(f"image is {image.width}x{image.height} pixels, more than {limit:,}")
    return image


def load_image(image: Image.Image) -> Image.Image:
    """Decodes an `open_image` header to an upright RGB image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ImageDecodeError(f"corrupt or truncated {image.format} image: {e}") from e


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white, 16-bit is scaled down."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        pixels = np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(pixels, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def resize_for_model(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """The whole image stretched to the spec's size (`resize_float`), rounded: uint8 (height, width, 3).
    For an export made with preprocessing version 1, that version's steps instead (`legacy_resize`)."""
    if spec.preprocessing == 1:
        return legacy_resize(image, spec)
    return round_pixels(resize_float(image, spec))


def legacy_resize(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Preprocessing version 1, kept so that exports trained with it are served as they were trained:
    the central square 87.5% of the shorter side wide, resized bicubically per channel in float,
    rounded once. (Version 1 also decoded large JPEGs in Pillow's draft mode; that is not repeated,
    which moves a pixel by a level or so on photos over twice the input size.)"""
    side = max(1, int(LEGACY_CENTRAL_FRACTION * min(image.width, image.height)))
    left, top = (image.width - side + 1) // 2, (image.height - side + 1) // 2
    square = image.crop((left, top, left + side, top + side))
    size, bicubic = (spec.width, spec.height), Image.Resampling.BICUBIC
    channels = [np.asarray(band.convert("F").resize(size, bicubic)) for band in square.split()]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def round_pixels(values: np.ndarray) -> np.ndarray:
    """Float pixel values to uint8, halves rounded up (as OpenCV's fixed-point warps round)."""
    return np.clip(np.floor(values + np.float32(0.5)), 0, 255).astype(np.uint8)


def resize_float(
    image: Image.Image, spec: InputSpec, box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """Bilinear resampling of the whole `image`, or of its `box` (left, top, right, bottom in pixels,
    may be fractional), to the spec's size, not rounded: float32 of shape (height, width, 3).

    This is MediaPipe Tasks' ImageClassifier on the CPU (its ImageToTensorCalculator, an OpenCV
    warp), measured bit for bit (tests/test_mediapipe.py): output pixel (row i, column j) samples
    the source at (top + i * (bottom - top) / height, left + j * (right - left) / width), pixel
    corners on corners as TensorFlow 1's `resize_bilinear` maps them (not pixel centres); each
    position is rounded to 1/32 pixel, and samples past the last row or column take its values.
    No antialiasing: shrinking a large photo samples it, as the device does. The two passes are
    exact in float32 (weights are multiples of 1/32), so only `round_pixels` rounds. A position
    exactly half-way between two 1/32 steps (possible only when an output side is a multiple of 64)
    goes to the even step here, either way in MediaPipe.

    `resize_for_model` rounds this once. Training-time augmentation passes a box (a zoom into the
    image) and scales brightness before rounding, so it goes through the very same sampling.
    """
    left, top, right, bottom = box if box is not None else (0.0, 0.0, float(image.width), float(image.height))
    pixels = np.asarray(image)
    rows, row_weights = _taps(top, bottom, spec.height, image.height)
    columns, column_weights = _taps(left, right, spec.width, image.width)
    picked = pixels[rows].astype(np.float32)  # (2, height, W, 3): the two source rows of each output row
    blended = picked[0] * (1 - row_weights)[:, None, None] + picked[1] * row_weights[:, None, None]
    picked = blended[:, columns]  # (height, 2, width, 3)
    return picked[:, 0] * (1 - column_weights)[None, :, None] + picked[:, 1] * column_weights[None, :, None]


def _taps(start: float, end: float, size: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The two source indices (2, size) and the weight of the second (size,) of each output position
    along one axis, sampling [start, end) of a source `limit` pixels long."""
    positions = np.round((start + np.arange(size, dtype=np.float64) * ((end - start) / size)) * SUBPIXEL) / SUBPIXEL
    first = np.floor(positions)
    indices = np.clip(np.stack([first, first + 1]).astype(np.int64), 0, limit - 1)
    return indices, (positions - first).astype(np.float32)


def normalize(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 pixels to the float32 values the backbone was trained on."""
    return (pixels.astype(np.float32) - np.float32(spec.mean)) / np.float32(spec.std)


def preprocess(
    data: bytes, spec: InputSpec, max_pixels: int | None = None, budget: DecodeBudget | None = None
) -> np.ndarray:
    """Encoded image bytes -> float32 array (height, width, 3), ready for the backbone. With a
    `budget`, decoding and resizing wait until the memory they need (from the header) is free in it;
    an image that alone needs more than the budget is an ImageTooLargeError."""
    with decoded(data, max_pixels, budget) as image:
        return normalize(resize_for_model(image, spec), spec)


@contextmanager
def decoded(data: bytes, max_pixels: int | None = None, budget: DecodeBudget | None = None) -> Iterator[Image.Image]:
    """`decode_image` for the length of a block. With a `budget`, the image's cost (from its header,
    `serve.budget.decode_cost`) is held in it from before decoding until the block ends, so whatever
    the block makes of the image (resizes, augmented copies) is inside the budget too; an image that
    alone needs more than the whole budget is an ImageTooLargeError, raised before decoding."""
    header = open_image(data, max_pixels)
    if budget is None:
        yield load_image(header)
        return
    from serve.budget import decode_cost

    cost = decode_cost(header.width, header.height, header.mode)
    if cost > budget.max_bytes:
        raise ImageTooLargeError(
            f"decoding this {header.width}x{header.height} {header.mode} image needs about {cost / 2**20:,.0f} MiB, "
            f"over the {budget.max_bytes / 2**20:,.0f} MiB decoding budget (--decode_memory_mb)"
        )
    with budget.hold(cost):
        yield load_image(header)


def preprocess_file(path: str | os.PathLike, spec: InputSpec) -> np.ndarray:
    """`preprocess` for a file on disk."""
    with open(path, "rb") as f:
        return preprocess(f.read(), spec)
