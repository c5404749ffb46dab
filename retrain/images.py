"""Discovery of folder-per-label image sets and their stable train/validation/test split.

The split follows TensorFlow's retrain.py: a file's set is decided by a hash of its name, so adding
images never moves existing ones from one set to another. Two changes from retrain.py: the hash
is of the path relative to `image_dir` (so `a/1.jpg` and `b/1.jpg` split independently), and a
class with at least three images always gets at least one validation and one test image.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from retrain.errors import RetrainError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"})
SPLITS = ("training", "validation", "testing")

# retrain.py's constant: the hash is reduced modulo this before becoming a percentage.
MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1
MIN_IMAGES_FOR_HOLDOUT = 3
FEW_IMAGES_WARNING = 20

_NOHASH = re.compile(r"_nohash_.*$")


@dataclass(frozen=True)
class Example:
    """One image file and the index of its label."""

    path: Path
    relpath: str
    label_index: int


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

    def count(self, split: str) -> int:
        return len(self.splits[split])

    def class_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.labels, 0)
        for examples in self.splits.values():
            for example in examples:
                counts[self.labels[example.label_index]] += 1
        return counts


def percentage_hash(relpath: str) -> float:
    """retrain.py's rule: a stable number in [0, 100] from the name, ignoring anything from `_nohash_`."""
    hash_name = _NOHASH.sub("", relpath)
    digest = hashlib.sha1(hash_name.encode("utf-8")).hexdigest()
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
    if not root.exists():
        raise RetrainError(f"--image_dir {image_dir} does not exist")
    if not root.is_dir():
        raise RetrainError(f"--image_dir {image_dir} is not a directory")
    if not 0 <= validation_percentage + testing_percentage < 100 or min(validation_percentage, testing_percentage) < 0:
        raise RetrainError("--validation_percentage and --testing_percentage must be >= 0 and sum to under 100")
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise RetrainError(f"cannot read --image_dir {image_dir}: {e.strerror}") from e

    files_by_label: dict[str, list[Path]] = {}
    ignored = 0
    empty: list[str] = []
    for folder in folders:
        images, others = _list_images(folder)
        ignored += others
        if images:
            files_by_label[folder.name] = images
        else:
            empty.append(folder.name)

    labels = sorted(files_by_label)
    if not labels:
        raise RetrainError(f"no class folders with images in {image_dir} (expected {image_dir}/<label>/<image>)")
    if len(labels) == 1:
        raise RetrainError(f"only one class ({labels[0]!r}) in {image_dir}; a classifier needs at least two")

    image_set = ImageSet(root, labels, {split: [] for split in SPLITS}, ignored, empty)
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


def _list_images(folder: Path) -> tuple[list[Path], int]:
    """Image files directly in `folder` (sorted), and how many other files were ignored."""
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as e:
        raise RetrainError(f"cannot read class folder {folder}: {e.strerror}") from e
    images = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
    return images, len(entries) - len(images)


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
