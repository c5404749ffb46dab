"""Experiment g: how `--bottleneck_layers auto` should pick among its candidates when the
validation split is small.

    .venv/bin/python experiments/g_choice_rule.py [--seeds 10 11 ... 49] [--work DIR]

Experiment f found that choosing the most accurate of six candidates (three feature sets of Lite0
and of Lite2) on digits 6-9 with 7 images a class gains less than always taking Lite2's
final+middle (+0.95 against +1.30 validation images a draw): with 75 validation images, the most
accurate candidate is often the luckiest, and final-layer candidates win by luck. The usual remedy
is the one-standard-error rule (Breiman et al.'s for tree pruning, glmnet's `lambda.1se`): rank the
candidates by a preference fixed in advance, and take the first one whose accuracy is within one
standard error of the best's. This script measures that and other rules on validation draws only
(seeds 10-49, never the tables' 0-2), on issue 12's few-image tasks and on photo-like pictures,
with few and with all their training images.

Each rule picks on one half of the validation split and is scored on the other half, and the
other way round (the two halves' images right are added: every image counts once), as in f.
Every candidate's head is trained once per draw with the defaults; the rules only read its
per-image right/wrong and cross entropy.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
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
    save,
    work_folder,
)
from photos import write_patterns, write_real_crops

NAME = "g_choice_rule"
SEEDS = tuple(range(10, 50))
PHOTO_SEED = 100  # the pictures' seed: not experiment d's (0-2) nor tests/test_photo_defaults.py's (0)
PHOTOS_PER_CLASS = 60
FEW = 20  # retrain.backbones.FEW_IMAGES_PER_CLASS: at most this many training images a class, auto scores Lite2 too
# name: (folder kind, --train_fraction, --train_images_per_class, --validation_percentage)
TASKS = {
    "digits 6-9, 7 images a class (`--train_fraction 0.05`)": ("digits 6789", 0.05, None, 10),
    "all digits, 1 image a class": ("digits", None, 1, 10),
    "all digits, 2 images a class": ("digits", None, 2, 10),
    "all digits, 20 images a class": ("digits", None, 20, 10),
    "all digits, all training images (about 144 a class)": ("digits", None, None, 10),
    "patterned objects, 10 images a class": ("patterns", None, 10, 30),
    "real-photo crops, 10 images a class": ("real", None, 10, 30),
    "patterned objects, all training images (36 a class)": ("patterns", None, None, 30),
    "real-photo crops, all training images (36 a class)": ("real", None, None, 30),
}
BACKBONES = {"Lite0": "efficientnet_lite0", "Lite2": "efficientnet_lite2"}
PREFERENCE = (
    "Lite2 final+middle",
    "Lite0 final+middle",
    "Lite2 final",
    "Lite0 final",
    "Lite2 middle",
    "Lite0 middle",
)
"""The one-standard-error rule's order: final+middle holds the other two sets (the head can weight
either), and Lite2's beat Lite0's in every task of experiment f; then the final layer, best on photos."""
LITE0_FIRST = tuple(sorted(PREFERENCE, key=lambda name: (PREFERENCE.index(name) // 2, name)))
"""The same order with Lite0 before Lite2 at each feature set."""

Scores = dict[str, np.ndarray]  # candidate -> per image of the half it picks on: right (bool) or cross entropy
Rule = Callable[[list[str], Scores, Scores], str]


def most_accurate(names: list[str], right: Scores, entropy: Scores) -> str:
    """retrain.choice before docs/decisions.md #38: the highest accuracy, then the lowest cross entropy,
    then the earliest."""
    return max(enumerate(names), key=lambda item: (right[item[1]].mean(), -entropy[item[1]].mean(), -item[0]))[1]


def lowest_cross_entropy(names: list[str], right: Scores, entropy: Scores) -> str:
    return min(names, key=lambda name: entropy[name].mean())


def one_standard_error(preference: tuple[str, ...]) -> Rule:
    """The first candidate in `preference` whose accuracy is within one standard error of the most
    accurate's. The error is that of the paired difference: the square root of the images exactly
    one of the two gets right, over the images (a McNemar statistic of at most 1)."""

    def pick(names: list[str], right: Scores, entropy: Scores) -> str:
        best = most_accurate(names, right, entropy)
        for name in sorted(names, key=preference.index):
            lead = int(right[best].sum()) - int(right[name].sum())
            if lead <= np.sqrt(np.sum(right[best] != right[name])):
                return name
        return best

    return pick


def final_and_middle_unless_beaten(names: list[str], right: Scores, entropy: Scores) -> str:
    """retrain.choice.pick since docs/decisions.md #38, as retrain calls it: the most accurate
    final+middle candidate, unless another is ahead by more than one standard error."""
    from retrain.choice import Candidate, pick

    candidates = [Candidate(name, 0, right[name].mean(), entropy[name].mean()) for name in names]
    return pick(candidates, right, [name for name in names if name.endswith(" final+middle")])[0]


def final_unless_beaten(names: list[str], right: Scores, entropy: Scores) -> str:
    """The same rule with the final layer preferred (asked again under preprocessing version 2,
    docs/decisions.md #49): the most accurate final candidate unless another is ahead by more than
    one standard error."""
    from retrain.choice import Candidate, pick

    candidates = [Candidate(name, 0, right[name].mean(), entropy[name].mean()) for name in names]
    return pick(candidates, right, [name for name in names if name.endswith(" final")])[0]


def fixed(name: str) -> Rule:
    return lambda names, right, entropy: name


LITE0 = [name for name in PREFERENCE if name.startswith("Lite0")]
SIX = list(PREFERENCE)
RULES: dict[str, tuple[list[str], Rule]] = {
    "Lite0's three, most accurate (before docs/decisions.md #37)": (LITE0, most_accurate),
    "Lite0's three, one standard error": (LITE0, one_standard_error(PREFERENCE)),
    "all six, most accurate": (SIX, most_accurate),
    "all six, one standard error, Lite2 first": (SIX, one_standard_error(PREFERENCE)),
    "all six, one standard error, Lite0 first": (SIX, one_standard_error(LITE0_FIRST)),
    "final+middle of each, most accurate": (SIX[:2], most_accurate),
    "Lite0's three, final+middle unless beaten by one standard error": (LITE0, final_and_middle_unless_beaten),
    "all six, final+middle unless beaten by one standard error": (SIX, final_and_middle_unless_beaten),
    "Lite0's three, final unless beaten by one standard error": (LITE0, final_unless_beaten),
    "all six, final unless beaten by one standard error": (SIX, final_unless_beaten),
    "all six, lowest cross entropy": (SIX, lowest_cross_entropy),
    "Lite2 final+middle, always": (SIX, fixed("Lite2 final+middle")),
}
BEFORE = {True: "all six, most accurate", False: "Lite0's three, most accurate (before docs/decisions.md #37)"}
"""What `--architecture auto --bottleneck_layers auto` did when this experiment was designed (between
docs/decisions.md #37 and #38), with few training images a class or not."""
CHOSEN = {
    True: "all six, final+middle unless beaten by one standard error",
    False: "Lite0's three, final+middle unless beaten by one standard error",
}
"""What it does since #38, which this experiment decided."""


def main(argv: list[str]) -> None:
    work, seeds = work_folder(argv, "g", SEEDS)
    started, about = time.monotonic(), measured(seeds)
    cache = work / "cache"
    folders = {
        "digits 6789": digit_folder(work, [6, 7, 8, 9]),
        "digits": digit_folder(work, list(range(10))),
        "patterns": _written(work / "patterns", write_patterns),
        "real": _written(work / "real", write_real_crops),
    }
    tables, runs, gains, heads = [], {}, {}, 0
    for task, (kind, fraction, per_class, validation) in TASKS.items():
        vectors = {
            short: CachedVectors(folders[kind], cache, name, fraction, per_class, validation)
            for short, name in BACKBONES.items()
        }
        correct, entropy = candidate_scores(vectors, seeds)
        heads += len(correct) * len(seeds)
        few = _images_per_class(vectors["Lite0"], fraction, per_class) <= FEW
        count = len(vectors["Lite0"].validation_labels)
        halves = np.arange(count) % 2  # alternate images, in path order
        procedures = {
            rule: [_picked_on_halves(correct, entropy, pool, pick, draw, halves) for draw in range(len(seeds))]
            for rule, (pool, pick) in RULES.items()
        }
        runs[task] = {rule: [{"seed": s, "validation_right": v} for s, v in zip(seeds, values, strict=True)]
                      for rule, values in procedures.items()}  # fmt: skip
        baseline = procedures[BEFORE[few]]
        rows = []
        for rule, values in procedures.items():
            gain = np.array(values, float) - np.array(baseline, float)
            gains.setdefault(rule, []).append(gain.mean())
            shown = {BEFORE[few]: f"**{rule}** (before #38)", CHOSEN[few]: f"**{rule}** (since #38)"}.get(rule, rule)
            rows.append([shown, mean_spread([v / count for v in values]), _against(gain, values is baseline)])
        header = [
            "how auto picks (among)",
            f"validation accuracy % ({count} images), mean ± std over {len(seeds)} draws",
            "validation images right beyond the rule before #38, a draw: mean ± standard error (draws better / worse)",
        ]
        tables.append(f"**{task}**\n\n{markdown_table(header, rows)}")
    summary = [[rule, *(f"{g:+.2f}" for g in gains[rule]), f"{np.mean(gains[rule]):+.2f}"] for rule in RULES]
    header = ["rule", *(f"({number})" for number in range(1, len(TASKS) + 1)), "mean"]
    legend = "; ".join(f"({number}) {task}" for number, task in enumerate(TASKS, start=1))
    summary = markdown_table(header, summary)
    tables.insert(0, f"Validation images right beyond the rule before #38, a draw:\n\n{summary}\n\n{legend}.")
    save(NAME, "\n\n".join(tables), runs, about, started, heads)


def _written(folder: Path, write: Callable[..., Path]) -> Path:
    if not folder.is_dir():
        write(folder, PHOTO_SEED, per_class=PHOTOS_PER_CLASS)
    return folder


def _images_per_class(vectors: CachedVectors, fraction: float | None, per_class: int | None) -> float:
    from retrain.images import limit_training

    kept = limit_training(vectors.image_set, fraction, per_class, 0).splits["training"]
    return len(kept) / len(vectors.image_set.labels)


def _picked_on_halves(correct: dict, entropy: dict, pool: list[str], pick: Rule, draw: int, halves: np.ndarray) -> int:
    """Images right when `pick` chooses from `pool` on one validation half and is scored on the
    other, both ways round."""
    right = 0
    for chosen_on in (0, 1):
        on, off = halves == chosen_on, halves != chosen_on
        chosen = pick(pool, {n: correct[n][draw][on] for n in pool}, {n: entropy[n][draw][on] for n in pool})
        right += int(correct[chosen][draw][off].sum())
    return right


def _against(gain: np.ndarray, is_baseline: bool) -> str:
    if is_baseline:
        return "-"
    error = gain.std(ddof=1) / np.sqrt(len(gain))
    return f"{gain.mean():+.2f} ± {error:.2f} ({(gain > 0).sum()} / {(gain < 0).sum()})"


if __name__ == "__main__":
    assert DIGITS.is_dir(), DIGITS
    main(sys.argv[1:])
