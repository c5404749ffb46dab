"""The one preprocessing function: modes, orientation, the whole image sampled bilinearly, and undecodable files."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from serve.model_info import ModelDirError, ModelInfo, read_model_info
from serve.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    InputSpec,
    NotAnImageError,
    decode_image,
    preprocess,
    resize_for_model,
)

from .conftest import DIGITS, jpeg_bytes

SPEC = InputSpec(height=32, width=32, mean=127.0, std=128.0)


def _encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (20, 10), (255, 0, 0, 128)),
        Image.new("P", (20, 10), 3),
        Image.new("L", (20, 10), 200),
        Image.new("LA", (20, 10), (10, 255)),
        Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16)),
    ],
    ids=["RGBA", "P", "L", "LA", "I;16"],
)
def test_any_mode_becomes_rgb(image: Image.Image) -> None:
    pixels = preprocess(_encode(image), SPEC)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0


def test_cmyk_jpeg_and_sixteen_bit_levels() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    red = decode_image(_encode(cmyk, "JPEG"))
    assert red.mode == "RGB" and red.getpixel((8, 8))[0] > 200 and red.getpixel((8, 8))[1] < 60
    gray16 = decode_image(_encode(Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))))
    assert gray16.getpixel((1, 1)) == (255, 255, 255)


def test_transparency_is_composited_on_white() -> None:
    clear = decode_image(_encode(Image.new("RGBA", (4, 4), (0, 0, 0, 0))))
    assert clear.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    wide = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    upright = decode_image(_encode(wide, "JPEG", exif=exif.tobytes()))
    assert upright.size == (20, 40)


def test_the_whole_image_is_stretched_corners_on_corners_in_thirty_seconds_of_a_pixel() -> None:
    """A 3x2 image to 4x4: output (i, j) samples the source at (i * 2/4, j * 3/4), each rounded to 1/32
    pixel, the last row and column repeated beyond the edge; halves round up."""
    source = np.array([[0, 100, 200], [40, 140, 240]], np.uint8)
    image = Image.fromarray(np.repeat(source[..., None], 3, axis=2))
    got = resize_for_model(image, InputSpec(4, 4, 0.0, 1.0))[..., 0]
    columns = [0, 75, 150, 200]  # at x = 0, 0.75, 1.5 and 2.25 (past the last column: 200)
    expected = np.array([[c + 40 * y for c in columns] for y in (0, 0.5, 1, 1)])  # y = 0, 0.5, 1, 1.5
    np.testing.assert_array_equal(got, expected)
    thirds = Image.fromarray(np.repeat(np.array([[0, 255, 255]], np.uint8)[..., None], 3, axis=2))
    # x = 1/3 is rounded to 11/32: 255 * 11/32 = 87.66 -> 88; 2/3 -> 21/32: 167.34 -> 167
    got = resize_for_model(thirds, InputSpec(1, 9, 0.0, 1.0))[0, :, 0]
    np.testing.assert_array_equal(got, [0, 88, 167, 255, 255, 255, 255, 255, 255])


def test_the_aspect_ratio_is_not_kept_nor_the_image_cropped() -> None:
    """A wide picture's left and right edges reach the model's edges: nothing is cut off."""
    pixels = np.zeros((30, 90, 3), np.uint8)
    pixels[:, :3] = 255  # a white stripe at the very left
    got = resize_for_model(Image.fromarray(pixels), InputSpec(32, 32, 0.0, 1.0))
    assert (got[:, 0] == 255).all() and (got[:, 2:] == 0).all()


@pytest.mark.parametrize(
    "data",
    [
        (DIGITS / "3" / "digit_0003.png").read_bytes(),
        jpeg_bytes(500, 375, seed=1),
        _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (17, 33, 3), dtype=np.uint8))),
    ],
    ids=["digit-png", "photo-jpeg", "odd-size-png"],
)
def test_the_savedmodels_tensorflow_preprocessing_matches_pillow(data: bytes) -> None:
    import tensorflow as tf

    from retrain.tensorflow_export import decode_and_preprocess

    spec = InputSpec(224, 224, 127.0, 128.0)
    pillow = preprocess(data, spec)
    tensorflow = decode_and_preprocess(tf.constant(data), spec).numpy()
    # Identical but for float ties that round the other way: at most one 8-bit level, rarely.
    assert np.abs(pillow - tensorflow).max() <= 1 / spec.std + 1e-6
    assert np.mean(np.abs(pillow - tensorflow) > 1e-5) < 1e-3


def test_digits_are_upscaled_without_crop_and_normalised() -> None:
    data = (DIGITS / "0" / "digit_0000.png").read_bytes()
    spec = InputSpec(224, 224, 127.0, 128.0)
    raw = resize_for_model(decode_image(data), spec)
    assert raw.shape == (224, 224, 3) and raw.dtype == np.uint8
    np.testing.assert_allclose(preprocess(data, spec), (raw.astype(np.float32) - 127) / 128)


def test_a_large_jpeg_is_decoded_at_full_size() -> None:
    """No draft mode: the sampled pixels are the full-size image's, as a client's are."""
    image = decode_image(jpeg_bytes(2000, 1500, seed=3))
    assert image.size == (2000, 1500)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", NotAnImageError),
        (b"this is a text file named photo.jpg\n", NotAnImageError),
        (jpeg_bytes()[:200], ImageDecodeError),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, ImageDecodeError),
    ],
    ids=["empty", "text", "truncated-jpeg", "broken-png"],
)
def test_undecodable_bytes_raise_image_decode_error(data: bytes, error: type) -> None:
    with pytest.raises(error):
        preprocess(data, SPEC)


def test_decompression_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    import serve.preprocess

    monkeypatch.setattr(serve.preprocess, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLargeError, match="more than 1,000"):
        preprocess(_encode(Image.new("L", (100, 100))), SPEC)
    with pytest.raises(ImageTooLargeError, match="more than 50"):
        preprocess(_encode(Image.new("L", (10, 10))), SPEC, max_pixels=50)


def test_exports_of_preprocessing_version_1_are_still_served_with_its_steps(tmp_path) -> None:
    """Version 1 (before MediaPipe's contract): the central square, 87.5% of the shorter side, bicubic.
    A frame painted outside that square changes nothing there, and everything in version 2."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)
    framed = pixels.copy()
    framed[:10], framed[-10:], framed[:, :30], framed[:, -30:] = 255, 255, 255, 255  # the square is 140 wide
    legacy = InputSpec(32, 32, 127.0, 128.0, preprocessing=1)
    plain, painted = (preprocess(_encode(Image.fromarray(p)), legacy) for p in (pixels, framed))
    np.testing.assert_array_equal(plain, painted)
    assert not np.array_equal(
        preprocess(_encode(Image.fromarray(pixels)), SPEC), preprocess(_encode(Image.fromarray(framed)), SPEC)
    )

    labels = ["a", "b"]
    for version, expected in ((1, 1), (2, 2)):
        info = ModelInfo(labels, replace(SPEC, preprocessing=version), "lite0", preprocessing_version=version)
        info.write(tmp_path)
        assert read_model_info(tmp_path).input_spec.preprocessing == expected
    data = json.loads((tmp_path / "model.json").read_text())
    data["input"]["preprocessing_version"] = 3
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="preprocessing version 3, which this serve does not know"):
        read_model_info(tmp_path)
