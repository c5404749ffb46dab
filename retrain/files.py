"""Writing files that other processes, and other users, read while we write them.

Every file retrain leaves behind (a bottleneck, converted weights, a report plot) is written to a
temporary name in its final folder and renamed into place, so a reader or a killed run sees either
the whole file or none. `tempfile.mkstemp` creates that file with mode 0600; left so, a weights
file baked into a container image as root is unreadable by the image's unprivileged user, and a
cache shared by two users is private to whichever wrote each entry. So the file gets the mode any
new file would get (0666 less the umask) before it is renamed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write; on success it replaces `path` atomically.

    On any failure the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    stem, dot, extensions = path.name.partition(".")  # keeps ".weights.h5" whole: Keras checks it
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{stem[:40]}-", suffix=dot + extensions)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
