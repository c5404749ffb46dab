"""`--architecture auto` with few training images: Lite0's and Lite2's feature sets scored side by
side on the same images, the export built on the one kept, and a rerun served from both caches."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from retrain import pipeline
from retrain.cli import main
from retrain.images import discover
from retrain.pipeline import Bottlenecks, RetrainConfig
from serve.preprocess import preprocess
from serve.runtime import load_model

from .conftest import copy_digits, export_vectors

CANDIDATES = [f"{network} {name}" for network in ("efficientnet_lite0", "efficientnet_lite2")
              for name in ("final", "middle", "final+middle")]  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("few_images")


@pytest.fixture(scope="module")
def digits(root: Path) -> Path:
    """Digits 6-9, all of them; `--train_fraction 0.05` keeps 7 training images a class."""
    return copy_digits(root / "digits-6789", ["6", "7", "8", "9"])


def retrain(root: Path, name: str, *args: str) -> tuple[str, dict, Path]:
    output = root / "models" / name
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        flags = [*args, "--output_dir", str(output), "--bottleneck_dir", str(root / "cache")]
        main.main(args=flags, standalone_mode=False)
    return log.getvalue(), json.loads((output / "model.json").read_text()), output


def served_predictions(export: Path, paths: list[Path]) -> np.ndarray:
    model = load_model(export)
    pixels = np.stack([preprocess(path.read_bytes(), model.info.input_spec) for path in paths])
    return np.argmax(model.runners[0].scores(pixels), axis=1)


def test_both_backbones_are_scored_and_the_export_serves_the_one_kept(root: Path, digits: Path) -> None:
    log, info, export = retrain(root, "auto", "--image_dir", str(digits), "--train_fraction", "0.05")
    assert "7.0 training images a class: with so few, auto scores the feature sets of efficientnet_lite0 and " in log
    assert log.count("Bottlenecks: 0 from cache, 180 computed") == 2  # Lite0's, then Lite2's
    choice = info["bottlenecks"]["choice"]
    assert [c["features"] for c in choice["candidates"]] == CANDIDATES
    network, features = choice["chosen"].split(" ")
    assert info["backbone"].startswith(f"{network}@imagenet") and info["bottlenecks"]["features"] == features
    assert info["input"]["height"] == {"efficientnet_lite0": 224, "efficientnet_lite2": 260}[network]
    testing = discover(str(digits)).splits["testing"]
    paths, truth = [e.path for e in testing], np.array([e.label_index for e in testing])
    served = served_predictions(export, paths)
    assert info["metrics"]["test_accuracy"] == pytest.approx(np.mean(served == truth))
    vectors = export_vectors(export, paths)  # the chosen network's cached vectors of the chosen set
    assert vectors.shape[1] == next(c["dims"] for c in choice["candidates"] if c["features"] == choice["chosen"])


def test_a_rerun_computes_nothing_and_remembers_the_choice(root: Path, digits: Path) -> None:
    _, first, _ = retrain(root, "auto-first", "--image_dir", str(digits), "--train_fraction", "0.05")
    log, again, _ = retrain(root, "auto-again", "--image_dir", str(digits), "--train_fraction", "0.05")
    assert log.count("Bottlenecks: 180 from cache, 0 computed") == 2
    assert "(remembered: the same vectors" in log
    assert again["bottlenecks"]["choice"]["chosen"] == first["bottlenecks"]["choice"]["chosen"]
    assert again["metrics"] == first["metrics"]


def test_lite2_exports_its_uneven_grid_and_serves_what_it_trained_on(root: Path, digits: Path) -> None:
    """Lite2's middle layer is 17x17: its 2x2 grid cells are 9 and 8 wide, in the composed TFLite
    export as in the cached vectors the head trained on."""
    flags = ["--architecture", "efficientnet_lite2", "--bottleneck_layers", "final+middle"]
    log, info, export = retrain(root, "lite2", "--image_dir", str(digits), "--train_fraction", "0.05", *flags)
    assert "auto scores" not in log and info["bottlenecks"]["choice"] is None
    assert info["backbone"] == "efficientnet_lite2@imagenet#top_relu+block14_add:2x2"
    testing = discover(str(digits)).splits["testing"]
    paths, truth = [e.path for e in testing], np.array([e.label_index for e in testing])
    assert info["metrics"]["test_accuracy"] == pytest.approx(np.mean(served_predictions(export, paths) == truth))
    assert export_vectors(export, paths).shape == (len(paths), 1280 + 4 * 120)


def test_auto_keeps_to_lite0_with_enough_images_other_weights_or_a_named_backbone(tmp_path: Path) -> None:
    folder = copy_digits(tmp_path / "digits", ["0", "1"], per_class=30)  # 24 training images a class
    image_set = discover(str(folder))
    few = pipeline.limit_training(image_set, None, 20, 0)
    assert pipeline._architectures(RetrainConfig(str(folder)), image_set) == ["efficientnet_lite0"]
    assert pipeline._architectures(RetrainConfig(str(folder)), few) == ["efficientnet_lite0", "efficientnet_lite2"]
    named = RetrainConfig(str(folder), architecture="efficientnet_lite0")
    assert pipeline._architectures(named, few) == ["efficientnet_lite0"]
    weights = RetrainConfig(str(folder), weights_file=str(tmp_path / "lite0.weights.h5"))
    assert pipeline._architectures(weights, few) == ["efficientnet_lite0"]


def test_an_image_one_network_could_not_read_is_dropped_for_all() -> None:
    a, b, c = Path("a.png"), Path("b.png"), Path("c.png")

    def splits(paths: list[Path], value: float) -> dict[str, Bottlenecks]:
        features = np.full((len(paths), 2), value) + np.arange(len(paths))[:, None]
        labels = np.array([int(p.stem == "b") for p in paths])
        return {split: Bottlenecks(features, labels, paths) for split in ("training", "validation", "testing")}

    lite0, lite2 = pipeline._common_images([splits([a, b, c], 0.0), splits([c, a], 10.0)])
    for split in ("training", "validation", "testing"):
        assert lite0[split].paths == lite2[split].paths == [a, c]
        np.testing.assert_array_equal(lite0[split].features, [[0.0, 0.0], [2.0, 2.0]])
        np.testing.assert_array_equal(lite2[split].features, [[11.0, 11.0], [10.0, 10.0]])
        side = pipeline._side_by_side([lite0[split], lite2[split]])
        np.testing.assert_array_equal(side.features, [[0.0, 0.0, 11.0, 11.0], [2.0, 2.0, 10.0, 10.0]])
