"""Augmentation with retrain.py's distortion flags: the pixels, their determinism, their cache keys,
and augmented copies computed through the real backbone and read back from the cache."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrain.augment import (
    Augmentation,
    Distortion,
    apply_distortion,
    augmented_pixels,
    draw_distortion,
    variant_digest,
    variant_pixels,
    variant_rng,
)
from retrain.cache import BottleneckCache, image_digest
from retrain.errors import RetrainError
from serve.preprocess import InputSpec, decode_image, normalize, resize_float, resize_for_model, round_pixels

from .conftest import DIGITS, copy_digits, jpeg_bytes

SPEC = InputSpec(height=224, width=224, mean=127.0, std=128.0)
PHOTO = jpeg_bytes(500, 375, seed=1)  # wider than tall: stretched to a square
DIGIT = (DIGITS / "3" / "digit_0003.png").read_bytes()  # 8x8, upscaled 32 times


def _image(data: bytes) -> Image.Image:
    return decode_image(data)


def _copies(data: bytes, augmentation: Augmentation, count: int = 20, seed: int = 0) -> list[np.ndarray]:
    image, digest = _image(data), image_digest(data)
    return [variant_pixels(image, digest, SPEC, augmentation, copy, seed) for copy in range(count)]


# --- pixels ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [DIGIT, PHOTO, jpeg_bytes(33, 17, seed=2)], ids=["digit", "photo", "odd-size"])
def test_no_distortion_gives_exactly_the_unaugmented_pixels(data: bytes) -> None:
    image = _image(data)
    plain = resize_for_model(image, SPEC)
    for copy in range(3):
        np.testing.assert_array_equal(augmented_pixels(image, SPEC, Augmentation(), variant_rng("d", copy, 0)), plain)
    np.testing.assert_array_equal(apply_distortion(image, SPEC, Distortion()), plain)


@pytest.mark.parametrize("data", [DIGIT, PHOTO], ids=["digit", "photo"])
def test_flip_mirrors_the_unaugmented_pixels_about_half_the_time(data: bytes) -> None:
    plain = resize_for_model(_image(data), SPEC)
    mirrored = np.fliplr(plain)
    assert not np.array_equal(plain, mirrored)  # else the test could not tell
    np.testing.assert_array_equal(apply_distortion(_image(data), SPEC, Distortion(flip=True)), mirrored)

    copies = _copies(data, Augmentation(flip_left_right=True), count=40)
    flipped = [np.array_equal(pixels, mirrored) for pixels in copies]
    assert all(f or np.array_equal(pixels, plain) for f, pixels in zip(flipped, copies, strict=True))
    assert 8 <= sum(flipped) <= 32  # 40 fair coin flips


def test_brightness_scales_pixel_values_within_its_bounds() -> None:
    augmentation = Augmentation(random_brightness=20)
    plain = resize_for_model(_image(PHOTO), SPEC).astype(np.float64)
    factors = []
    for copy, pixels in enumerate(_copies(PHOTO, augmentation)):
        factor = draw_distortion(augmentation, variant_rng(image_digest(PHOTO), copy, 0)).brightness
        assert 0.8 <= factor <= 1.2
        assert pixels.shape == plain.shape and pixels.dtype == np.uint8
        # Every pixel is its unaugmented value times that factor, rounded once and clipped at 255
        # (the unaugmented value was rounded too: hence up to 0.5 + 0.5 * factor apart).
        assert np.abs(pixels - np.clip(plain * factor, 0, 255)).max() <= 0.5 + 0.5 * factor + 1e-3
        factors.append(factor)
    assert min(factors) < 0.9 and max(factors) > 1.1  # both darker and brighter copies


def test_draw_follows_retrain_py_percentages() -> None:
    rngs = [variant_rng("d", copy, 0) for copy in range(200)]
    crop_only = [draw_distortion(Augmentation(random_crop=10), rng) for rng in rngs[:50]]
    assert all(d.zoom == pytest.approx(1.1) for d in crop_only)
    both = [draw_distortion(Augmentation(random_crop=10, random_scale=50), rng) for rng in rngs[50:]]
    assert all(1.1 <= d.zoom <= 1.1 * 1.5 for d in both)
    assert max(d.zoom for d in both) > 1.5 and min(d.zoom for d in both) < 1.2  # spread over the range
    assert all(0 <= d.left <= 1 and 0 <= d.top <= 1 and not d.flip and d.brightness == 1 for d in both)
    brightness = [draw_distortion(Augmentation(random_brightness=30), rng).brightness for rng in rngs[:100]]
    assert 0.7 <= min(brightness) < 0.8 and 1.2 < max(brightness) <= 1.3


def test_zoom_takes_the_part_of_the_image_where_the_box_is_placed() -> None:
    """Zoom 2 at (0, 0) is the top-left quarter of the image, resampled; at (1, 1) the bottom right."""
    image = _image(jpeg_bytes(500, 376, seed=1))  # even sides: the quarters' boxes are whole pixels
    width, height = image.width // 2, image.height // 2
    corners = {}
    for place, box in [(0, (0, 0, width, height)), (1, (width, height, image.width, image.height))]:
        zoomed = apply_distortion(image, SPEC, Distortion(zoom=2, left=place, top=place))
        np.testing.assert_array_equal(zoomed, round_pixels(resize_float(image, SPEC, box)))
        # The quarter cut out and stretched alike: the same but at its far edges, where the box's
        # samples read the pixels beyond it.
        quarter = resize_for_model(image.crop(box), SPEC)
        np.testing.assert_array_equal(zoomed[:-8, :-8], quarter[:-8, :-8])
        corners[place] = zoomed
    assert np.abs(corners[0].astype(int) - corners[1]).mean() > 5


@pytest.mark.parametrize(
    "augmentation",
    [Augmentation(random_crop=20), Augmentation(random_scale=50), Augmentation(random_crop=10, random_scale=10)],
    ids=["crop", "scale", "both"],
)
@pytest.mark.parametrize("data", [DIGIT, PHOTO], ids=["digit", "photo"])
def test_crop_and_scale_change_the_pixels_and_keep_the_shape(data: bytes, augmentation: Augmentation) -> None:
    plain = resize_for_model(_image(data), SPEC)
    copies = _copies(data, augmentation, count=5)
    for pixels in copies:
        assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
        assert np.abs(pixels.astype(int) - plain).mean() > 1.0
    assert not np.array_equal(copies[0], copies[1])


def test_a_copy_is_the_same_pixels_every_time_and_copies_differ() -> None:
    augmentation = Augmentation(flip_left_right=True, random_crop=10, random_scale=20, random_brightness=10)
    first, again = _copies(PHOTO, augmentation, count=4), _copies(PHOTO, augmentation, count=4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len({pixels.tobytes() for pixels in first}) == 4
    other_seed = _copies(PHOTO, augmentation, count=4, seed=1)
    assert all(not np.array_equal(a, b) for a, b in zip(first, other_seed, strict=True))


# --- keys and flags ----------------------------------------------------------------------------------


def test_description_is_short_stable_and_exact() -> None:
    assert Augmentation(True, 10, 0, 10).describe() == "flip=1,crop=10,scale=0,brightness=10"
    assert Augmentation(random_crop=12.5).describe() == "flip=0,crop=12.5,scale=0,brightness=0"
    assert Augmentation(random_crop=10).describe() == Augmentation(random_crop=10.0).describe()
    assert Augmentation(random_crop=10).describe() != Augmentation(random_crop=10.000001).describe()
    assert Augmentation(random_scale=-0.0).describe() == Augmentation().describe()
    assert not Augmentation().enabled and Augmentation(random_brightness=1).enabled
    assert Augmentation(flip_left_right=True).to_json() == {
        "flip_left_right": True,
        "random_crop": 0,
        "random_scale": 0,
        "random_brightness": 0,
    }


def test_variant_keys_differ_by_flags_copy_and_seed_and_from_the_plain_key(tmp_path: Path) -> None:
    cache = BottleneckCache(tmp_path, "efficientnet_lite0@imagenet", 4)
    digest = image_digest(PHOTO)
    base = Augmentation(flip_left_right=True, random_crop=10, random_scale=10, random_brightness=10)
    others = [
        Augmentation(False, 10, 10, 10),
        Augmentation(True, 11, 10, 10),
        Augmentation(True, 10, 11, 10),
        Augmentation(True, 10, 10, 11),
    ]
    keys = [cache.key(variant_digest(digest, base, 0, 0))]
    keys += [cache.key(variant_digest(digest, other, 0, 0)) for other in others]
    keys += [cache.key(variant_digest(digest, base, 1, 0)), cache.key(variant_digest(digest, base, 0, 1))]
    keys += [cache.key(variant_digest(image_digest(DIGIT), base, 0, 0)), cache.key(digest)]
    assert len(set(keys)) == len(keys)
    assert keys[0] == cache.key(variant_digest(digest, Augmentation(True, 10.0, 10.0, 10.0), 0, 0))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"random_crop": -5}, "--random_crop"),
        ({"random_scale": float("nan")}, "--random_scale"),
        ({"random_brightness": 150}, "--random_brightness"),
    ],
)
def test_bad_percentages_are_refused_naming_the_flag(flags: dict, message: str) -> None:
    with pytest.raises(RetrainError, match=message):
        Augmentation(**flags)


# --- through the backbone and the cache ----------------------------------------------------------------


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Ten real images: eight digits (two classes) and two JPEG photos."""
    root = copy_digits(tmp_path / "images", ["4", "9"], per_class=4)
    paths = sorted(root.rglob("*.png"))
    for seed in (5, 6):
        photo = root / "photos" / f"photo_{seed}.jpg"
        photo.parent.mkdir(exist_ok=True)
        photo.write_bytes(jpeg_bytes(320, 240, seed=seed))
        paths.append(photo)
    return paths


