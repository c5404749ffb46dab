"""Shared by the experiment scripts: digit subsets as image folders, `retrain` runs, and result tables.

Every table row is a `retrain` command line. The scripts run those commands in one process (so
TensorFlow loads once), each with its own output folder and a shared bottleneck cache, and read
the result from the export's model.json, the same file a user would read.

Next to each row a table can show the same command as first measured, when the head still
trained in TensorFlow on the final layer's bottlenecks ("old" rows, read from
experiments/results/tensorflow_head/, which the scripts never write).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "image_dirs" / "digits"
RESULTS = REPO / "experiments" / "results"
OLD_RESULTS = RESULTS / "tensorflow_head"
SEEDS = (0, 1, 2)

FEATURE_SETS = ("final", "middle", "final+middle")
"""The bottleneck feature sets EfficientNet-Lite0 offers (`--bottleneck_layers`); auto picks one per run."""
LITE0 = ["--architecture", "efficientnet_lite0"]
"""Lite0 alone, as every default before docs/decisions.md #37 (auto also scores Lite2 with few images)."""
OLD_TRAINING = ["--optimizer", "sgd", "--learning_rate", "0.01", "--l2_regularizer", "0", "--no_standardize"]
OLD_HEAD = [*LITE0, "--bottleneck_layers", "final", *OLD_TRAINING]
"""retrain.py's head on Lite0's final layer, the default before docs/decisions.md #30 and #31, in
today's numpy trainer."""


def old_label(title: str, final_layer: bool = False) -> str:
    """The label of an "old" row: `title`'s command as first measured."""
    return f"&nbsp;&nbsp;*{title}, as first measured: TensorFlow head{', final layer' if final_layer else ''}*"


def digit_folder(root: Path, digits: list[int]) -> Path:
    """A folder with the chosen digit classes, as symlinks: the hash split sees the same relative
    paths (`7/digit_0007.png`) as in image_dirs/digits, so test images stay test images."""
    folder = root / f"digits-{''.join(map(str, digits))}"
    for digit in digits:
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        for image in sorted((DIGITS / str(digit)).glob("*.png")):
            link = folder / str(digit) / image.name
            if not link.exists():
                link.symlink_to(image)
    return folder


@dataclass(frozen=True)
class Run:
    command: str  # the `retrain ...` command line, as a user would type it
    accuracy: float | None  # None: the command failed (its traceback is in `<output>.log`)
    seconds: float
    export: Path
    training_images: int | None
    training_seconds: float | None  # the training loops only (model.json `training.seconds`)
    features: str | None  # the bottleneck feature set the head was trained on (model.json `bottlenecks.features`,
    # prefixed "Lite2 " where that backbone's)

    def record(self, **keys) -> dict:
        """What the results' JSON keeps of this run, after `keys` (the run's place in the table)."""
        return {
            **keys,
            "command": self.command,
            "accuracy": self.accuracy,
            "features": self.features,
            "training_images": self.training_images,
            "training_seconds": self.training_seconds,
            "seconds": round(self.seconds, 2),
        }


FAILED: list[str] = []  # the commands that failed in this process


def retrain(args: list, output: Path, cache: Path) -> Run:
    """Runs `retrain <args>` in this process; its log goes to `<output>.log`. The command recorded
    shows paths relative to the experiment's work folder (`output`'s parent). A command that fails
    is recorded with no accuracy (and its traceback logged); the experiment goes on."""
    import keras

    from retrain.cli import main

    full = [*map(str, args), "--output_dir", str(output), "--bottleneck_dir", str(cache)]
    command = "retrain " + shlex.join(str(arg) for arg in args)
    command = command.replace(f"{output.parent}/", "").replace(f"{REPO}/", "")
    log = io.StringIO()
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(log):
            main.main(args=full, standalone_mode=False)
    except Exception:
        seconds = time.monotonic() - started
        output.with_name(output.name + ".log").write_text(log.getvalue() + "\n" + traceback.format_exc())
        keras.backend.clear_session()
        FAILED.append(command)
        print(f"FAILED  {seconds:5.1f}s  {command}", file=sys.stderr, flush=True)
        return Run(command, None, seconds, output, None, None, None)
    seconds = time.monotonic() - started
    output.with_name(output.name + ".log").write_text(log.getvalue())
    keras.backend.clear_session()
    info = json.loads((output / "model.json").read_text())
    accuracy = info["metrics"]["test_accuracy"]
    features = info.get("bottlenecks", {}).get("features")
    if features and info["backbone"].startswith("efficientnet_lite2"):
        features = f"Lite2 {features}"  # auto chose Lite2's vectors (docs/decisions.md #37)
    print(f"{accuracy * 100:5.1f}%  {seconds:5.1f}s  {features:<12}  {command}", file=sys.stderr, flush=True)
    counts, training = info["counts"], info["training"]
    return Run(command, accuracy, seconds, output, counts["training_images"], training["seconds"], features)


