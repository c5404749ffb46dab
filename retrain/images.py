"""Discovery of folder-per-label image sets and their stable train/validation/test split.

The split follows TensorFlow's retrain.py: a file's set is decided by a hash of its name, so adding
images never moves existing ones from one set to another. Two changes from retrain.py: the hash
is of the path relative to `image_dir` (so `a/1.jpg` and `b/1.jpg` split independently), and a
class with at least three images always gets at least one validation and one test image.

A name is whatever bytes the archive held. The hash is of the OS's bytes (UTF-8 for any valid name,
so splits are retrain.py's), labels must be printable text (they end up one a line in labels.txt,
in logs and in plots), and whatever discovery leaves out is named in `ImageSet.skipped`: hidden
entries, links to a class folder already found, FIFOs, sockets and devices (never opened: opening a
FIFO blocks until someone writes to it), folders inside class folders, images beside the class
folders (other files there, a README or a script, are not taken for anything and not named).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from retrain.errors import RetrainError
from serve.text import is_printable, printable

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"})
SPLITS = ("training", "validation", "testing")

# retrain.py's constant: the hash is reduced modulo this before becoming a percentage.
MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1
MIN_IMAGES_FOR_HOLDOUT = 3
FEW_IMAGES_WARNING = 20

_NOHASH = re.compile(r"_nohash_.*$")
_FOLDER, _FILE = "folder", "file"  # kinds of entry that discovery keeps; anything else is a reason to skip
HIDDEN = "hidden: the name starts with '.'"
LOOSE_IMAGE = "an image beside the class folders, in no class"
NESTED_FOLDER = "a folder inside a class folder: not searched"
_SPECIAL_FILES = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


@dataclass(frozen=True)
class Example:
    """One image file and the index of its label."""

    path: Path
    relpath: str
    label_index: int


@dataclass(frozen=True)
class Skipped:
    """An entry under `image_dir` that discovery left out: its path relative to `image_dir` (raw:
    escape it with `serve.text.printable` to print it) and why."""

    relpath: str
    reason: str


@dataclass
class ImageSet:
    """The labels (sorted folder names) and each split's examples."""

    image_dir: Path
    labels: list[str]
    splits: dict[str, list[Example]]
    ignored_files: int = 0
    empty_folders: list[str] = field(default_factory=list)
    small_classes: list[str] = field(default_factory=list)  # too few images for a hold-out split
    few_image_classes: list[str] = field(default_factory=list)  # under FEW_IMAGES_WARNING
    skipped: list[Skipped] = field(default_factory=list)  # entries left out, other than non-image files

    def count(self, split: str) -> int:
        return len(self.splits[split])

    def class_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.labels, 0)
        for examples in self.splits.values():
            for example in examples:
                counts[self.labels[example.label_index]] += 1
        return counts


def percentage_hash(relpath: str) -> float:
    """retrain.py's rule: a stable number in [0, 100] from the name, ignoring anything from `_nohash_`.
    The name's bytes are the OS's (`os.fsencode`): UTF-8 for a valid name, the archive's own bytes for
    one that is not (`caf\\xe9.png`), which UTF-8 cannot encode."""
    hash_name = _NOHASH.sub("", relpath)
    digest = hashlib.sha1(os.fsencode(hash_name)).hexdigest()
    return (int(digest, 16) % (MAX_NUM_IMAGES_PER_CLASS + 1)) * (100.0 / MAX_NUM_IMAGES_PER_CLASS)


def which_split(relpath: str, validation_percentage: float, testing_percentage: float) -> str:
    """The split a file belongs to, by its hash alone."""
    value = percentage_hash(relpath)
    if value < validation_percentage:
        return "validation"
    if value < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def discover(image_dir: str | Path, validation_percentage: float = 10, testing_percentage: float = 10) -> ImageSet:
    """Finds `image_dir/<label>/<image>` files and splits them; raises RetrainError on unusable input."""
    root = Path(image_dir).expanduser()
    shown = printable(image_dir)
    if not root.exists():
        raise RetrainError(f"--image_dir {shown} does not exist")
    if not root.is_dir():
        raise RetrainError(f"--image_dir {shown} is not a directory")
    if not 0 <= validation_percentage + testing_percentage < 100 or min(validation_percentage, testing_percentage) < 0:
        raise RetrainError("--validation_percentage and --testing_percentage must be >= 0 and sum to under 100")
    folders, skipped = _class_folders(root)

    files_by_label: dict[str, list[Path]] = {}
    ignored = 0
    empty: list[str] = []
    for folder in folders:
        images, others, left_out = _list_images(folder, root)
        ignored += others
        skipped += left_out
        if images:
            files_by_label[folder.name] = images
        else:
            empty.append(folder.name)

    labels = sorted(files_by_label)
    _check_labels(labels, shown)
    if not labels:
        raise RetrainError(f"no class folders with images in {shown} (expected {shown}/<label>/<image>)")
    if len(labels) == 1:
        raise RetrainError(f"only one class ('{labels[0]}') in {shown}; a classifier needs at least two")

    image_set = ImageSet(root, labels, {split: [] for split in SPLITS}, ignored, empty, skipped=skipped)
    for index, label in enumerate(labels):
        examples = [Example(path, path.relative_to(root).as_posix(), index) for path in files_by_label[label]]
        if len(examples) < MIN_IMAGES_FOR_HOLDOUT:
            image_set.small_classes.append(label)
            image_set.splits["training"].extend(examples)
            continue
        if len(examples) < FEW_IMAGES_WARNING:
            image_set.few_image_classes.append(label)
        for split, members in _split_class(examples, validation_percentage, testing_percentage).items():
            image_set.splits[split].extend(members)
    return image_set


