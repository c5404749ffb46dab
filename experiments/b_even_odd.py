"""Experiment b: two related tasks, even digits and odd digits; does a network trained on one help the other?

    .venv/bin/python experiments/b_even_odd.py [--seeds 0 1 2] [--work DIR]

On the raw 8x8 pixels (`--architecture pixels --image_size 8`, 192 values per image):
  softmax regression                                 (no more flags)
  a one-hidden-layer network                         --hidden_units 64 (exported with model.keras)
  that network trained on the other task, frozen     --base_model <other task's network>
  the same, hidden layer fine-tuned                  + --fine_tune_layers 1
  softmax regression with retrain.py's head          --optimizer sgd --learning_rate 0.01 --l2_regularizer 0
                                                     --no_standardize (and --bottleneck_layers final, the
                                                     only feature set of pixels)
Test accuracy on each task's test split, the time spent in training (model.json's
`training.seconds`), and the wall time of the whole `retrain` command (which adds loading,
extraction and the export). Under each of the first four, the same command as first measured
with the TensorFlow head.
"""

from __future__ import annotations

import statistics
import sys
import time

from common import (
    OLD_TRAINING,
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

NAME = "b_even_odd"
TASKS = {"even": [0, 2, 4, 6, 8], "odd": [1, 3, 5, 7, 9]}
METHODS = {
    "pixels": "softmax regression on pixels",
    "pixels_old_head": "softmax regression on pixels, retrain.py's head (SGD 0.01, no L2, not standardised)",
    "hidden": "one hidden layer (64 ReLU)",
    "transfer": "hidden layer from the other task, frozen",
    "fine_tuned": "hidden layer from the other task, fine-tuned",
}


def main(argv: list[str]) -> None:
    work, seeds = work_folder(argv, "b")
    started, about = time.monotonic(), measured(seeds)
    cache = work / "cache"
    folders = {task: digit_folder(work, digits) for task, digits in TASKS.items()}
    runs: dict[str, list[dict]] = {method: [] for method in METHODS}

    def record(method: str, task: str, seed: int, args: list) -> None:
        run = retrain(args, work / f"{method}-{task}-s{seed}", cache)
        runs[method].append(run.record(task=task, seed=seed))

    for seed in seeds:
        pixels = {task: ["--image_dir", folders[task], "--architecture", "pixels", "--image_size", "8",
                         "--random_seed", seed] for task in TASKS}  # fmt: skip
        for task in TASKS:
            record("pixels", task, seed, pixels[task])
            record("pixels_old_head", task, seed, [*pixels[task], *OLD_TRAINING])
            record("hidden", task, seed, [*pixels[task], "--hidden_units", "64", "--export", "keras"])
        for task, other in (("even", "odd"), ("odd", "even")):
            base = work / f"hidden-{other}-s{seed}"
            transfer = ["--image_dir", folders[task], "--base_model", base, "--random_seed", seed]
            record("transfer", task, seed, transfer)
            record("fine_tuned", task, seed, [*transfer, "--fine_tune_layers", "1"])

    def cells(method_runs: list[dict]) -> list[str]:
        accuracy = [mean_spread([r["accuracy"] for r in method_runs if r["task"] == task]) for task in TASKS]
        training = mean_spread([r["training_seconds"] for r in method_runs], percent=False)
        done = [r["seconds"] for r in method_runs if r["accuracy"] is not None]
        return [*accuracy, training, f"{statistics.mean(done):.1f}" if done else "-"]

    old = old_runs(NAME)
    header = ["method", "even digits: accuracy %", "odd digits: accuracy %", "training (s)", "whole command (s)"]
    rows = []
    for method, title in METHODS.items():
        rows.append([title, *cells(runs[method])])
        if old.get(method):
            rows.append([old_label(title), *cells(old[method])])
    save(NAME, markdown_table(header, rows), runs, about, started)


if __name__ == "__main__":
    main(sys.argv[1:])
