"""Where retrain keeps things between runs (converted weights, bottlenecks, downloads)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from retrain.errors import RetrainError
from serve.text import printable


def user_cache_dir() -> Path:
    """`$RETRAIN_CACHE_DIR`, else `$XDG_CACHE_HOME/retrain`, else `~/.cache/retrain`."""
    explicit = os.environ.get("RETRAIN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "retrain"


def weights_cache_dir() -> Path:
    """Converted and downloaded backbone weights: `$RETRAIN_WEIGHTS_DIR`, else `<user cache>/weights`.

    Separate from the bottleneck cache so a container image can bake weights in at build time
    while its bottleneck cache lives on a volume.
    """
    explicit = os.environ.get("RETRAIN_WEIGHTS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return user_cache_dir() / "weights"


def check_writable(path: str | Path, flag: str) -> None:
    """RetrainError unless `path` can be written: an existing folder we can write into, or a path
    whose nearest existing ancestor is such a folder. Checked before any work; creates nothing."""
    target = Path(path).expanduser()
    folder = target if target.is_dir() else target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise RetrainError(f"{flag} {printable(path)} cannot be created: {printable(folder)} is not a directory")
    try:
        tempfile.TemporaryDirectory(dir=folder, prefix=".retrain-write-check-").cleanup()
    except OSError as e:
        raise RetrainError(f"{flag} {printable(path)} is not writable: {e.strerror or e}") from e