def _check_labels(labels: list[str], image_dir: str) -> None:
    """A label is a folder's name, and ends up one a line in labels.txt and in every log: a name with a
    newline, an escape sequence or bytes that are not UTF-8 is refused, named, before any work."""
    bad = [label for label in labels if not is_printable(label)]
    if bad:
        raise RetrainError(
            f"class folder '{printable(bad[0])}' in {image_dir} is not printable text (it holds control, format or "
            f"non-UTF-8 characters; labels are written one a line and printed): rename it"
        )


def _class_folders(root: Path) -> tuple[list[Path], list[Skipped]]:
    """The folders directly in `root` (sorted; a link to a folder already among them left out), and
    the other entries there that are left out, with why (regular files that are not images are not)."""
    folders: list[os.DirEntry] = []
    skipped: list[Skipped] = []
    for entry, kind in _entries(root, f"--image_dir {printable(root)}"):
        if kind == _FOLDER:
            folders.append(entry)
        elif kind != _FILE:
            skipped.append(Skipped(entry.name, kind))
        elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            skipped.append(Skipped(entry.name, LOOSE_IMAGE))
    kept, duplicates = _distinct(folders)
    return kept, skipped + duplicates


def _distinct(folders: list[os.DirEntry]) -> tuple[list[Path], list[Skipped]]:
    """Each directory once: of several names for one (a symlinked class folder), the real folder is
    kept, else the first name; the others would be the same images under a second label."""
    by_identity: dict[tuple[int, int], list[os.DirEntry]] = {}
    for entry in folders:
        info = entry.stat()  # cached by `_kind`, links followed
        by_identity.setdefault((info.st_dev, info.st_ino), []).append(entry)
    kept, duplicates = [], []
    for names in by_identity.values():
        first = min(names, key=lambda entry: (entry.is_symlink(), entry.name))
        kept.append(Path(first.path))
        reason = f"the same folder as class folder '{printable(first.name)}'"
        duplicates += [Skipped(entry.name, reason) for entry in names if entry is not first]
    return sorted(kept), sorted(duplicates, key=lambda skipped: skipped.relpath)


def _list_images(folder: Path, root: Path) -> tuple[list[Path], int, list[Skipped]]:
    """Image files directly in `folder` (sorted), how many other files were ignored (by extension),
    and the entries that are not files, or hidden."""
    images: list[Path] = []
    ignored = 0
    skipped: list[Skipped] = []
    for entry, kind in _entries(folder, f"class folder {printable(folder)}"):
        path = Path(entry.path)
        if kind != _FILE:
            reason = NESTED_FOLDER if kind == _FOLDER else kind
            skipped.append(Skipped(path.relative_to(root).as_posix(), reason))
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            ignored += 1
    return images, ignored, skipped


def _entries(folder: Path, what: str) -> list[tuple[os.DirEntry, str]]:
    """The entries of `folder` by name, each with its kind: a folder, a regular file, or why it is left
    out. Nothing is opened, only stat'ed (links followed)."""
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as e:
        raise RetrainError(f"cannot read {what}: {e.strerror}") from e
    return [(entry, _kind(entry)) for entry in entries]


def _kind(entry: os.DirEntry) -> str:
    if entry.name.startswith("."):
        return HIDDEN
    try:
        mode = entry.stat().st_mode
    except OSError as e:
        return "a link to nothing (broken, or a loop)" if entry.is_symlink() else f"unreadable: {e.strerror}"
    if stat.S_ISDIR(mode):
        return _FOLDER
    if stat.S_ISREG(mode):
        return _FILE
    return f"not a regular file: {_SPECIAL_FILES.get(stat.S_IFMT(mode), 'not a file')}"


def _split_class(
    examples: list[Example], validation_percentage: float, testing_percentage: float
) -> dict[str, list[Example]]:
    """Hash split of one class; an empty hold-out set borrows the training image hashed nearest to it."""
    members: dict[str, list[Example]] = {split: [] for split in SPLITS}
    for example in examples:
        members[which_split(example.relpath, validation_percentage, testing_percentage)].append(example)
    if not members["training"]:
        # Every class must be learnable: take back the hold-out image hashed furthest from its set's start.
        donor = max(("validation", "testing"), key=lambda split: len(members[split]))
        returned = max(members[donor], key=lambda e: percentage_hash(e.relpath))
        members[donor].remove(returned)
        members["training"].append(returned)
    for split, percentage in (("validation", validation_percentage), ("testing", testing_percentage)):
        if percentage > 0 and not members[split] and len(members["training"]) > 1:
            # Training images hash above validation+testing; the lowest is the one closest to a hold-out set.
            borrowed = min(members["training"], key=lambda e: percentage_hash(e.relpath))
            members["training"].remove(borrowed)
            members[split].append(borrowed)
    return members


def limit_training(
    image_set: ImageSet, fraction: float | None = None, per_class: int | None = None, seed: int = 0
) -> ImageSet:
    """Keeps a seeded random subset of each class's training images: `fraction` of them (at least
    one), or at most `per_class`. Validation and test images are untouched, so runs with less
    training data are scored on the same hold-out images as the full run."""
    if fraction is None and per_class is None:
        return image_set
    rng = np.random.default_rng(seed)
    kept: list[Example] = []
    for index in range(len(image_set.labels)):
        members = [e for e in image_set.splits["training"] if e.label_index == index]
        count = max(1, round(fraction * len(members))) if fraction is not None else per_class
        chosen = sorted(rng.permutation(len(members))[: min(count, len(members))])
        kept += [members[i] for i in chosen]
    return replace(image_set, splits={**image_set.splits, "training": kept})
