"""Discovery and the stable hash split (retrain.py's rule, on paths relative to image_dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrain.errors import RetrainError
from retrain.images import SPLITS, discover, percentage_hash, which_split


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _split_of(image_set) -> dict[str, str]:
    return {e.relpath: split for split in SPLITS for e in image_set.splits[split]}


def test_labels_are_sorted_folder_names_and_extensions_any_case(tmp_path: Path) -> None:
    for name in ["b/1.JPG", "b/2.jpeg", "b/3.Png", "a/4.gif", "a/5.BMP", "a/6.webp", "a/notes.txt", "c/.hidden.jpg"]:
        _touch(tmp_path / name)
    _touch(tmp_path / "README.md")  # files directly in image_dir belong to no label
    image_set = discover(tmp_path)
    assert image_set.labels == ["a", "b"]
    assert image_set.empty_folders == ["c"]
    assert image_set.ignored_files == 1
    assert sorted(_split_of(image_set)) == ["a/4.gif", "a/5.BMP", "a/6.webp", "b/1.JPG", "b/2.jpeg", "b/3.Png"]


def test_split_matches_retrain_py_rule_and_nohash() -> None:
    # The same hash as retrain.py's: sha1 of the name, modulo 2**27, as a percentage.
    assert (
        percentage_hash("daisy/a_nohash_1.jpg") == percentage_hash("daisy/a_nohash_2.jpg") == percentage_hash("daisy/a")
    )
    assert percentage_hash("daisy/a.jpg") != percentage_hash("roses/a.jpg")
    splits = {which_split(f"x/{i}.jpg", 10, 10) for i in range(200)}
    assert splits == set(SPLITS)


def test_split_fractions_and_stability_when_images_are_added(tmp_path: Path) -> None:
    for label in ("cat", "dog"):
        for i in range(300):
            _touch(tmp_path / label / f"{i}.jpg")
    before = _split_of(discover(tmp_path))
    counts = {split: list(before.values()).count(split) for split in SPLITS}
    assert 400 < counts["training"] < 560 and 30 < counts["validation"] < 90 and 30 < counts["testing"] < 90
    for i in range(300, 400):
        _touch(tmp_path / "cat" / f"{i}.jpg")
    after = _split_of(discover(tmp_path))
    assert all(after[name] == split for name, split in before.items())


def test_every_class_with_three_images_gets_validation_and_test(tmp_path: Path) -> None:
    for label in "abcdefghij":
        for i in range(3):
            _touch(tmp_path / label / f"{i}.png")
    image_set = discover(tmp_path)
    for index in range(10):
        for split in SPLITS:
            assert any(e.label_index == index for e in image_set.splits[split]), (index, split)
    assert image_set.few_image_classes == list("abcdefghij")


def test_tiny_classes_train_on_what_they_have_and_are_named(tmp_path: Path) -> None:
    _touch(tmp_path / "one" / "1.png")
    for i in range(2):
        _touch(tmp_path / "two" / f"{i}.png")
    for i in range(30):
        _touch(tmp_path / "many" / f"{i}.png")
    image_set = discover(tmp_path)
    assert image_set.small_classes == ["one", "two"]
    training_labels = {image_set.labels[e.label_index] for e in image_set.splits["training"]}
    assert {"one", "two", "many"} <= training_labels
    assert image_set.class_counts() == {"many": 30, "one": 1, "two": 2}


def test_zero_percentages_leave_holdouts_empty(tmp_path: Path) -> None:
    for label in ("a", "b"):
        for i in range(10):
            _touch(tmp_path / label / f"{i}.png")
    image_set = discover(tmp_path, validation_percentage=0, testing_percentage=0)
    assert image_set.count("training") == 20 and image_set.count("validation") == image_set.count("testing") == 0


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (None, "does not exist"),
        ([], "no class folders"),
        (["only/1.png", "only/2.png"], "only one class"),
        (["a/notes.txt", "b/x.csv"], "no class folders"),
    ],
)
def test_unusable_image_dirs_raise_one_clear_error(tmp_path: Path, layout, message: str) -> None:
    root = tmp_path / "images"
    if layout is not None:
        root.mkdir()
        for name in layout:
            _touch(root / name)
    with pytest.raises(RetrainError, match=message):
        discover(root)


def test_image_dir_that_is_a_file(tmp_path: Path) -> None:
    with pytest.raises(RetrainError, match="not a directory"):
        discover(_touch(tmp_path / "file.jpg"))
