"""The one preprocessing function shared by retrain and serve: image bytes -> normalised pixels.

Pillow + numpy only, so the serve runtime needs no TensorFlow. The steps follow the classic
ImageNet evaluation recipe ("resize to 256, crop 224"): honour EXIF orientation, convert any
mode to RGB, take the central square whose side is 87.5% of the shorter side (so the aspect ratio
is kept), resize it bicubically to the backbone's input size, then apply the backbone's
normalisation `(pixel - mean) / std`. `retrain.export` repeats these steps in TensorFlow ops, with
the same integer rounding, for the SavedModel that TensorFlow Serving runs.
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
PREPROCESSING_VERSION = 1

CENTRAL_FRACTION = 0.875

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

    def to_json(self) -> dict:
        return {"height": self.height, "width": self.width, "mean": self.mean, "std": self.std}

    @classmethod
    def from_json(cls, data: dict) -> InputSpec:
        return cls(int(data["height"]), int(data["width"]), float(data["mean"]), float(data["std"]))


def central_crop_box(width: int, height: int, fraction: float = CENTRAL_FRACTION) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) of the central square, `fraction` of the shorter side wide."""
    side = max(1, int(fraction * min(width, height)))
    left, top = (width - side + 1) // 2, (height - side + 1) // 2
    return left, top, left + side, top + side


def decode_image(data: bytes, target_size: tuple[int, int] | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decodes encoded image bytes to an upright RGB Pillow image.

    `target_size` (width, height) lets JPEG decoding use draft mode: the DCT scales a large photo
    down by 2, 4 or 8 while decoding, never below twice the target, which is much faster and does
    not change what the bicubic resize produces in any visible way. Images with more than
    `max_pixels` (default MAX_IMAGE_PIXELS) are refused from their header, before decoding.
    """
    return load_image(open_image(data, target_size, max_pixels))


def open_image(data: bytes, target_size: tuple[int, int] | None = None, max_pixels: int | None = None) -> Image.Image:
    """The image's header, read and checked (format in FORMATS, at most `max_pixels`), nothing decoded.
    Its `size` is what `load_image` will decode: for a JPEG, already reduced by draft mode."""
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
    if target_size is not None and image.format == "JPEG":
        image.draft("RGB", (2 * target_size[0], 2 * target_size[1]))
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
    """Central crop + bicubic resize to the spec's size: uint8 array of shape (height, width, 3)."""
    # Crop, then resize each channel in float and round once at the end. This is what
    # TensorFlow's resize does (the SavedModel's path), so both give the same pixels; Pillow's
    # 8-bit resize would round and clip between its horizontal and vertical passes.
    cropped = image.crop(central_crop_box(image.width, image.height))
    return np.clip(np.rint(resize_float(cropped, spec)), 0, 255).astype(np.uint8)


def resize_float(
    image: Image.Image, spec: InputSpec, box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """Bicubic resize of `image`, or of its `box` (left, top, right, bottom; may be fractional), to the
    spec's size, each channel in float and not rounded: float32 of shape (height, width, 3).

    `resize_for_model` rounds this once. Training-time augmentation passes a box to zoom into the
    central crop and scales brightness before rounding, so it goes through the very same resize.
    """
    size = (spec.width, spec.height)
    resample = Image.Resampling.BICUBIC
    channels = [np.asarray(band.convert("F").resize(size, resample, box=box)) for band in image.split()]
    return np.stack(channels, axis=-1)


def normalize(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 pixels to the float32 values the backbone was trained on."""
    return (pixels.astype(np.float32) - np.float32(spec.mean)) / np.float32(spec.std)


def preprocess(
    data: bytes, spec: InputSpec, max_pixels: int | None = None, budget: DecodeBudget | None = None
) -> np.ndarray:
    """Encoded image bytes -> float32 array (height, width, 3), ready for the backbone. With a
    `budget`, decoding and resizing wait until the memory they need (from the header) is free in it;
    an image that alone needs more than the budget is an ImageTooLargeError."""
    with decoded(data, (spec.width, spec.height), max_pixels, budget) as image:
        return normalize(resize_for_model(image, spec), spec)


@contextmanager
def decoded(
    data: bytes,
    target_size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    budget: DecodeBudget | None = None,
) -> Iterator[Image.Image]:
    """`decode_image` for the length of a block. With a `budget`, the image's cost (from its header,
    `serve.budget.decode_cost`) is held in it from before decoding until the block ends, so whatever
    the block makes of the image (resizes, augmented copies) is inside the budget too; an image that
    alone needs more than the whole budget is an ImageTooLargeError, raised before decoding."""
    header = open_image(data, target_size, max_pixels)
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
