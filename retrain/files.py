"""Writing files that other processes, and other users, read while we write them.

Every file retrain leaves behind (a bottleneck, converted weights, a report plot) is written to a
temporary name in its final folder and renamed into place, so a reader or a killed run sees either
the whole file or none. The temporary file is created with the mode any new file gets (0666 less
the umask), not `tempfile.mkstemp`'s 0600: left so, a weights file baked into a container image as
root would be unreadable by the image's unprivileged user, and a cache shared by two users private
to whichever wrote each entry. Creating it so, rather than chmod-ing it after, needs no reading of
the umask, which means setting it: with extraction writing from several threads, another thread's
file could be created under the momentary value.

Reading an image goes through `read_regular_file`: discovery keeps regular files only, and a file
swapped for a FIFO after it was found must not block the run on its open.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
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
    temporary = _new_file(path.parent, f".tmp-{stem[:40]}-", dot + extensions)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _new_file(folder: Path, prefix: str, suffix: str) -> Path:
    """A new empty file in `folder` under a name nobody else holds (processes on other machines
    may write the same shared folder), with the mode any new file gets."""
    while True:
        name = os.path.join(folder, f"{prefix}{secrets.token_hex(8)}{suffix}")
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return Path(name)


def read_regular_file(path: str | Path) -> bytes:
    """The bytes of the regular file at `path`; OSError for anything else (a FIFO, a device), which is
    opened without blocking and never read."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(descriptor, "rb", closefd=True) as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return file.read()