AUGMENTATION = Augmentation(flip_left_right=True, random_crop=10, random_scale=20, random_brightness=15)


def test_copies_are_computed_once_then_read_from_the_cache(backbone, images: list[Path], tmp_path: Path) -> None:
    from retrain.extract import compute_bottlenecks

    cache = BottleneckCache(tmp_path / "cache", backbone.cache_id, backbone.feature_dim)
    run = {"augmentation": AUGMENTATION, "copies": 2, "seed": 7, "batch_size": 3}  # batches straddle images
    vectors, ok, stats = compute_bottlenecks(images, backbone, cache, **run)
    assert vectors.shape == (10, 2, backbone.feature_dim) and ok.all()
    assert (stats.cached, stats.computed, stats.skipped) == (0, 20, [])
    assert len(list(cache.directory.rglob("*.npy"))) == 20

    again, ok_again, stats_again = compute_bottlenecks(images, backbone, cache, **run)
    assert (stats_again.cached, stats_again.computed) == (20, 0) and ok_again.all()
    np.testing.assert_array_equal(again, vectors)

    # Each row is the forward pass of exactly that copy's pixels, in its own place.
    for index in (0, 9):
        data = images[index].read_bytes()
        image = decode_image(data)
        for copy in range(2):
            pixels = variant_pixels(image, image_digest(data), backbone.input_spec, AUGMENTATION, copy, 7)
            expected = backbone.model(normalize(pixels, backbone.input_spec)[None]).numpy()[0]
            np.testing.assert_allclose(vectors[index, copy], expected, atol=1e-4)

    # The copies are not the image itself, and the image's own vector is not shadowed by them.
    plain, plain_ok, plain_stats = compute_bottlenecks(images, backbone, cache)
    assert plain.shape == (10, backbone.feature_dim) and plain_ok.all() and plain_stats.computed == 10
    assert all(not np.allclose(plain[i], vectors[i, copy], atol=1e-3) for i in range(10) for copy in range(2))
    assert not np.allclose(vectors[:, 0], vectors[:, 1], atol=1e-3)


