"""Progress: bars for loops a person waits on (rate and ETA on a terminal, silent otherwise), and
events for a program that watches a run (serve's job runner, through `retrain.job`).

`emit` hands an event (a small JSON-ready dict) to the one listener `listen` installed, if any:
the report functions emit what they print, and the bars emit their counts, at most ten times a
second, so a watcher sees the same progress a terminal shows.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from tqdm import tqdm

Event = dict
_listener: Callable[[Event], None] | None = None


def listen(listener: Callable[[Event], None] | None) -> None:
    """Sends every event of this process to `listener` (None: to nobody, the default)."""
    global _listener
    _listener = listener


def emit(event: Event) -> None:
    if _listener is not None:
        _listener(event)


class _Bar(tqdm):
    """A tqdm bar that also emits its count (tqdm calls `update` at most every `mininterval`)."""

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        emit({"phase": self.desc, "done": int(self.n), "total": self.total})
        return shown


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "") -> tqdm:
    """A tqdm bar on stderr, shown only when stderr is a terminal; counted for a listener either way."""
    shown = sys.stderr.isatty()
    return (_Bar if _listener is not None else tqdm)(
        iterable,
        total=total,
        desc=desc,
        unit="img",
        file=sys.stderr if shown or _listener is None else _Null(),
        disable=not shown and _listener is None,
        dynamic_ncols=True,
        leave=False,
    )


class _Null:
    """Where a bar nobody sees draws itself while a listener counts it."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