def mean_spread(values: list[float | None], percent: bool = True) -> str:
    """`mean ± standard deviation` over the repeats; failed runs (None) are left out and counted."""
    done = [value for value in values if value is not None]
    if not done:
        return "failed" if values else "-"
    scale = 100 if percent else 1
    mean = statistics.mean(done) * scale
    spread = statistics.stdev(done) * scale if len(done) > 1 else 0.0
    cell = f"{mean:.1f} ± {spread:.1f}"
    return cell if len(done) == len(values) else f"{cell} ({len(values) - len(done)} of {len(values)} failed)"


def chosen_sets(runs: list[dict]) -> str:
    """What `--bottleneck_layers auto` kept over the repeats: `final+middle x2, middle` (with a multiplication sign)."""
    counts = collections.Counter(r["features"] or "failed" for r in runs)
    times = "\N{MULTIPLICATION SIGN}"
    return ", ".join(name if count == 1 else f"{name} {times}{count}" for name, count in counts.most_common())


def old_runs(name: str) -> dict[str, list[dict]]:
    """The runs of experiment `name` as first measured (TensorFlow head), by method; {} if not kept."""
    path = OLD_RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def retrain_source(git) -> dict:
    """Which retrain ran: the package imported (this checkout's, or a copy first on PYTHONPATH, such
    as `git archive <commit> retrain` while the checkout is being edited), the latest commit whose
    retrain/ it equals file for file, and, if none of the last 100 does, the files that differ from HEAD's."""
    import retrain

    package = Path(retrain.__file__).resolve().parent
    ran = {}
    for file in package.rglob("*.py"):
        data = file.read_bytes()
        ran[str(file.relative_to(package.parent))] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def differing(commit: str) -> list[str]:
        blobs = {}
        for line in git("ls-tree", "-r", commit, "retrain").splitlines():
            meta, path = line.split("\t", 1)
            if path.endswith(".py"):
                blobs[path] = meta.split()[2]
        return sorted(path for path in {*blobs, *ran} if blobs.get(path) != ran.get(path))

    for commit in git("rev-list", "-n", "100", "HEAD").split():
        if not differing(commit):
            return {"retrain_commit": commit[:7], "retrain_package": str(package), "retrain_files_not_as_committed": []}
    head = git("rev-parse", "--short", "HEAD")
    return {"retrain_commit": head, "retrain_package": str(package), "retrain_files_not_as_committed": differing(head)}


