"""Shared fixtures: small real image sets made from the bundled digits, and helpers to make bad files."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from retrain.pipeline import RunResult

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "image_dirs" / "digits"


def copy_digits(destination: Path, labels: list[str], per_class: int | None = None) -> Path:
    """A copy of some digit classes (the first `per_class` files of each) under `destination`."""
    for label in labels:
        files = sorted((DIGITS / label).glob("*.png"))[:per_class]
        (destination / label).mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copy(file, destination / label / file.name)
    return destination


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """A real JPEG of random smooth colour, for tests that need photo-like files."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def tiny_digits(tmp_path: Path) -> Path:
    """Three digit classes, 12 images each: enough to train and export quickly."""
    return copy_digits(tmp_path / "digits", ["0", "1", "7"], per_class=12)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, str, Path]:
    """The demo job: all 1,797 digits, default flags, a fresh bottleneck cache; shared by the session.

    Returns (result, printed log, root folder with `models/` and `cache/`).
    """
    from retrain.pipeline import RetrainConfig, run

    root = tmp_path_factory.mktemp("digits_run")
    config = RetrainConfig(image_dir=str(DIGITS), models_dir=str(root / "models"), bottleneck_dir=str(root / "cache"))
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        result = run(config)
    return result, log.getvalue(), root


# --- programs from Debian packages ----------------------------------------------------------------


def debian_tool(program: str, package: str) -> str:
    """The path of `program`, installing Debian's `package` with apt-get when it is missing (CI runs
    as root on a fresh machine). Skips, naming the package, where that install cannot run."""
    found = shutil.which(program)
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip(f"{program} is missing and cannot be installed here: needs `apt-get install {package}` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    found = shutil.which(program)
    if not found:
        pytest.skip(f"{program}: `apt-get install {package}` failed: {result.stderr.strip()[-300:]}")
    return found
