"""Whole retrain runs on the bundled digits, as a user starts them: wall time, export time, peak memory.

Run: `.venv/bin/python bench/runs.py` (or `make bench`). Three runs of
`retrain --image_dir image_dirs/digits` (4000 steps of 10, default flags), each in a fresh process:

  very first   an empty bottleneck cache and no converted feature model anywhere
  first        an empty bottleneck cache; the backbone's TFLite conversion already cached
  warm rerun   every bottleneck cached (the cache the first run filled)

and the two floors of a warm rerun, measured in the same session: bare start-up (`retrain --help`
in a fresh process: the interpreter and the command line's imports) and the 4000 training steps
on the cached vectors of the feature set the warm rerun chose, in this process. Peak RSS is the
run's own `ru_maxrss`, children included (`wait4`). The export time is the one the run prints:
model.tflite, labels and model.json written and renamed into place; the report plots, drawn into
the finished export afterwards, are printed separately.

Targets (issue 11): warm rerun wall <= 2 x (start-up + steps); peak RSS < 0.5 GB for the warm
rerun and the first run, < 1 GB for the very first; the export under a second.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
from hardware import cpu_model  # bench/, first on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
DIGITS_DIR = REPO / "image_dirs" / "digits"
RETRAIN = [sys.executable, "-m", "retrain"]
PREBUILT_ENV = "RETRAIN_FEATURE_MODELS_DIR"  # retrain.feature_models.PREBUILT_ENV; unset so runs convert
GB = 2**30


@dataclass(frozen=True)
class Run:
    """One process: its wall time, peak RSS and what it printed."""

    name: str
    wall: float
    peak_rss: int  # bytes
    output: str

    def printed_seconds(self, pattern: str) -> float | None:
        match = re.search(pattern, self.output)
        return float(match.group(1)) if match else None

    @property
    def export_seconds(self) -> float | None:
        return self.printed_seconds(r"Exported model to .* in ([0-9.]+)s, plots")

    @property
    def plot_seconds(self) -> float | None:
        return self.printed_seconds(r"plots in ([0-9.]+)s;")

    @property
    def extraction_seconds(self) -> float | None:
        return self.printed_seconds(r"(?m)^Bottlenecks: .* in ([0-9.]+)s")

    @property
    def feature_set(self) -> str:
        """The bottleneck feature set the run trained its head on (the choice table's pick)."""
        match = re.search(r"(?m)^ +(\S+) +\d+ features: .*<- chosen$", self.output)
        if not match:
            raise click.ClickException(f"{self.name}: no chosen feature set in its output")
        return match.group(1)

    @property
    def accuracy(self) -> str:
        match = re.search(r"Final test accuracy = ([0-9.]+%)", self.output)
        return match.group(1) if match else "?"


def measure(name: str, command: list[str], env: dict[str, str]) -> Run:
    """Runs `command` to completion; fails loudly if it fails."""
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    if process.returncode != 0:
        raise click.ClickException(f"{name} failed ({process.returncode}):\n{output[-3000:]}")
    return Run(name, wall, usage.ru_maxrss * 1024, output)


def training_seconds(cache: Path, feature_set: str, repeat: int) -> float:
    """The 4000 steps alone (median of `repeat`), as the run trains them: on the digits' cached
    vectors of the feature set the run chose, with the default hyper-parameters."""
    import numpy as np

    from retrain.backbones import load_backbone
    from retrain.backbones.taps import feature_sets, tap_caches, tapped
    from retrain.cache import bottleneck_cache
    from retrain.extract import compute_bottlenecks
    from retrain.images import discover
    from retrain.train import HParams, train_head

    network = load_backbone()
    backbone = tapped(network, feature_sets(network)[feature_set])
    image_set = discover(DIGITS_DIR)
    vector_cache = bottleneck_cache(cache, tap_caches(backbone))
    splits = {}
    for split in ("training", "validation"):
        examples = image_set.splits[split]
        vectors, ok, stats = compute_bottlenecks([e.path for e in examples], backbone, vector_cache)
        assert ok.all() and stats.computed == 0, "the warm cache should hold every vector"
        splits[split] = (vectors, np.array([e.label_index for e in examples], np.int32))
    (x, y), (vx, vy) = splits["training"], splits["validation"]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        train_head(x, y, vx, vy, len(image_set.labels), HParams())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1), help="Start-ups and trainings.")
def main(repeat: int) -> None:
    """Prints wall time, export time and peak RSS of retrain runs on the digits, and PASS/MISS per target."""
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    env = {k: v for k, v in os.environ.items() if k != PREBUILT_ENV}
    with tempfile.TemporaryDirectory(prefix="retrain-bench-runs-") as folder:
        root = Path(folder)

        def retrain(name: str, cache: Path) -> Run:
            flags = ["--image_dir", str(DIGITS_DIR), "--bottleneck_dir", str(cache), "--models_dir", str(root / name)]
            print(f"  {name} ...", flush=True)
            return measure(name, [*RETRAIN, *flags], env)

        very_first = retrain("very first", root / "cache")
        second_cache = root / "cache-with-conversion"
        shutil.copytree(root / "cache" / "feature_models", second_cache / "feature_models")
        first = retrain("first", second_cache)
        warm = retrain("warm rerun", root / "cache")
        start_up = statistics.median(measure("start-up", [*RETRAIN, "--help"], env).wall for _ in range(repeat))
        steps = training_seconds(root / "cache", warm.feature_set, repeat)

    print()
    columns = ("wall s", "extract s", "export s", "plots s", "peak RSS GB", "accuracy")
    print(f"{'run':<12} " + " ".join(f"{name:>{max(7, len(name))}}" for name in columns))
    for run in (very_first, first, warm):
        print(
            f"{run.name:<12} {run.wall:7.1f} {run.extraction_seconds or 0:9.1f} {run.export_seconds or 0:8.2f}"
            f" {run.plot_seconds or 0:7.1f} {run.peak_rss / GB:11.2f} {run.accuracy:>8}"
        )
    floor = start_up + steps
    print(
        f"\nwarm rerun floor: bare start-up {start_up:.2f} s + 4000 steps {steps:.2f} s"
        f" (on the {warm.feature_set} features the run chose) = {floor:.2f} s"
    )
    targets = [
        ("warm wall / (start-up + steps)", warm.wall / floor, "<=", 2.0),
        ("warm peak RSS, GB", warm.peak_rss / GB, "<", 0.5),
        ("first peak RSS, GB", first.peak_rss / GB, "<", 0.5),
        ("very first peak RSS, GB", very_first.peak_rss / GB, "<", 1.0),
        ("warm export, s", warm.export_seconds or float("inf"), "<", 1.0),
        ("first export, s", first.export_seconds or float("inf"), "<", 1.0),
    ]
    print()
    for name, value, relation, limit in targets:
        passed = value <= limit if relation == "<=" else value < limit
        print(f"{'PASS' if passed else 'MISS'}  {name:<32} {value:6.2f}  (target {relation} {limit})")


if __name__ == "__main__":
    main()
