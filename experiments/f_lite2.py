"""Experiment f: EfficientNet-Lite2's bottlenecks against Lite0's, with few training images.

    .venv/bin/python experiments/f_lite2.py [--seeds 10 11 ... 29] [--work DIR]

Experiment e found no change of Lite0's defaults worth half a validation image a draw on digits
6-9 with 7 images per class; a larger network of the same family was the lead (docs/decisions.md
#36). This script measures it on that task and on issue 12's other few-image tasks (all digits, 2
and 1 images per class), on the validation split only and on e's draws (seeds 10-29, never the
tables' 0-2):

- every candidate feature set of both backbones (final, middle, final+middle), each scored on the
  whole validation split by a head trained with the defaults, paired draw by draw;
- the automatic choice as retrain makes it (best validation accuracy, then cross entropy), among
  Lite0's candidates, Lite2's, or all six. Scoring a choice on the images it was made on would
  flatter it, so here it is made on one half of the validation split and scored on the other, and
  the other way round (the two halves' images right are added: every image counts once);
- on digits 6-9, Lite2's default command line (`retrain --architecture efficientnet_lite2`), whose
  model.json must hold the same candidates' validation scores as the library path computes here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from common import (
    DIGITS,
    CachedVectors,
    candidate_scores,
    digit_folder,
    markdown_table,
    mean_spread,
    measured,
    retrain,
    save,
    work_folder,
)

NAME = "f_lite2"
SEEDS = tuple(range(10, 30))
FRACTION = 0.05  # 7 training images per class on digits 6-9, as experiment a's p = 0.05
TASKS = {  # name: (digits, --train_fraction, --train_images_per_class)
    "digits 6-9, 7 images per class (`--train_fraction 0.05`)": ((6, 7, 8, 9), FRACTION, None),
    "all digits, 2 images per class": (tuple(range(10)), None, 2),
    "all digits, 1 image per class": (tuple(range(10)), None, 1),
    "all digits, 20 images per class (where `--architecture auto` stops scoring Lite2)": (tuple(range(10)), None, 20),
}
BACKBONES = {"Lite0": "efficientnet_lite0", "Lite2": "efficientnet_lite2"}
BASELINE = "Lite0 auto"  # what the default does today
"""The procedure the others are paired with, draw by draw."""


def main(argv: list[str]) -> None:

    work, seeds = work_folder(argv, "f", SEEDS)
    started, about = time.monotonic(), measured(seeds)
    cache = work / "cache"
    tables, runs = [], {}
    for task, (digits, fraction, per_class) in TASKS.items():
        folder = digit_folder(work, list(digits))
        vectors = {short: CachedVectors(folder, cache, name, fraction, per_class) for short, name in BACKBONES.items()}
        correct, procedures = _procedures(vectors, seeds)
        count = len(vectors["Lite0"].validation_labels)
        for name, values in procedures.items():
            runs[f"{task}: {name}"] = [
                {"seed": seed, "validation_right": int(v)} for seed, v in zip(seeds, values, strict=True)
            ]
        baseline = procedures[BASELINE]
        rows = [
            [name, mean_spread([v / count for v in values]), _against(values, baseline)]
            for name, values in procedures.items()
        ]
        header = [
            "procedure",
            f"validation accuracy % ({count} images), mean ± std over {len(seeds)} draws",
            f"validation images right beyond {BASELINE}, a draw: mean ± standard error (draws better / worse)",
        ]
        tables.append(f"**{task}**\n\n{markdown_table(header, rows)}")
        if fraction == FRACTION:
            runs["digits 6-9: Lite2 default command lines"] = cli = _command_lines(folder, work, cache, seeds, correct)
            same = sum(run["same_as_library"] for run in cli)
            tables[-1] += f"\n\nLite2's command lines recorded these validation scores in {same} of {len(cli)} draws."
    save(NAME, "\n\n".join(tables), runs, about, started)


def _procedures(vectors: dict, seeds: tuple[int, ...]) -> tuple[dict, dict[str, list[int]]]:
    """Validation images right, per draw, of every candidate and of the automatic choices."""
    correct, entropy = candidate_scores(vectors, seeds)
    halves = np.arange(len(vectors["Lite0"].validation_labels)) % 2  # alternate images, in path order
    draws = range(len(seeds))
    procedures = {name: [int(correct[name][i].sum()) for i in draws] for name in correct}
    for short in BACKBONES:
        procedures[f"{short} auto"] = [_chosen_on_halves(correct, entropy, short, i, halves) for i in draws]
    procedures["auto among all six"] = [_chosen_on_halves(correct, entropy, "", i, halves) for i in draws]
    return correct, procedures


def _command_lines(folder: Path, work: Path, cache: Path, seeds: tuple[int, ...], correct: dict) -> list[dict]:
    """Lite2's default command line per draw, and whether it recorded the library path's scores."""
    cli = []
    for seed in seeds:
        args = ["--image_dir", folder, "--train_fraction", FRACTION, "--random_seed", seed, "--architecture"]
        run = retrain([*args, BACKBONES["Lite2"]], work / f"lite2-s{seed}", cache)
        recorded = _candidates(run.export) if run.accuracy is not None else {}
        computed = {features: correct[f"Lite2 {features}"][seeds.index(seed)].mean() for features in recorded}
        cli.append({"seed": seed, "command": run.command, "chosen": run.features, "recorded": recorded,
                    "same_as_library": recorded == computed and bool(recorded)})  # fmt: skip
    return cli


def _chosen_on_halves(correct: dict, entropy: dict, prefix: str, draw: int, halves: np.ndarray) -> int:
    """Images right when the candidate is chosen on one validation half (as `retrain.choice` picks:
    accuracy, then cross entropy, then order) and scored on the other, both ways round."""
    names = [name for name in correct if name.startswith(prefix)]
    right = 0
    for chosen_on in (0, 1):
        on, off = halves == chosen_on, halves != chosen_on
        best = max(
            enumerate(names),
            key=lambda item: (correct[item[1]][draw][on].mean(), -entropy[item[1]][draw][on].mean(), -item[0]),
        )[1]
        right += int(correct[best][draw][off].sum())
    return right


def _against(values: list, baseline: list) -> str:
    if values is baseline:
        return "-"
    gains = np.array(values, float) - np.array(baseline, float)
    error = gains.std(ddof=1) / np.sqrt(len(gains))
    return f"{gains.mean():+.2f} ± {error:.2f} ({(gains > 0).sum()} / {(gains < 0).sum()})"


def _candidates(export: Path) -> dict[str, float]:
    """Each candidate's validation accuracy as the run recorded it (model.json `bottlenecks.choice`)."""
    choice = json.loads((export / "model.json").read_text())["bottlenecks"]["choice"]
    return {c["features"]: c["accuracy"] for c in choice["candidates"]}


if __name__ == "__main__":
    assert DIGITS.is_dir(), DIGITS
    main(sys.argv[1:])
