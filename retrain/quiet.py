"""Importing TensorFlow without its start-up chatter on stderr.

TensorFlow 2.20+ logs oneDNN and CUDA notices through absl before any log level applies, so
`TF_CPP_MIN_LOG_LEVEL` cannot hide them; the only way is to point file descriptor 2 elsewhere
while the import runs. `--verbose` skips this.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager


@contextmanager
def stderr_silenced():
    """Sends the process's stderr (fd 2, C++ included) to /dev/null inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device start-up logs its CUDA probe here
