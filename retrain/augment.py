"""Training-time augmentation with retrain.py's distortion flags, drawn once per copy and cached.

retrain.py distorted each training image afresh at every step, which cost a backbone forward pass
per image per step and turned the bottleneck cache off. Here every training image gets K augmented
copies instead. Copy k is drawn from a generator seeded by (image content, k, seed), so it is the
same pixels on every run, and its vector is cached under its own key (`variant_digest`): a second
run costs no forward pass, and a different flag value or seed never reuses a wrong vector.
Validation and test images are never augmented.

The distortions keep retrain.py's meaning (its `add_input_distortions`), applied to what the model
sees without augmentation, the whole image as `serve.preprocess` stretches it:

    random_crop        a margin of this many percent: the box is 1 / (1 + crop/100) of the
                       image's width and height, at a random position inside the image
    random_scale       zoom in by a further random factor in [1, 1 + scale/100]
    flip_left_right    mirror horizontally, with probability 1/2
    random_brightness  multiply pixel values by a random factor in [1 - b/100, 1 + b/100]

With every distortion off the pixels are exactly `serve.preprocess.resize_for_model`'s.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from retrain.errors import RetrainError
from serve.preprocess import InputSpec, resize_float, round_pixels

# Bump when `draw_distortion` or `apply_distortion` change: it is part of every variant's cache key.
AUGMENTATION_VERSION = 2  # 1: boxes in the central square; 2: in the whole image


@dataclass(frozen=True)
class Augmentation:
    """retrain.py's distortion flags; the three numbers are percentages, as there."""

    flip_left_right: bool = False
    random_crop: float = 0
    random_scale: float = 0
    random_brightness: float = 0

    def __post_init__(self) -> None:
        for flag, value in (("--random_crop", self.random_crop), ("--random_scale", self.random_scale)):
            if not (math.isfinite(value) and value >= 0):
                raise RetrainError(f"{flag} must be a percentage >= 0, not {value}")
        if not 0 <= self.random_brightness <= 100:  # above 100 the factor could be negative
            raise RetrainError(f"--random_brightness must be a percentage from 0 to 100, not {self.random_brightness}")

    @property
    def enabled(self) -> bool:
        """Whether any distortion is on (with none, an augmented copy is the image itself)."""
        return self.flip_left_right or self.random_crop > 0 or self.random_scale > 0 or self.random_brightness > 0

    def to_json(self) -> dict:
        return {
            "flip_left_right": self.flip_left_right,
            "random_crop": self.random_crop,
            "random_scale": self.random_scale,
            "random_brightness": self.random_brightness,
        }

    def describe(self) -> str:
        """A short stable text for cache keys and logs, e.g. "flip=1,crop=10,scale=0,brightness=10".

        Numbers are written exactly (10 and 10.0 read "10", 12.5 reads "12.5"), so two settings
        share a description only when they are equal.
        """
        return (
            f"flip={int(self.flip_left_right)},crop={_exact(self.random_crop)},"
            f"scale={_exact(self.random_scale)},brightness={_exact(self.random_brightness)}"
        )


@dataclass(frozen=True)
class Distortion:
    """One draw of the distortions for one image, independent of the image's size."""

    zoom: float = 1.0  # the box's sides are the image's divided by this (>= 1)
    left: float = 0.0  # where the box sits in the room the zoom leaves: 0 = left edge .. 1 = right edge
    top: float = 0.0  # the same vertically
    flip: bool = False
    brightness: float = 1.0  # pixel values are multiplied by this


def draw_distortion(augmentation: Augmentation, rng: np.random.Generator) -> Distortion:
    """Draws one distortion. Five numbers are always drawn, in the same order, so that changing one
    flag leaves the other distortions of a copy as they were."""
    zoom_draw, left, top, flip_draw, brightness_draw = rng.random(5)
    margin = 1 + augmentation.random_crop / 100
    zoom = margin * (1 + augmentation.random_scale / 100 * zoom_draw)
    brightness = 1 + augmentation.random_brightness / 100 * (2 * brightness_draw - 1)
    flip = augmentation.flip_left_right and bool(flip_draw < 0.5)
    return Distortion(float(zoom), float(left), float(top), flip, float(brightness))


def apply_distortion(image: Image.Image, spec: InputSpec, distortion: Distortion) -> np.ndarray:
    """The distorted model input of an upright RGB image: uint8 of shape (height, width, 3).

    The box is placed inside the image in fractional pixels and resampled with `resize_float`, the
    sampling `resize_for_model` uses (at the box's far edges it may read the pixels just outside
    it); brightness is applied before the one rounding. The flip mirrors the resampled pixels.
    """
    width, height = image.width / distortion.zoom, image.height / distortion.zoom
    left, top = distortion.left * (image.width - width), distortion.top * (image.height - height)
    pixels = resize_float(image, spec, (left, top, left + width, top + height))
    if distortion.brightness != 1.0:
        pixels = pixels * np.float32(distortion.brightness)
    pixels = round_pixels(pixels)
    return np.ascontiguousarray(np.fliplr(pixels)) if distortion.flip else pixels


def augmented_pixels(
    image: Image.Image, spec: InputSpec, augmentation: Augmentation, rng: np.random.Generator
) -> np.ndarray:
    """One randomly distorted model input (uint8, (height, width, 3)) of an upright RGB image."""
    return apply_distortion(image, spec, draw_distortion(augmentation, rng))


def variant_rng(image_digest: str, copy: int, seed: int) -> np.random.Generator:
    """The generator for augmented copy `copy` of an image: seeded by its content digest, the copy
    and the run's seed only, so recomputing a copy gives the same pixels. PCG64 is named rather than
    left to `default_rng`, whose algorithm NumPy may change."""
    material = hashlib.sha256(f"augmentation-rng|{image_digest}|{copy}|{seed}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(material, "big")))


def variant_digest(image_digest: str, augmentation: Augmentation, copy: int, seed: int) -> str:
    """The content half of the cache key of augmented copy `copy` (use it as `BottleneckCache.key`'s
    argument): distinct for every image, setting, copy and seed, and from the image's own digest."""
    text = f"augmented-v{AUGMENTATION_VERSION}|{image_digest}|{augmentation.describe()}|copy={copy}|seed={seed}"
    return hashlib.sha256(text.encode()).hexdigest()


def variant_pixels(
    image: Image.Image, digest: str, spec: InputSpec, augmentation: Augmentation, copy: int, seed: int
) -> np.ndarray:
    """Augmented copy `copy` of an image whose bytes hash to `digest`: the pixels its cache key names."""
    return augmented_pixels(image, spec, augmentation, variant_rng(digest, copy, seed))


def _exact(value: float) -> str:
    return repr(float(value) + 0.0).removesuffix(".0")  # + 0.0 turns -0.0 into 0.0
