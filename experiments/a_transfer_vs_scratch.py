"""Experiment a: does transfer beat training from scratch when data is scarce?

    .venv/bin/python experiments/a_transfer_vs_scratch.py [--seeds 0 1 2] [--work DIR]

Task: digits 6-9, trained on a share p of their training images, tested on all of their test
images (the same 72 for every p and seed). Five ways, each a `retrain` command:
  (i)   a small CNN from scratch                                 --architecture small_cnn
  (ii)  that CNN trained on digits 0-5, frozen, a new head        --base_model <0-5 CNN>
  (iii) the same, all three conv layers fine-tuned                + --fine_tune_layers 3
  (iv)  (iii) with dropout before the head                       + --dropout 0.5
  (v)   the default ImageNet backbone's bottlenecks               (no flags)
"""

from __future__ import annotations

import sys

from common import digit_folder, markdown_table, mean_spread, retrain, save, work_folder

FRACTIONS = (0.01, 0.05, 0.1, 1.0)
METHODS = {
    "i": "(i) small CNN from scratch",
    "ii": "(ii) CNN from digits 0-5, frozen",
    "iii": "(iii) CNN from digits 0-5, fine-tuned",
    "iv": "(iv) (iii) + dropout 0.5",
    "v": "(v) ImageNet EfficientNet-Lite0 bottlenecks",
}


def main(argv: list[str]) -> None:
    work, seeds = work_folder(argv, "a")
    cache = work / "cache"
    source, target = digit_folder(work, [0, 1, 2, 3, 4, 5]), digit_folder(work, [6, 7, 8, 9])
    runs: dict[str, list[dict]] = {method: [] for method in METHODS}
    for seed in seeds:
        base = retrain(
            ["--image_dir", source, "--architecture", "small_cnn", "--random_seed", seed],
            work / f"cnn0to5-s{seed}",
            cache,
        )
        for fraction in FRACTIONS:
            common = ["--image_dir", target, "--train_fraction", fraction, "--random_seed", seed]
            transfer = [*common, "--base_model", base.export]
            commands = {
                "i": [*common, "--architecture", "small_cnn"],
                "ii": transfer,
                "iii": [*transfer, "--fine_tune_layers", "3"],
                "iv": [*transfer, "--fine_tune_layers", "3", "--dropout", "0.5"],
                "v": common,
            }
            for method, args in commands.items():
                run = retrain(args, work / f"{method}-p{fraction}-s{seed}", cache)
                runs[method].append(
                    {
                        "fraction": fraction,
                        "seed": seed,
                        "command": run.command,
                        "accuracy": run.accuracy,
                        "training_images": run.training_images,
                    }
                )
    header = ["method", *(f"p = {fraction}" for fraction in FRACTIONS)]
    per_class = [next(r["training_images"] for r in runs["v"] if r["fraction"] == f) / 4 for f in FRACTIONS]
    rows = [
        ["training images per class", *(f"{count:g}" for count in per_class)],
    ] + [
        [title, *(mean_spread([r["accuracy"] for r in runs[method] if r["fraction"] == f]) for f in FRACTIONS)]
        for method, title in METHODS.items()
    ]
    save("a_transfer_vs_scratch", markdown_table(header, rows), runs)


if __name__ == "__main__":
    main(sys.argv[1:])