def test_more_copies_reuse_the_earlier_ones_and_a_new_seed_reuses_none(
    backbone, images: list[Path], tmp_path: Path
) -> None:
    from retrain.extract import compute_bottlenecks

    cache = BottleneckCache(tmp_path / "cache", backbone.cache_id, backbone.feature_dim)
    two, _, _ = compute_bottlenecks(images[:4], backbone, cache, augmentation=AUGMENTATION, copies=2)
    three, _, stats = compute_bottlenecks(images[:4], backbone, cache, augmentation=AUGMENTATION, copies=3)
    assert (stats.cached, stats.computed) == (8, 4)
    np.testing.assert_array_equal(three[:, :2], two)
    _, _, reseeded = compute_bottlenecks(images[:4], backbone, cache, augmentation=AUGMENTATION, copies=2, seed=1)
    assert (reseeded.cached, reseeded.computed) == (0, 8)
    brighter = Augmentation(flip_left_right=True, random_crop=10, random_scale=20, random_brightness=16)
    _, _, changed = compute_bottlenecks(images[:4], backbone, cache, augmentation=brighter, copies=2)
    assert (changed.cached, changed.computed) == (0, 8)


def test_an_undecodable_file_is_skipped_with_its_reason(backbone, images: list[Path], tmp_path: Path, caplog) -> None:
    from retrain.extract import compute_bottlenecks

    truncated = images[0].parent / "truncated.jpg"
    truncated.write_bytes(jpeg_bytes(320, 240, seed=9)[:300])
    text = images[0].parent / "notes.png"
    text.write_text("not an image\n")
    shutil.copy(images[1], images[0].parent / "renamed.png")  # same bytes: the same keys
    paths = [truncated, *images[:4], text, images[0].parent / "renamed.png"]

    cache = BottleneckCache(tmp_path / "cache", backbone.cache_id, backbone.feature_dim)
    with caplog.at_level(logging.WARNING):
        vectors, ok, stats = compute_bottlenecks(paths, backbone, cache, augmentation=AUGMENTATION, copies=2)
    assert ok.tolist() == [False, True, True, True, True, False, True]
    assert [path for path, _ in stats.skipped] == [truncated, text]
    assert all(reason.startswith("not a decodable image") for _, reason in stats.skipped)
    assert str(truncated) in caplog.text and str(text) in caplog.text
    assert not vectors[~ok].any() and np.abs(vectors[ok]).sum(axis=-1).all()
    assert (stats.cached, stats.computed, stats.duplicates) == (0, 8, 2)  # the renamed copy is computed once
    np.testing.assert_array_equal(vectors[-1], vectors[2])  # identical by construction


