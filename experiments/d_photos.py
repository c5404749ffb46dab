"""Experiment d: on photo-like pictures, does the default keep what the final layer gives?

    .venv/bin/python experiments/d_photos.py [--seeds 0 1 2] [--work DIR]

Two image sets, written by experiments/photos.py into the work folder, a new one for each seed
(the seed also sets the head's initial weights and batch order):
  patterns-sS   six kinds of patterned object on cluttered backgrounds, 50 JPEGs a class
  real-sS       eight regions of scikit-learn's two photographs (china.jpg, flower.jpg), 40 crops a region
Each way is a `retrain` command:
  the default                                (no more flags: --bottleneck_layers auto)
  one feature set                            --bottleneck_layers final | middle | final+middle
  retrain.py's head                          --bottleneck_layers final --optimizer sgd
                                             --learning_rate 0.01 --l2_regularizer 0 --no_standardize
"""

from __future__ import annotations

import json
import shutil
import sys
import time

from common import (
    FEATURE_SETS,
    LITE0,
    OLD_HEAD,
    chosen_sets,
    markdown_table,
    mean_spread,
    measured,
    retrain,
    save,
    work_folder,
)
from photos import PATTERN_CLASSES, REAL_CLASSES, write_patterns, write_real_crops

NAME = "d_photos"
PER_CLASS = {"patterns": 50, "real": 40}
DATASETS = {
    "patterns": (f"patterned objects ({len(PATTERN_CLASSES)} classes)", write_patterns),
    "real": (f"crops of two real photographs ({len(REAL_CLASSES)} classes)", write_real_crops),
}
METHODS = {
    "default": ("the default (auto)", []),
    **{name: (f"Lite0, `--bottleneck_layers {name}`", [*LITE0, "--bottleneck_layers", name]) for name in FEATURE_SETS},
    "old-head": ("retrain.py's head (final layer, SGD 0.01, no L2, not standardised)", OLD_HEAD),
}


def main(argv: list[str]) -> None:
    work, seeds = work_folder(argv, "d")
    started, about = time.monotonic(), measured(seeds)
    cache = work / "cache"
    runs: dict[str, list[dict]] = {method: [] for method in METHODS}
    made: dict[str, float] = {}
    for seed in seeds:
        for dataset, (_, write) in DATASETS.items():
            making, folder = time.monotonic(), work / f"{dataset}-s{seed}"
            shutil.rmtree(folder, ignore_errors=True)  # written afresh: no class left from an older version
            write(folder, seed, per_class=PER_CLASS[dataset])
            made[f"{dataset}-s{seed}"] = round(time.monotonic() - making, 1)
            for method, (_, flags) in METHODS.items():
                args = ["--image_dir", folder, *flags, "--random_seed", seed]
                run = retrain(args, work / f"{method}-{dataset}-s{seed}", cache)
                runs[method].append(run.record(dataset=dataset, seed=seed, **_scores(run.export, run.accuracy)))
    about["seconds_to_write_images"] = made

    def cells(method_runs: list[dict]) -> list[str]:
        return [mean_spread([r["accuracy"] for r in method_runs if r["dataset"] == d]) for d in DATASETS]

    def by_seed(method_runs: list[dict], dataset: str) -> list[dict]:
        return sorted((r for r in method_runs if r["dataset"] == dataset), key=lambda r: r["seed"])

    def gained(dataset: str) -> str:
        """Test images the default gets right beyond `--bottleneck_layers final`, seed by seed."""
        pairs = zip(by_seed(runs["default"], dataset), by_seed(runs["final"], dataset), strict=True)
        return ", ".join(f"{a['test_right'] - b['test_right']:+d}" if a["test_right"] is not None
                         and b["test_right"] is not None else "failed" for a, b in pairs)  # fmt: skip

    header = ["method", *(f"{title}: accuracy %" for title, _ in DATASETS.values())]
    rows = []
    for method, (title, _) in METHODS.items():
        rows.append([title, *cells(runs[method])])
        if method == "default":
            rows.append(["&nbsp;&nbsp;auto chose", *(chosen_sets(by_seed(runs[method], d)) for d in DATASETS)])
            rows.append(["&nbsp;&nbsp;test images right beyond `final`, by seed", *(gained(d) for d in DATASETS)])
    rows.append(["test images a seed", *(_counts(runs["default"], d) for d in DATASETS)])
    save(NAME, markdown_table(header, rows), runs, about, started)


def _scores(export, accuracy: float | None) -> dict:
    """The test split's size and hits, and how auto scored each feature set on the validation split."""
    if accuracy is None:
        return {"test_images": None, "test_right": None, "choice": None}
    info = json.loads((export / "model.json").read_text())
    count = info["metrics"]["test_count"]
    return {"test_images": count, "test_right": round(accuracy * count), "choice": info["bottlenecks"]["choice"]}


def _counts(method_runs: list[dict], dataset: str) -> str:
    counts = sorted({r["test_images"] for r in method_runs if r["dataset"] == dataset and r["test_images"]})
    return " / ".join(map(str, counts)) or "-"


if __name__ == "__main__":
    main(sys.argv[1:])
