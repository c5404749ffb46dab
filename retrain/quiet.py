"""Importing TensorFlow without its start-up chatter on stderr.

TensorFlow 2.20+ logs oneDNN and CUDA notices through absl before any log level applies, so
`TF_CPP_MIN_LOG_LEVEL` cannot hide them; the only way is to point file descriptor 2 elsewhere
while the import runs. `--verbose` skips this.
"""

from __future__ import annotations

import os

from serve.quiet import stderr_silenced


def import_tensorflow_quietly() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device start-up logs its CUDA probe here
