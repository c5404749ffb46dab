"""Progress bars for loops a person waits on: rate and ETA on a terminal, silent otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "") -> tqdm:
    """A tqdm bar on stderr, shown only when stderr is a terminal."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit="img",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
        leave=False,
    )
