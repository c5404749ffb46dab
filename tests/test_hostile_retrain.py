"""retrain against hostile folders: names that are not UTF-8 or not printable, special files, symlinked
classes, images whose decoding alone would exhaust memory, two runs exporting to one folder, and
classes without test images. Real image files, real runs (the default backbone, on LiteRT)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrain import report
from retrain.cache import BottleneckCache
from retrain.errors import RetrainError
from retrain.export import export_lock
from retrain.images import HIDDEN, LOOSE_IMAGE, MAX_NUM_IMAGES_PER_CLASS, NESTED_FOLDER, discover, which_split
from retrain.metrics import ClassMetrics, format_per_class, macro_f1
from retrain.pipeline import RetrainConfig, run
from retrain.train import HParams
from serve.budget import DecodeBudget
from serve.text import printable

from .conftest import DIGITS, REPO, copy_digits, wait_for

RETRAIN = [sys.executable, "-m", "retrain"]
STEPS = "100"
LITE0 = ["--architecture", "efficientnet_lite0"]  # auto adds Lite2 for so few images: not what these test
GIB = 2**30


def retrain_cli(images: Path, tmp_path: Path, *flags: str) -> tuple[int, str, str]:
    """The real command line in a fresh process: (exit code, stdout, stderr), both decoded as strict
    UTF-8 (a raw name that is not would fail here)."""
    args = ["--image_dir", str(images), "--bottleneck_dir", str(tmp_path / "cache")]
    args += ["--output_dir", str(tmp_path / "model"), "--how_many_training_steps", STEPS, *LITE0, *flags]
    completed = subprocess.run([*RETRAIN, *args], capture_output=True, timeout=600, cwd=REPO)
    return completed.returncode, completed.stdout.decode("utf-8"), completed.stderr.decode("utf-8")


def assert_no_raw_controls(text: str) -> None:
    """Every line is visible text: no ESC, OSC, CR, bell or other control or format character."""
    for line in text.splitlines():
        assert line.isprintable(), repr(line)


def names_in_split(folder: str, stem: str, split: str, count: int) -> list[str]:
    """`count` file names `<stem><n>.png` that the hash puts in `split` when inside `folder`."""
    names = (f"{stem}{n}.png" for n in range(10_000))
    return [name for name in names if which_split(f"{folder}/{name}", 10, 10) == split][:count]


def load_model_json(export: Path) -> dict:
    return json.loads((export / "model.json").read_text())


# --- 13: file names that are not UTF-8 ----------------------------------------------------------------


def test_split_hash_is_of_the_os_bytes_and_unchanged_for_utf8_names() -> None:
    from retrain.images import percentage_hash

    def by_bytes(name: bytes) -> float:
        value = int(hashlib.sha1(name).hexdigest(), 16) % (MAX_NUM_IMAGES_PER_CLASS + 1)
        return value * (100.0 / MAX_NUM_IMAGES_PER_CLASS)

    assert percentage_hash("roses/café.jpg") == by_bytes("roses/café.jpg".encode())  # retrain.py's split
    assert percentage_hash("roses/caf\udce9.jpg") == by_bytes(b"roses/caf\xe9.jpg")  # the archive's bytes
    assert percentage_hash("roses/caf\udce9_nohash_2.jpg") == by_bytes(b"roses/caf\xe9")


def test_file_names_that_are_not_utf8_train_export_and_print_escaped(tmp_path: Path) -> None:
    """Latin-1 names from an old archive: in training, in the test split (misclassified on purpose:
    ones in folder 0), and undecodable; the run finishes and prints each name escaped."""
    images = copy_digits(tmp_path / "images", ["0", "1", "7"], per_class=30)
    ones = sorted((DIGITS / "1").glob("*.png"))[30:]
    trained = names_in_split("0", "caf\udce9-", "training", 2)
    tested = names_in_split("0", "na\udcefve-", "testing", 2)
    for name, source in zip(trained, sorted((DIGITS / "0").glob("*.png"))[30:], strict=False):
        (images / "0" / name).write_bytes(source.read_bytes())
    for name, source in zip(tested, ones, strict=False):
        (images / "0" / name).write_bytes(source.read_bytes())  # a 1 in folder 0: misclassified
    broken = images / "7" / "bad\udcff\udcfe.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")

    code, out, err = retrain_cli(images, tmp_path, "--print_misclassified_test_images")
    assert code == 0, err
    assert_no_raw_controls(out + err)
    assert f"skipping {printable(broken)}: not a decodable image" in err and "bad\\xff\\xfe.jpg" in err
    misclassified = out.split("=== MISCLASSIFIED TEST IMAGES ===\n", 1)[1].split("Exporting to")[0]
    for name in tested:
        assert f"{printable(images / '0' / name)}  1\n" in misclassified
        assert "na\\xefve-" in misclassified
    info = load_model_json(tmp_path / "model")
    assert info["counts"]["skipped_files"] == [printable(broken)]
    assert info["counts"]["per_class"] == {"0": 34, "1": 30, "7": 31}
    assert (tmp_path / "model" / "labels.txt").read_text() == "0\n1\n7\n"


def test_misclassified_lines_escape_the_path_and_label(capsys: pytest.CaptureFixture[str]) -> None:
    report.misclassified([(Path("/data/0/caf\udce9\x1b]0;owned\x07.png"), "1")])
    assert capsys.readouterr().out.splitlines()[1] == "/data/0/caf\\xe9\\x1b]0;owned\\x07.png  1"


# --- 14: labels must be printable ---------------------------------------------------------------------

UNPRINTABLE_LABELS = ["new\nline", "esc\x1b[31mred", "osc\x1b]0;title\x07", "caf\udce9", "rtl\u202etxt.exe", "cr\r"]


@pytest.mark.parametrize("label", UNPRINTABLE_LABELS)
def test_a_class_folder_name_that_is_not_printable_is_refused_and_named(tmp_path: Path, label: str) -> None:
    images = copy_digits(tmp_path / "images", ["0", "1"], per_class=3)
    (images / "1").rename(images / label)
    with pytest.raises(RetrainError) as error:
        discover(images)
    message = str(error.value)
    assert f"class folder '{printable(label)}' in {images} is not printable text" in message
    assert message.isprintable()


@pytest.mark.parametrize("label", ["new\nline", "caf\udce9"])
def test_the_run_stops_with_exit_2_before_any_work(tmp_path: Path, label: str) -> None:
    images = copy_digits(tmp_path / "images", ["0", "1", "7"], per_class=5)
    (images / "7").rename(images / label)
    code, out, err = retrain_cli(images, tmp_path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("retrain: error: class folder '")
    assert printable(label) in err and err.rstrip("\n").isprintable()
    assert not (tmp_path / "cache").exists() and not (tmp_path / "model").exists()


# --- 15: every name printed escaped -------------------------------------------------------------------


def test_undecodable_files_and_odd_folders_with_escape_sequences_are_named_escaped(tmp_path: Path) -> None:
    images = copy_digits(tmp_path / "images", ["0", "1", "7"], per_class=12)
    hostile = [
        images / "0" / "esc\x1b[2J\x1b[31mred.jpg",
        images / "1" / "osc\x1b]0;pwned\x07.png",
        images / "7" / "cr\rforged: retrain: error: nothing.png",
        images / "7" / "new\nline.png",
    ]
    for path in hostile:
        path.write_bytes(b"not an image at all")
    (images / "empty\x1b[5m").mkdir()
    (images / "0" / ".hidden\x1b[8m").write_bytes(b"x")
    code, out, err = retrain_cli(images, tmp_path)
    assert code == 0, err
    assert_no_raw_controls(out + err)
    for path in hostile:
        assert f"skipping {printable(path)}: not a decodable image" in err
    assert "ignoring folders with no images: empty\\x1b[5m" in err
    assert "0/.hidden\\x1b[8m" in err
    assert sorted(load_model_json(tmp_path / "model")["counts"]["skipped_files"]) == sorted(map(printable, hostile))


# --- 16: decoding memory is bounded -------------------------------------------------------------------

# Runs a command and prints the peak RSS of its process tree: a fresh parent has no earlier children.
PEAK_RSS = """
import resource, subprocess, sys
completed = subprocess.run(sys.argv[1:], capture_output=True)
sys.stderr.buffer.write(completed.stderr)
sys.stdout.buffer.write(completed.stdout)
print(f"PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} EXIT {completed.returncode}")
"""


def test_images_whose_decoding_alone_exceeds_the_budget_are_skipped_named_and_memory_stays_bounded(
    tmp_path: Path,
) -> None:
    """Four 12000x12000 PNGs (144 Mpx, at the pixel cap; 0.2-0.5 MB on disk, 1.7-2.1 GiB decoded) in one
    training folder took 3.8 GB before the budget; each is now skipped from its header."""
    images = copy_digits(tmp_path / "images", ["0", "1", "7"], per_class=30)
    huge = [images / "0" / f"huge_{shade}.png" for shade in (60, 120, 180)] + [images / "0" / "huge\x1b[1m rgb.png"]
    for path, shade in zip(huge[:3], (60, 120, 180), strict=True):
        Image.new("L", (12000, 12000), shade).save(path)
    Image.new("RGB", (12000, 12000), (200, 30, 30)).save(huge[3])
    args = ["--image_dir", str(images), "--bottleneck_dir", str(tmp_path / "cache")]
    args += ["--output_dir", str(tmp_path / "model"), "--how_many_training_steps", STEPS, *LITE0]
    completed = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *RETRAIN, *args], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    summary = completed.stdout.splitlines()[-1].split()
    peak, code = int(summary[1]) * 1024, int(summary[3])
    assert code == 0, completed.stderr
    for path, mode, mib in zip(huge, ("L", "L", "L", "RGB"), ("1,785", "1,785", "1,785", "2,197"), strict=True):
        assert (
            f"skipping {printable(path)}: too large to decode: decoding this 12000x12000 {mode} image needs about "
            f"{mib} MiB, over the 1,024 MiB decoding budget (--decode_memory_mb)"
        ) in completed.stderr
    assert "4 skipped" in completed.stdout and "Final test accuracy = " in completed.stdout
    print(f"peak RSS of the run: {peak / 2**20:.0f} MiB")
    assert peak < 1.5 * 10**9


@pytest.fixture
def small_and_large(tmp_path: Path) -> list[Path]:
    """Six digits (8x8, ~1 KB to decode) and a 300x300 RGB PNG (~1.4 MB to decode)."""
    root = copy_digits(tmp_path / "images", ["3", "8"], per_class=3)
    large = root / "8" / "large\x1b[0m.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(large)
    return sorted(root.rglob("*.png"))


def test_extraction_and_augmented_copies_skip_what_the_budget_cannot_hold(
    backbone, small_and_large: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from retrain.augment import Augmentation
    from retrain.extract import compute_bottlenecks

    large = next(path for path in small_and_large if "large" in path.name)
    budget = DecodeBudget(1_000_000)
    cache = BottleneckCache(tmp_path / "cache", backbone.cache_id, backbone.feature_dim)
    for copies in (0, 2):
        augmentation = Augmentation(flip_left_right=True) if copies else None
        _, ok, stats = compute_bottlenecks(
            small_and_large, backbone, cache, augmentation=augmentation, copies=copies, budget=budget
        )
        assert ok.tolist() == [path != large for path in small_and_large]
        assert [(path, reason.split(":")[0]) for path, reason in stats.skipped] == [(large, "too large to decode")]
        assert budget.free_bytes == budget.max_bytes
    assert f"skipping {printable(large)}: too large to decode: decoding this 300x300 RGB image" in caplog.text
    assert "\x1b" not in caplog.text


def test_fine_tuning_decodes_within_the_budget_too(small_and_large: list[Path]) -> None:
    from retrain.finetune import decode_images
    from serve.preprocess import InputSpec

    spec = InputSpec(224, 224, 127.0, 128.0)
    images, skipped = decode_images(small_and_large, spec, DecodeBudget(1_000_000))
    large = next(path for path in small_and_large if "large" in path.name)
    assert [(path, reason.split(":")[0]) for path, reason in skipped] == [(large, "too large to decode")]
    assert images.shape == (7, 224, 224, 3) and images[small_and_large.index(large)].max() == 0


def test_the_cli_default_budget_is_the_library_one() -> None:
    from retrain.cli import DEFAULT_DECODE_MEMORY_MB
    from retrain.extract import DECODE_MEMORY_BYTES

    assert DEFAULT_DECODE_MEMORY_MB * 2**20 == DECODE_MEMORY_BYTES == RetrainConfig("x").decode_memory_mb * 2**20


# --- 17: exports to one folder take turns -------------------------------------------------------------


def test_two_runs_exporting_to_one_folder_take_turns_and_leave_one_complete_export(
    tiny_digits: Path, tmp_path: Path
) -> None:
    """The test holds the folder's export lock: both runs train, then wait for it (and say so)
    before writing anything there; released, they export one after the other."""
    models = tmp_path / "models"
    models.mkdir()
    output = models / "shared"
    args = ["--image_dir", str(tiny_digits), "--bottleneck_dir", str(tmp_path / "cache")]
    args += ["--output_dir", str(output), "--how_many_training_steps", "30", *LITE0]
    logs = [(tmp_path / f"run{n}.out", tmp_path / f"run{n}.err") for n in range(2)]
    processes = []
    with export_lock(output):
        for out, err in logs:
            with out.open("wb") as stdout, err.open("wb") as stderr:
                processes.append(subprocess.Popen([*RETRAIN, *args], stdout=stdout, stderr=stderr, cwd=REPO))
        for process, (_, err) in zip(processes, logs, strict=True):
            wait_for(partial(_waiting_or_done, process, err), "the run to wait for the export lock", timeout=300)
        assert [process.poll() for process in processes] == [None, None], [e.read_text() for _, e in logs]
        assert [p.name for p in models.iterdir()] == [".shared.lock"]  # nothing written before its turn
    for process in processes:
        assert process.wait(timeout=600) == 0
    for out, err in logs:
        assert f"retrain: warning: waiting for another export to {output} to finish" in err.read_text()
        listed = "(confusion_matrix.png, labels.txt, model.json, model.tflite, training_curves.png)"
        assert f"Exported model to {output} {listed} in " in out.read_text()
    assert [p.name for p in models.iterdir()] == ["shared"]  # no lock, staging or retired folder left
    info = load_model_json(output)
    expected = {*info["files"].values(), "model.json", "confusion_matrix.png", "training_curves.png"}
    assert {p.name for p in output.iterdir()} == expected
    assert not [p for p in output.rglob("*") if p.name.startswith(".")]


def _waiting_or_done(process: subprocess.Popen, stderr: Path) -> bool:
    return process.poll() is not None or "waiting for another export" in stderr.read_text()


def test_a_waiter_locks_only_once_the_holder_lets_go_and_then_holds_the_file_at_the_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The holder removes the lock file as it lets go; the waiter, woken on the removed file, locks a new one."""
    target, lock_file = tmp_path / "model", tmp_path / ".model.lock"
    released = threading.Event()
    seen: list[bool] = []

    def second() -> None:
        with export_lock(target):
            seen.extend([released.is_set(), lock_file.is_file()])

    with export_lock(target):
        thread = threading.Thread(target=second)
        thread.start()
        wait_for(lambda: "waiting for another export" in caplog.text, "the second holder to wait")
        released.set()
    thread.join(timeout=60)
    assert seen == [True, True] and not list(tmp_path.iterdir())