def test_identical_files_are_computed_once_and_share_their_fate(backbone, images: list[Path], tmp_path: Path) -> None:
    """Plain extraction: a renamed copy takes the first file's vector (equal by construction, not by
    batch luck), and a copy of an undecodable file is skipped with the same reason."""
    from retrain.extract import compute_bottlenecks

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpeg_bytes(320, 240, seed=3)[:200])
    copies = [tmp_path / "copy_a.png", tmp_path / "copy_b.png", tmp_path / "broken_again.jpg"]
    shutil.copy(images[0], copies[0])
    shutil.copy(images[0], copies[1])
    shutil.copy(broken, copies[2])
    paths = [images[0], *images[1:5], broken, *copies]
    cache = BottleneckCache(tmp_path / "cache", backbone.cache_id, backbone.feature_dim)
    vectors, ok, stats = compute_bottlenecks(paths, backbone, cache, batch_size=2)
    assert (stats.cached, stats.computed, stats.duplicates) == (0, 5, 2)
    assert ok.tolist() == [True] * 5 + [False, True, True, False]
    assert [path for path, _ in stats.skipped] == [broken, copies[2]]
    assert stats.skipped[0][1] == stats.skipped[1][1]
    np.testing.assert_array_equal(vectors[6], vectors[0])
    np.testing.assert_array_equal(vectors[7], vectors[0])


def test_copies_need_a_distortion(backbone, images: list[Path], tmp_path: Path) -> None:
    from retrain.extract import compute_bottlenecks

    cache = BottleneckCache(tmp_path / "cache", backbone.cache_id, backbone.feature_dim)
    with pytest.raises(RetrainError, match="--augmentation_copies needs a distortion"):
        compute_bottlenecks(images, backbone, cache, augmentation=Augmentation(), copies=2)
    with pytest.raises(RetrainError, match="--augmentation_copies must be >= 0"):
        compute_bottlenecks(images, backbone, cache, augmentation=AUGMENTATION, copies=-1)
