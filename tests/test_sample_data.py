"""The bundled digits are scikit-learn's real ones, and the script that wrote them reproduces them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from .conftest import DIGITS


def test_digits_are_1797_grayscale_8x8_pngs_in_ten_folders() -> None:
    files = sorted(DIGITS.glob("*/*.png"))
    assert len(files) == 1797
    assert sorted({f.parent.name for f in files}) == [str(d) for d in range(10)]
    for file in files[::50]:
        with Image.open(file) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (8, 8))


def test_make_digits_rewrites_the_same_bytes(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(DIGITS / "make_digits.py"), str(tmp_path)], check=True, capture_output=True)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.glob("*/*.png"))
    assert written == sorted(p.relative_to(DIGITS) for p in DIGITS.glob("*/*.png"))
    assert all((tmp_path / p).read_bytes() == (DIGITS / p).read_bytes() for p in written)
