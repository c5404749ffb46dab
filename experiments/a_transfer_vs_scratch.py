"""Experiment a: does transfer beat training from scratch when data is scarce?

    .venv/bin/python experiments/a_transfer_vs_scratch.py [--seeds 0 1 2] [--work DIR]

Task: digits 6-9, trained on a share p of their training images, tested on all of their test
images (the same 77 for every p and seed). Each way is a `retrain` command:
  (i)    a small CNN from scratch                                 --architecture small_cnn
  (ii)   that CNN trained on digits 0-5, frozen, a new head        --base_model <0-5 CNN>
  (iii)  the same, all three conv layers fine-tuned                + --fine_tune_layers 3
  (iv)   (iii) with dropout before the head                       + --dropout 0.5
  (v)    the default ImageNet backbones' bottlenecks              (no flags: --architecture auto, which
                                                                   scores Lite2 too up to 20 images a
                                                                   class, --bottleneck_layers auto)
  (vi)   Lite0's final layer only          --architecture efficientnet_lite0 --bottleneck_layers final
  (vii)  Lite0's middle layer on a 2x2 grid                       ... --bottleneck_layers middle
  (viii) Lite0's both                                             ... --bottleneck_layers final+middle
  (ix)   retrain.py's head: Lite0's final layer, plain SGD 0.01, no L2, raw bottlenecks
The table shows, under (i)-(v), the same command as first measured with the TensorFlow head.
"""

from __future__ import annotations

import sys
import time

from common import (
    LITE0,
    OLD_HEAD,
    chosen_sets,
    digit_folder,
    markdown_table,
    mean_spread,
    measured,
    old_label,
    old_runs,
    retrain,
    save,
    work_folder,
)

NAME = "a_transfer_vs_scratch"
FRACTIONS = (0.01, 0.05, 0.1, 1.0)
METHODS = {
    "i": "(i) small CNN from scratch",
    "ii": "(ii) CNN from digits 0-5, frozen",
    "iii": "(iii) CNN from digits 0-5, fine-tuned",
    "iv": "(iv) (iii) + dropout 0.5",
    "v": "(v) ImageNet EfficientNet-Lite bottlenecks (default: auto)",
    "vi": "(vi) Lite0, `--bottleneck_layers final`",
    "vii": "(vii) Lite0, `--bottleneck_layers middle`",
    "viii": "(viii) Lite0, `--bottleneck_layers final+middle`",
    "ix": "(ix) (v) with retrain.py's head (final layer, SGD 0.01, no L2, not standardised)",
}
OLD = ("i", "ii", "iii", "iv", "v")  # the methods measured before, each shown with its old row


def main(argv: list[str]) -> None:
    work, seeds = work_folder(argv, "a")
    started, about = time.monotonic(), measured(seeds)
    cache = work / "cache"
    source, target = digit_folder(work, [0, 1, 2, 3, 4, 5]), digit_folder(work, [6, 7, 8, 9])
    runs: dict[str, list[dict]] = {method: [] for method in METHODS}
    for seed in seeds:
        base = retrain(
            ["--image_dir", source, "--architecture", "small_cnn", "--random_seed", seed, "--export", "keras"],
            work / f"cnn0to5-s{seed}",
            cache,
        )
        runs.setdefault("source", []).append(base.record(seed=seed))
        for fraction in FRACTIONS:
            common = ["--image_dir", target, "--train_fraction", fraction, "--random_seed", seed]
            transfer = [*common, "--base_model", base.export]
            commands = {
                "i": [*common, "--architecture", "small_cnn"],
                "ii": transfer,
                "iii": [*transfer, "--fine_tune_layers", "3"],
                "iv": [*transfer, "--fine_tune_layers", "3", "--dropout", "0.5"],
                "v": common,
                "vi": [*common, *LITE0, "--bottleneck_layers", "final"],
                "vii": [*common, *LITE0, "--bottleneck_layers", "middle"],
                "viii": [*common, *LITE0, "--bottleneck_layers", "final+middle"],
                "ix": [*common, *OLD_HEAD],
            }
            for method, args in commands.items():
                run = retrain(args, work / f"{method}-p{fraction}-s{seed}", cache)
                runs[method].append(run.record(fraction=fraction, seed=seed))

    def cells(method_runs: list[dict]) -> list[str]:
        return [mean_spread([r["accuracy"] for r in method_runs if r["fraction"] == f]) for f in FRACTIONS]

    old = old_runs(NAME)
    header = ["method", *(f"p = {fraction}" for fraction in FRACTIONS)]
    per_class = [
        next((r["training_images"] / 4 for r in runs["v"] if r["fraction"] == f and r["training_images"]), 0)
        for f in FRACTIONS
    ]
    rows = [["training images per class", *(f"{count:g}" for count in per_class)]]
    for method, title in METHODS.items():
        rows.append([title, *cells(runs[method])])
        if method == "v":
            chose = [chosen_sets([r for r in runs["v"] if r["fraction"] == f]) for f in FRACTIONS]
            rows.append(["&nbsp;&nbsp;(v) auto chose", *chose])
        if method in OLD and old.get(method):
            rows.append([old_label(f"({method})", final_layer=method == "v"), *cells(old[method])])
    sources = [f"{r['accuracy'] * 100:.1f}%" if r["accuracy"] is not None else "failed" for r in runs["source"]]
    source_line = f"Source CNNs (digits 0-5, their own 111 test images), seeds {', '.join(map(str, seeds))}: "
    source_line += ", ".join(sources) + "."
    save(NAME, markdown_table(header, rows) + "\n\n" + source_line, runs, about, started)


if __name__ == "__main__":
    main(sys.argv[1:])