def test_the_lock_file_goes_with_the_lock(tmp_path: Path) -> None:
    target = tmp_path / "model"
    for _ in range(2):  # a second holder, after the first let go
        with export_lock(target):
            assert (tmp_path / ".model.lock").is_file()
        assert not list(tmp_path.iterdir())


# --- 18: macro averages over the classes with test images ---------------------------------------------


def test_macro_average_leaves_out_classes_without_test_images() -> None:
    tested = [ClassMetrics(label, 1.0, 1.0, 1.0, 4) for label in "abc"]
    untested = [ClassMetrics(f"x{n}", 0.0, 0.0, 0.0, 0) for n in range(20)]
    assert macro_f1(tested + untested) == 1.0
    assert format_per_class(tested + untested)[-1].endswith("(3 of 23 classes with test images)")


def test_twenty_classes_of_one_image_do_not_drag_the_macro_f1_of_the_tested_three(tmp_path: Path) -> None:
    images = copy_digits(tmp_path / "images", ["0", "1", "7"], per_class=30)
    singles = [path for digit in "234568" for path in sorted((DIGITS / digit).glob("*.png"))[:4]][:20]
    for n, source in enumerate(singles):
        (images / f"c{n:02d}").mkdir()
        (images / f"c{n:02d}" / source.name).write_bytes(source.read_bytes())
    config = RetrainConfig(
        image_dir=str(images),
        output_dir=str(tmp_path / "model"),
        bottleneck_dir=str(tmp_path / "cache"),
        architecture="efficientnet_lite0",
        hparams=HParams(how_many_training_steps=int(STEPS)),
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run(config)
    metrics = load_model_json(result.output_dir)["metrics"]
    present = [row for row in metrics["per_class"] if row["support"] > 0]
    assert [row["label"] for row in present] == metrics["macro_f1_classes"] == ["0", "1", "7"]
    assert metrics["macro_f1"] == pytest.approx(np.mean([row["f1"] for row in present]), abs=1e-4)
    assert len(metrics["per_class"]) == 23 and metrics["test_accuracy"] == result.test_accuracy
    macro = next(line for line in printed.getvalue().splitlines() if line.startswith("macro avg"))
    assert macro.endswith("(3 of 23 classes with test images)")
    assert f"{metrics['macro_f1']:.3f}" in macro


# --- 19: what discovery leaves out is counted and named; nothing is opened ----------------------------


def _hostile_layout(images: Path, outside: Path) -> None:
    """Beside ordinary class folders a and b: a link to a (a duplicate), a link to a folder outside (a
    class), a hidden `...` class, special files and links to them, a nested folder, loose files."""
    os.symlink("a", images / "a_again")
    os.symlink(outside, images / "outside")
    (images / "...").mkdir()
    for source in sorted((DIGITS / "5").glob("*.png"))[:3]:
        (images / "..." / source.name).write_bytes(source.read_bytes())
    os.mkfifo(images / "a" / "pipe.png")
    os.symlink("/dev/null", images / "a" / "null.png")
    os.symlink("/dev/zero", images / "device.jpg")
    os.symlink("nowhere.png", images / "b" / "gone.png")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(images / "b" / "s.png"))
    (images / "b" / "nested").mkdir()
    (images / "README.txt").write_text("not a class\n")  # not an image: not taken for one, not named
    (images / "stray.png").write_bytes((DIGITS / "5" / "digit_0005.png").read_bytes())


