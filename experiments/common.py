"""Shared by the experiment scripts: digit subsets as image folders, `retrain` runs, and result tables.

Every table row is a `retrain` command line. The scripts run those commands in one process (so
TensorFlow loads once), each with its own output folder and a shared bottleneck cache, and read
the result from the export's model.json, the same file a user would read.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "image_dirs" / "digits"
RESULTS = REPO / "experiments" / "results"
SEEDS = (0, 1, 2)


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
    accuracy: float | None
    seconds: float
    export: Path
    training_images: int
    training_seconds: float  # the training loops only (model.json `training.seconds`)


def retrain(args: list[str], output: Path, cache: Path) -> Run:
    """Runs `retrain <args>` in this process; its log goes to `<output>.log`. The command recorded
    shows paths relative to the experiment's work folder (`output`'s parent)."""
    import keras

    from retrain.cli import main

    full = [*map(str, args), "--output_dir", str(output), "--bottleneck_dir", str(cache)]
    full += ["--export", "tflite,keras"]  # model.keras: later runs use some exports as --base_model
    log = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(log):
        main.main(args=full, standalone_mode=False)
    seconds = time.monotonic() - started
    output.with_name(output.name + ".log").write_text(log.getvalue())
    keras.backend.clear_session()
    info = json.loads((output / "model.json").read_text())
    metrics = info["metrics"]
    command = "retrain " + shlex.join(str(arg) for arg in args)
    command = command.replace(f"{output.parent}/", "").replace(f"{REPO}/", "")
    print(f"{metrics['test_accuracy'] * 100:5.1f}%  {seconds:5.1f}s  {command}", file=sys.stderr, flush=True)
    counts, training = info["counts"], info["training"]
    return Run(command, metrics["test_accuracy"], seconds, output, counts["training_images"], training["seconds"])


def mean_spread(values: list[float], percent: bool = True) -> str:
    """`mean ± standard deviation` over the repeats."""
    scale = 100 if percent else 1
    mean = statistics.mean(values) * scale
    spread = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {spread:.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def save(name: str, table: str, runs: dict) -> None:
    """Prints the table and keeps it, with every run's command and result, in experiments/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(table + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(runs, indent=1) + "\n")
    print(table)


def work_folder(argv: list[str], name: str) -> tuple[Path, tuple[int, ...]]:
    """`--work DIR` (default /tmp/retrain-experiments/<name>) and `--seeds 0 1 2` from the command line."""
    import argparse

    parser = argparse.ArgumentParser(description=f"experiment {name}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/retrain-experiments") / name)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    options = parser.parse_args(argv)
    options.work.mkdir(parents=True, exist_ok=True)
    from retrain.cli import _configure_logging
    from retrain.quiet import import_tensorflow_quietly

    _configure_logging(verbose=False)
    import_tensorflow_quietly()
    return options.work, tuple(options.seeds)
