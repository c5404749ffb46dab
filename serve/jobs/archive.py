"""A job's images: a zip of folder-per-label images, unpacked into the job's scratch folder only.

The zip comes from a stranger, so nothing in it is trusted: member names are checked before
anything is written (no absolute paths, no `..`, no drive letters or backslashes, no control
characters, nothing but regular files and folders: links and devices are refused), the counts and
sizes are bounded before and while unpacking (a member's bytes are counted as they come out, not
taken from its header), and a member that inflates more than `max_ratio` times is a bomb. Each
refusal is one line, and the caller deletes the scratch folder. The layout is retrain's:
`<label>/<image>`, or the same under one top folder.
"""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from serve.text import is_printable, printable

CHUNK = 1 << 20


class ArchiveError(ValueError):
    """The upload cannot be a job's images; the message says why (HTTP 400 or 413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ArchiveLimits:
    """Each is a serve flag of the same name (README, "Training through the server")."""

    max_files: int = 20_000
    max_unpacked_bytes: int = 2 * 2**30
    max_ratio: int = 200  # a member's unpacked size over its compressed size


def unpack(archive: Path, destination: Path, limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """Unpacks the images of `archive` into `destination` (which must be empty); returns the image
    folder: `destination`, or its one top folder when every member is under it."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [_checked(info) for info in zipped.infolist()]
            files = [info for info in members if not info.is_dir()]
            if not files:
                raise ArchiveError("the zip holds no files; send a zip of folders of images, one folder per label")
            if len(files) > limits.max_files:
                raise ArchiveError(
                    f"the zip holds {len(files)} files; at most {limits.max_files} (--max_job_files)", 413
                )
            declared = sum(info.file_size for info in files)
            if declared > limits.max_unpacked_bytes:
                raise ArchiveError(_too_big(limits), 413)
            written = 0
            for info in files:
                written += _extract(zipped, info, destination, limits, limits.max_unpacked_bytes - written)
    except zipfile.BadZipFile as e:
        raise ArchiveError(f"the upload is not a zip file ({e})") from e
    except (zipfile.LargeZipFile, NotImplementedError, RuntimeError) as e:  # zip64 limits, methods, encryption
        raise ArchiveError(f"the zip cannot be read: {e}") from e
    except OSError as e:  # a member named twice, or a file where a folder must go
        raise ArchiveError(f"the zip cannot be unpacked: {e.strerror or e}") from e
    tops = {PurePosixPath(info.filename).parts[0] for info in members}
    only = next(iter(tops))
    image_dir = destination
    if len(tops) == 1 and (destination / only).is_dir() and any(p.is_dir() for p in (destination / only).iterdir()):
        image_dir = destination / only
    classes = [
        folder for folder in image_dir.iterdir() if folder.is_dir() and any(f.is_file() for f in folder.iterdir())
    ]
    if len(classes) < 2:
        raise ArchiveError(
            f"the zip has {len(classes)} label folder with files; a model needs at least two "
            "(<label>/<image>, one folder per label)"
        )
    return image_dir


def _checked(info: zipfile.ZipInfo) -> zipfile.ZipInfo:
    """The member, if its name and type are safe to unpack; ArchiveError naming it otherwise."""
    name = info.filename
    shown = printable(name)
    if info.flag_bits & 0x1:
        raise ArchiveError(f"zip member {shown!r} is encrypted")
    if not name or "\\" in name or not is_printable(name) or name.startswith("/") or ":" in name.split("/")[0]:
        raise ArchiveError(f"zip member {shown!r} has a name that is not a relative path")
    parts = PurePosixPath(name).parts
    if any(part in ("..", ".") for part in parts) or ".." in name.split("/"):
        raise ArchiveError(f"zip member {shown!r} points outside the upload ('..')")
    kind = stat.S_IFMT(info.external_attr >> 16)  # Unix zips say a member's type; 0: not said, a file
    if info.create_system == 3 and kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        mode = kind
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise ArchiveError(f"zip member {shown!r} is {kind}")
    return info


def _extract(
    zipped: zipfile.ZipFile, info: zipfile.ZipInfo, destination: Path, limits: ArchiveLimits, left: int
) -> int:
    """Writes one member, counting what it really inflates to; returns its size."""
    target = destination.joinpath(*PurePosixPath(info.filename).parts)
    if destination.resolve() not in target.resolve().parents:  # belt and braces after _checked
        raise ArchiveError(f"zip member {printable(info.filename)!r} points outside the upload")
    target.parent.mkdir(parents=True, exist_ok=True)
    bound = min(left, max(info.compress_size, 1) * limits.max_ratio)
    written = 0
    with zipped.open(info) as source, open(target, "xb") as sink:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > left:
                raise ArchiveError(_too_big(limits), 413)
            if written > bound:
                raise ArchiveError(
                    f"zip member {printable(info.filename)!r} inflates more than {limits.max_ratio} times "
                    f"(--max_job_ratio): refused as a zip bomb",
                    413,
                )
            sink.write(chunk)
    return written


def _too_big(limits: ArchiveLimits) -> str:
    return f"the zip unpacks to more than {limits.max_unpacked_bytes // 2**20} MiB (--max_job_mb)"
