"""`make demo` against this host's limit: the figures a newcomer can check on their own CPU.

Run: `.venv/bin/python bench/demo.py` (or `make bench`). It runs the demo's command,
`retrain --image_dir image_dirs/digits`, through the installed console script into a fresh cache
(what `make demo` does on a fresh machine), then measures on the same host, in the same run, the
limit its extraction works against: LiteRT's forward pass alone over the same feature model
(final+middle, the one the demo extracts), on the same digits already decoded and held in memory,
with the same threads and batch size. Absolute rates differ several-fold between CPUs; the ratio
extraction / limit is what says whether the pipeline keeps the backbone busy.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
from bottlenecks import OtherLoad  # bench/, first on sys.path when run as a script
from hardware import cpu_model

REPO = Path(__file__).resolve().parents[1]
RETRAIN = Path(sys.executable).with_name("retrain")
DEMO = ["--image_dir", "image_dirs/digits"]
BATCH = 32  # retrain's --extraction_batch_size default
FEATURES = "final+middle"  # what the demo extracts in its one pass (every candidate feature set)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1), help="Forward passes; median.")
def main(repeat: int) -> None:
    """Prints the demo's extraction rate and wall time, this host's forward limit, and their ratio."""
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp, OtherLoad() as other:
        demo = _run_demo(Path(tmp))
        limit = _forward_limit(Path(tmp) / "cache", repeat)
    print(f"demo ({shlex.join(['retrain', *DEMO])}, fresh cache): {demo['wall']:.1f} s wall")
    print(f"  extraction: {demo['rate']:.1f} images/s ({demo['log']})")
    print(f"  this host's limit, LiteRT forward pass alone on the same feature model: {limit:.1f} images/s")
    print(f"  extraction / limit: {demo['rate'] / limit:.2f}")
    print(f"other processes used {other.cores:.2f} of {os.cpu_count()} cores meanwhile")
    if other.cores > 0.1:
        print("warning: the machine was not idle, so these figures are not reliable; run again when it is")


def _run_demo(root: Path) -> dict:
    """The demo's command in a fresh cache, with its extraction line and wall time."""
    command = [str(RETRAIN), *DEMO, "--bottleneck_dir", str(root / "cache"), "--models_dir", str(root / "models")]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    line = next(line for line in result.stdout.splitlines() if line.startswith("Bottlenecks:"))
    rate = float(re.search(r"\(([\d.]+) images/s", line).group(1))
    return {"wall": wall, "rate": rate, "log": line.split(" (")[0].removeprefix("Bottlenecks: ")}


def _forward_limit(cache_root: Path, repeat: int) -> float:
    """LiteRT's images/s on the demo's feature model over the digits held in memory (median of `repeat`)."""
    from retrain.backbones import load_backbone
    from retrain.backbones.taps import feature_sets, tapped
    from retrain.runtimes import open_runtime
    from serve.preprocess import preprocess

    network = load_backbone()
    backbone = tapped(network, feature_sets(network)[FEATURES])
    forward = open_runtime(backbone, cache_root, "litert")  # the feature model the demo wrote there
    paths = sorted((REPO / "image_dirs" / "digits").glob("*/*.png"))
    spec = backbone.input_spec
    pixels = np.stack([preprocess(path.read_bytes(), spec) for path in paths])
    batches = [pixels[i : i + BATCH] for i in range(0, len(pixels), BATCH)]
    for size in {len(batches[0]), len(batches[-1])}:  # XNNPACK sets up per batch shape on first use
        forward(np.zeros((size, *pixels.shape[1:]), dtype=np.float32))
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        for batch in batches:
            forward(batch)
        rates.append(len(pixels) / (time.perf_counter() - started))
    return float(np.median(rates))


if __name__ == "__main__":
    main()
