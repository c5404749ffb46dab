"""Experiment c: one, two and five images per class, all ten digits.

    .venv/bin/python experiments/c_few_shot.py [--seeds 0 1 2] [--work DIR]

Each seed picks different training images (`--train_images_per_class K --random_seed S`); the
test split is the usual 188 images. Each way is a `retrain` command:
  softmax head on the default backbone's bottlenecks      (no more flags: --bottleneck_layers auto)
    the same on one feature set                           --bottleneck_layers final | middle | final+middle
    the same with retrain.py's head                       --bottleneck_layers final --optimizer sgd
                                                          --learning_rate 0.01 --l2_regularizer 0 --no_standardize
  prototype head (nearest class mean)                     --head prototype
    the same on one feature set                           --head prototype --bottleneck_layers ...
  softmax regression on the raw 8x8 pixels                --architecture pixels --image_size 8
    the same with retrain.py's head                       + --optimizer sgd ... (as above)
Under the default softmax and prototype heads and the pixels, the same command as first measured
with the TensorFlow head (on the final layer).
"""

from __future__ import annotations

import sys
import time

from common import (
    DIGITS,
    FEATURE_SETS,
    LITE0,
    OLD_HEAD,
    OLD_TRAINING,
    chosen_sets,
    markdown_table,
    mean_spread,
    measured,
    old_label,
    old_runs,
    retrain,
    save,
    work_folder,
)

NAME = "c_few_shot"
SHOTS = (1, 2, 5, None)  # None: every training image (about 144 per class)
PIXELS = ["--architecture", "pixels", "--image_size", "8"]
RETRAIN_PY = "retrain.py's head (final layer, SGD 0.01, no L2, not standardised)"
METHODS = {
    "softmax": ("softmax head, EfficientNet-Lite (default: auto)", []),
    **{
        f"softmax-{name}": (
            f"softmax head, Lite0, `--bottleneck_layers {name}`",
            [*LITE0, "--bottleneck_layers", name],
        )
        for name in FEATURE_SETS
    },
    "softmax-old-head": (f"softmax head, {RETRAIN_PY}", OLD_HEAD),
    "prototype": ("prototype head, EfficientNet-Lite (auto)", ["--head", "prototype"]),
    **{
        f"prototype-{name}": (
            f"prototype head, Lite0, `--bottleneck_layers {name}`",
            [*LITE0, "--head", "prototype", "--bottleneck_layers", name],
        )
        for name in FEATURE_SETS
    },
    "pixels": ("softmax regression on pixels", PIXELS),
    "pixels-old-head": ("softmax regression on pixels, retrain.py's head", [*PIXELS, *OLD_TRAINING]),
}
OLD = {"softmax": True, "prototype": True, "pixels": False}  # measured before; on the final layer?
AUTO = ("softmax", "prototype")  # the rows that choose their feature set


def main(argv: list[str]) -> None:
    work, seeds = work_folder(argv, "c")
    started, about = time.monotonic(), measured(seeds)
    cache = work / "cache"
    runs: dict[str, list[dict]] = {method: [] for method in METHODS}
    for seed in seeds:
        for shots in SHOTS:
            limit = ["--train_images_per_class", shots] if shots else []
            for method, (_, flags) in METHODS.items():
                args = ["--image_dir", DIGITS, *flags, *limit, "--random_seed", seed]
                run = retrain(args, work / f"{method}-k{shots or 'all'}-s{seed}", cache)
                runs[method].append(run.record(shots=shots, seed=seed))

    def cells(method_runs: list[dict]) -> list[str]:
        return [mean_spread([r["accuracy"] for r in method_runs if r["shots"] == k]) for k in SHOTS]

    old = old_runs(NAME)
    header = ["method", *(f"{k} per class" if k else "all (~144 per class)" for k in SHOTS)]
    rows = []
    for method, (title, _) in METHODS.items():
        rows.append([title, *cells(runs[method])])
        if method in AUTO:
            chose = [chosen_sets([r for r in runs[method] if r["shots"] == k]) for k in SHOTS]
            rows.append([f"&nbsp;&nbsp;{method} head: auto chose", *chose])
        if method in OLD and old.get(method):
            rows.append([old_label(title.removesuffix(" (default: auto)").removesuffix(" (auto)"), OLD[method]),
                         *cells(old[method])])  # fmt: skip
    save(NAME, markdown_table(header, rows), runs, about, started)


if __name__ == "__main__":
    main(sys.argv[1:])
