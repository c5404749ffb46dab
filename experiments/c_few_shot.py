"""Experiment c: one, two and five images per class, all ten digits.

    .venv/bin/python experiments/c_few_shot.py [--seeds 0 1 2] [--work DIR]

Each seed picks different training images (`--train_images_per_class K --random_seed S`); the
test split is the usual 188 images. Three ways:
  softmax head on the default backbone's bottlenecks      (no more flags)
  prototype head (nearest class mean)                     --head prototype
  softmax regression on the raw 8x8 pixels                --architecture pixels --image_size 8
"""

from __future__ import annotations

import sys

from common import DIGITS, markdown_table, mean_spread, retrain, save, work_folder

SHOTS = (1, 2, 5, None)  # None: every training image (about 144 per class)
METHODS = {
    "softmax": ("softmax head, EfficientNet-Lite0", []),
    "prototype": ("prototype head, EfficientNet-Lite0", ["--head", "prototype"]),
    "pixels": ("softmax regression on pixels", ["--architecture", "pixels", "--image_size", "8"]),
}


def main(argv: list[str]) -> None:
    work, seeds = work_folder(argv, "c")
    cache = work / "cache"
    runs: dict[str, list[dict]] = {method: [] for method in METHODS}
    for seed in seeds:
        for shots in SHOTS:
            limit = ["--train_images_per_class", shots] if shots else []
            for method, (_, flags) in METHODS.items():
                args = ["--image_dir", DIGITS, *flags, *limit, "--random_seed", seed]
                run = retrain(args, work / f"{method}-k{shots or 'all'}-s{seed}", cache)
                runs[method].append({"shots": shots, "seed": seed, "command": run.command, "accuracy": run.accuracy})
    header = ["method", *(f"{k} per class" if k else "all (~144 per class)" for k in SHOTS)]
    rows = [
        [title, *(mean_spread([r["accuracy"] for r in runs[method] if r["shots"] == k]) for k in SHOTS)]
        for method, (title, _) in METHODS.items()
    ]
    save("c_few_shot", markdown_table(header, rows), runs)


if __name__ == "__main__":
    main(sys.argv[1:])
