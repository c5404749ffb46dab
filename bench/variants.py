"""LiteRT latency of model.tflite against its quantized copies, on this CPU, in one run.

Run: `.venv/bin/python bench/variants.py [--model_dir EXPORT]`. Without `--model_dir` it first runs
the installed `retrain --image_dir image_dirs/digits --export tflite,tflite_fp16,tflite_int8` into a
temporary folder (a fresh cache: about a minute). Then, for each TFLite file of the export, one
LiteRT interpreter (ai-edge-litert, XNNPACK, as serve and a phone's CPU run it) with 1 thread and
with every core: the time to load it, and the latency of one image (batch 1, preprocessed digits
held in memory), measured in rounds that take turns between the files (so drift in the machine's
speed falls on all of them alike); medians. Reported: file size, load time, p50 and p90 per image,
the ratios to model.tflite, and each file's test accuracy as the export measured it (model.json).
No target: the issue asks for the figures, and they depend on the CPU (int8 kernels gain most where
the CPU has VNNI).
"""

from __future__ import annotations

import json
import os
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

from serve.preprocess import preprocess
from serve.runtime import Runner, load_model

REPO = Path(__file__).resolve().parents[1]
RETRAIN = Path(sys.executable).with_name("retrain")
DIGITS = REPO / "image_dirs" / "digits"
EXPORT = ["--image_dir", str(DIGITS), "--export", "tflite,tflite_fp16,tflite_int8"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model_dir", type=click.Path(exists=True, file_okay=False), help="An export with the variants.")
@click.option("--images", default=50, show_default=True, type=click.IntRange(min=10), help="Images a round.")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(min=1), help="Rounds; medians.")
def main(model_dir: str | None, images: int, rounds: int) -> None:
    """Prints each TFLite file's size, load time and single-image latency, and the ratios to model.tflite."""
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as tmp:
        export = Path(model_dir) if model_dir else _export(Path(tmp))
        info = json.loads((export / "model.json").read_text())
        variants = info.get("variants") or {"tflite": {"file": "model.tflite"}}
        spec = load_model(export).info.input_spec
        files = sorted(DIGITS.glob("*/*.png"))[:: max(1, 1797 // images)][:images]
        pixels = [preprocess(path.read_bytes(), spec)[None] for path in files]
        print(f"export: {export} ({', '.join(entry['file'] for entry in variants.values())})")
        for threads in sorted({1, os.cpu_count() or 1}):
            with OtherLoad() as other:
                results = _measure(export, variants, pixels, threads, rounds)
            _print(variants, results, threads, len(pixels), rounds, other.cores)


def _export(root: Path) -> Path:
    command = [str(RETRAIN), *EXPORT, "--models_dir", str(root / "models"), "--bottleneck_dir", str(root / "cache")]
    print(f"exporting: {shlex.join(command)}")
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return root / "models" / "digits" / "1"


def _measure(
    export: Path, variants: dict[str, dict], pixels: list[np.ndarray], threads: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Per variant: median load seconds and per-image latency percentiles over all rounds."""
    loads: dict[str, list[float]] = {name: [] for name in variants}
    latencies: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(rounds):
        order = list(variants)[round_number % len(variants) :] + list(variants)[: round_number % len(variants)]
        for name in order:
            started = time.perf_counter()
            runner = Runner(export / variants[name]["file"], threads)
            loads[name].append(time.perf_counter() - started)
            for image in pixels:
                started = time.perf_counter()
                runner.scores(image)
                latencies[name].append(time.perf_counter() - started)
    return {
        name: {
            "load": float(np.median(loads[name])),
            "p50": float(np.percentile(latencies[name], 50)),
            "p90": float(np.percentile(latencies[name], 90)),
        }
        for name in variants
    }


def _print(
    variants: dict[str, dict],
    results: dict[str, dict[str, float]],
    threads: int,
    images: int,
    rounds: int,
    other: float,
) -> None:
    base = results["tflite"]
    print(f"\n{threads} thread(s), batch 1, {images} images x {rounds} rounds taking turns")
    print(f"{'file':<20} {'MB':>6} {'load ms':>8} {'p50 ms':>7} {'p90 ms':>7} {'p50 / float':>11} {'test acc':>8}")
    for name, entry in variants.items():
        result = results[name]
        accuracy = entry.get("test_accuracy")
        print(
            f"{entry['file']:<20} {entry.get('bytes', 0) / 1e6:>6.1f} {result['load'] * 1e3:>8.1f} "
            f"{result['p50'] * 1e3:>7.2f} {result['p90'] * 1e3:>7.2f} {result['p50'] / base['p50']:>11.2f} "
            f"{'-' if accuracy is None else f'{accuracy:.1%}':>8}"
        )
    print(f"other processes used {other:.2f} cores meanwhile" + (" (not idle: rerun)" if other > 0.1 else ""))


if __name__ == "__main__":
    main()
