"""A budget of memory for decoding images at once, so that decoding has a stated worst case.

Decoding an image and resizing it in float holds, at its peak, a number of bytes per pixel that
depends on the image's mode (the decoded image, its RGB conversion, the crop, its bands, one band in
float32): measured for 6000x6600 PNGs with serve.preprocess, rounded up, in BYTES_PER_PIXEL. A
thread asks for an image's cost, computed from its header before anything is decoded, and waits
until the decodes in flight leave room: small images decode side by side, large ones one after
another, and one that alone needs more than the whole budget is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Peak bytes per pixel by Pillow mode (measured: L 12.8, RGB 15.8, P with transparency 17.2, RGBA and
# LA 20.0, I;16 28.0); modes not listed cost the most.
BYTES_PER_PIXEL = {"1": 13, "L": 13, "RGB": 16, "YCbCr": 16, "CMYK": 20, "P": 18, "RGBA": 21, "LA": 21, "PA": 21}
WORST_BYTES_PER_PIXEL = 29


def decode_cost(width: int, height: int, mode: str) -> int:
    """Bytes an image of this size and Pillow mode holds at the peak of its preprocessing."""
    return width * height * BYTES_PER_PIXEL.get(mode, WORST_BYTES_PER_PIXEL)


class DecodeBudget:
    """A weighted semaphore over bytes of decoding memory."""

    def __init__(self, max_bytes: int):
        if max_bytes < 1:
            raise ValueError("a decoding budget must be positive")
        self.max_bytes = max_bytes
        self._free = max_bytes
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        """Waits until `cost` bytes are free, holds them for the block, then gives them back."""
        if cost > self.max_bytes:
            raise ValueError(f"{cost:,} bytes are more than the whole budget of {self.max_bytes:,}")
        with self._changed:
            self._changed.wait_for(lambda: self._free >= cost)
            self._free -= cost
        try:
            yield
        finally:
            with self._changed:
                self._free += cost
                self._changed.notify_all()

    @property
    def free_bytes(self) -> int:
        with self._changed:
            return self._free