def measured(seeds: tuple[int, ...]) -> dict:
    """When, where and against which retrain the tables were measured."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    from importlib.metadata import version

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **retrain_source(git),
        "cpu": f"{cpu}, {len(os.sched_getaffinity(0))} cores",
        "python": platform.python_version(),
        "tensorflow": version("tensorflow"),
        "seeds": list(seeds),
    }


def save(name: str, table: str, runs: dict, about: dict, started: float, heads: int | None = None) -> None:
    """Prints the table and keeps it, with every run's command and result, in experiments/results/.
    `heads`: for a script that trains heads on cached vectors instead of running commands, how many."""
    minutes = round((time.monotonic() - started) / 60, 1)
    about = {**about, "runs": sum(len(r) for r in runs.values()), "minutes": minutes}
    about["failed"] = list(FAILED)
    note = (
        f"Measured {about['date']} against retrain {about['retrain_commit']}"
        + (
            f" with changed files {', '.join(about['retrain_files_not_as_committed'])}"
            if about["retrain_files_not_as_committed"]
            else ""
        )
        + f", {about['cpu']}, TensorFlow {about['tensorflow']}; seeds {', '.join(map(str, about['seeds']))};"
        + (f" {heads} heads" if heads is not None else f" {about['runs']} runs")
        + f" in {about['minutes']} min"
        + (f"; {len(FAILED)} failed" if FAILED else "")
        + "."
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(table + "\n\n" + note + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"measured": about, "runs": runs}, indent=1) + "\n")
    print(table + "\n\n" + note)


def work_folder(argv: list[str], name: str, seeds: tuple[int, ...] = SEEDS) -> tuple[Path, tuple[int, ...]]:
    """`--work DIR` (default /tmp/retrain-experiments/<name>) and `--seeds` (default `seeds`) from the command line."""
    import argparse

    parser = argparse.ArgumentParser(description=f"experiment {name}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/retrain-experiments") / name)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    options = parser.parse_args(argv)
    options.work.mkdir(parents=True, exist_ok=True)
    from retrain.cli import _configure_logging
    from retrain.quiet import import_tensorflow_quietly

    _configure_logging(verbose=False)
    import_tensorflow_quietly()
    return options.work, tuple(options.seeds)


class CachedVectors:
    """One backbone's cached vectors of every split of a folder, for all its candidate feature sets,
    and heads trained on seeded draws of the training images (`--train_fraction`/`--train_images_per_class`)."""

    def __init__(
        self,
        folder: Path,
        cache: Path,
        architecture: str,
        fraction: float | None = None,
        per_class: int | None = None,
        validation_percentage: float = 10,
    ):
        from functools import partial

        from retrain import pipeline
        from retrain.backbones import load_backbone
        from retrain.backbones.taps import columns_of, feature_sets, joint_taps, tap_caches, tapped
        from retrain.cache import bottleneck_cache
        from retrain.extract import DECODE_MEMORY_BYTES
        from retrain.images import discover
        from retrain.runtimes import open_runtime
        from serve.budget import DecodeBudget

        self.image_set = discover(str(folder), validation_percentage, 10)
        self.limit = (fraction, per_class)
        network = load_backbone(architecture)
        sets = feature_sets(network)
        joint = tapped(network, joint_taps(list(sets.values())))
        runtime = partial(open_runtime, joint, cache, "auto")
        store = bottleneck_cache(cache, tap_caches(joint))
        splits, _, _ = pipeline._bottlenecks(
            self.image_set, joint, store, 32, runtime, DecodeBudget(DECODE_MEMORY_BYTES)
        )
        self.sets = {name: columns_of(joint, taps) for name, taps in sets.items()}
        training = splits["training"]
        self.row_of = {path: row for row, path in enumerate(training.paths)}
        self.train_features, self.train_labels = training.features, training.labels
        self.validation_features, self.validation_labels = splits["validation"].features, splits["validation"].labels

    def scores(self, features: str, seed: int, hparams) -> tuple:
        """A head trained on the draw `seed` keeps: which validation images it gets right, and their cross entropies."""
        import numpy as np

        from retrain.images import limit_training
        from retrain.train import train_head

        kept = limit_training(self.image_set, *self.limit, seed).splits["training"]
        rows = np.array([self.row_of[example.path] for example in kept])
        columns = self.sets[features]
        x, y = self.train_features[rows][:, columns], self.train_labels[rows]
        head, _ = train_head(x, y, x[:0], y[:0], len(self.image_set.labels), hparams)
        probabilities = head.probabilities(self.validation_features[:, columns])
        truth = self.validation_labels
        losses = -np.log(np.clip(probabilities[np.arange(len(truth)), truth], 1e-12, None))
        return probabilities.argmax(axis=1) == truth, losses


def candidate_scores(vectors: dict[str, CachedVectors], seeds: tuple[int, ...]) -> tuple[dict, dict]:
    """Per candidate ("Lite0 final", ...) and draw: which validation images a head trained with the
    defaults gets right, and each image's cross entropy."""
    from retrain.train import HParams

    correct: dict[str, list] = {}
    entropy: dict[str, list] = {}
    for short, backbone in vectors.items():
        for features in backbone.sets:
            for seed in seeds:
                right, losses = backbone.scores(features, seed, HParams(random_seed=seed))
                correct.setdefault(f"{short} {features}", []).append(right)
                entropy.setdefault(f"{short} {features}", []).append(losses)
    return correct, entropy
