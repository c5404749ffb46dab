"""Importing TensorFlow without its start-up chatter on stderr, and only when a step needs it.

TensorFlow 2.20+ logs oneDNN and CUDA notices through absl before any log level applies, so
`TF_CPP_MIN_LOG_LEVEL` cannot hide them; the only way is to point file descriptor 2 elsewhere
while the import runs. Importing it costs seconds and half a gigabyte, so retrain imports it
lazily: every step that needs it (building a backbone, converting one, an export through
TensorFlow, TensorBoard summaries) calls `import_tensorflow_quietly` first, and a rerun on cached
bottlenecks never does. `--verbose` calls `show_tensorflow_logs`.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext

from serve.quiet import stderr_silenced

_show_logs = False


def show_tensorflow_logs() -> None:
    """Lets TensorFlow's import print what it prints (for `--verbose`)."""
    global _show_logs
    _show_logs = True


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow (once per process) with stderr silenced, unless logs were asked for."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with nullcontext() if _show_logs else stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device start-up logs its CUDA probe here
