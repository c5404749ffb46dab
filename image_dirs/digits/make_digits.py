"""Writes scikit-learn's bundled handwritten digits as a small image folder for `retrain`.

`sklearn.datasets.load_digits` ships the 1,797 test images of the UCI "Optical Recognition of
Handwritten Digits" set (optdigits): 8x8 pixels, integer values 0..16. Each one is written as an
8-bit grayscale PNG at its native size, with values scaled as round(v * 255 / 16) so 0 is black
and 16 is white, to

    <out_dir>/<label>/digit_<index:04d>.png

where <label> is 0..9 and <index> is the image's row in `load_digits()`, so names are stable and
unique. Output is deterministic: the same scikit-learn data gives byte-identical files (Pillow
writes no timestamp or other metadata into a PNG unless asked to).

Usage (from the repository root):

    .venv/bin/python image_dirs/digits/make_digits.py [OUT_DIR]

OUT_DIR defaults to the folder this script sits in. Existing files of the same name are
overwritten; nothing else in OUT_DIR is touched.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

# load_digits pixel values run from 0 (background) to 16 (all 16 sub-pixels of a 4x4 block inked).
MAX_VALUE = 16

DEFAULT_OUT_DIR = Path(__file__).resolve().parent


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scales a 0..16 digit image to 0..255 as round(v * 255 / 16), as uint8."""
    if image.min() < 0 or image.max() > MAX_VALUE:
        raise ValueError(f"pixel values outside 0..{MAX_VALUE}: {image.min()}..{image.max()}")
    return np.rint(image.astype(np.float64) * 255.0 / MAX_VALUE).astype(np.uint8)


def file_name(index: int) -> str:
    """The stable file name of the image in row `index` of `load_digits()`."""
    return f"digit_{index:04d}.png"


def write_digits(out_dir: Path) -> Counter[int]:
    """Writes every digit under `out_dir/<label>/` and returns how many were written per label."""
    digits = load_digits()
    images: np.ndarray = digits.images
    labels: np.ndarray = digits.target
    counts: Counter[int] = Counter()
    for label in sorted({int(x) for x in labels}):
        (out_dir / str(label)).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = out_dir / str(int(label)) / file_name(index)
        Image.fromarray(to_uint8(image), mode="L").save(path, format="PNG")
        counts[int(label)] += 1
    return counts


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: parses the optional output folder and reports per-label counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out_dir",
        nargs="?",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help="folder to write <label>/digit_<index>.png into (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    counts = write_digits(args.out_dir)
    for label in sorted(counts):
        print(f"{label}: {counts[label]}")
    print(f"total: {sum(counts.values())} images in {args.out_dir}")


if __name__ == "__main__":
    main()
