"""Where retrain keeps things between runs (converted weights, bottlenecks, downloads)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """`$RETRAIN_CACHE_DIR`, else `$XDG_CACHE_HOME/retrain`, else `~/.cache/retrain`."""
    explicit = os.environ.get("RETRAIN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "retrain"


def weights_cache_dir() -> Path:
    """Converted and downloaded backbone weights."""
    return user_cache_dir() / "weights"