@pytest.fixture
def hostile_images(tmp_path: Path) -> Path:
    images = copy_digits(tmp_path / "images", ["0", "1"], per_class=12)
    (images / "0").rename(images / "a")
    (images / "1").rename(images / "b")
    outside = copy_digits(tmp_path / "elsewhere", ["7"], per_class=12) / "7"
    _hostile_layout(images, outside)
    return images


def test_discovery_names_every_entry_it_leaves_out(hostile_images: Path) -> None:
    image_set = discover(hostile_images)
    assert image_set.labels == ["a", "b", "outside"]
    assert image_set.class_counts() == {"a": 12, "b": 12, "outside": 12}
    skipped = {entry.relpath: entry.reason for entry in image_set.skipped}
    assert skipped == {
        "...": HIDDEN,
        "stray.png": LOOSE_IMAGE,
        "device.jpg": "not a regular file: a character device",
        "a_again": "the same folder as class folder 'a'",
        "a/null.png": "not a regular file: a character device",
        "a/pipe.png": "not a regular file: a FIFO",
        "b/gone.png": "a link to nothing (broken, or a loop)",
        "b/nested": NESTED_FOLDER,
        "b/s.png": "not a regular file: a socket",
    }


def test_a_run_over_special_files_finishes_and_warns_by_name(hostile_images: Path, tmp_path: Path) -> None:
    code, out, err = retrain_cli(hostile_images, tmp_path)
    assert code == 0, err
    assert "Found 36 images in 3 classes" in out and " 0 skipped" in out
    for line in (
        "skipping 1 entry of --image_dir (hidden: the name starts with '.'): ...",
        "skipping 1 entry of --image_dir (an image beside the class folders, in no class): stray.png",
        "skipping 2 entries of --image_dir (not a regular file: a character device): device.jpg, a/null.png",
        "skipping 1 entry of --image_dir (the same folder as class folder 'a'): a_again",
        "skipping 1 entry of --image_dir (not a regular file: a FIFO): a/pipe.png",
        "skipping 1 entry of --image_dir (not a regular file: a socket): b/s.png",
    ):
        assert line in err, err
    entries = load_model_json(tmp_path / "model")["counts"]["skipped_entries"]
    assert {"path": "a/pipe.png", "reason": "not a regular file: a FIFO"} in entries and len(entries) == 9


def test_reading_a_fifo_in_place_of_an_image_fails_at_once(tmp_path: Path) -> None:
    """A file swapped for a FIFO after discovery: opened without blocking, refused, never read."""
    from retrain.files import read_regular_file

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(OSError, match="not a regular file"):
        read_regular_file(tmp_path / "pipe.png")
