"""Bottleneck extraction throughput against the physical limit: the backbone's bare forward pass.

Run: `.venv/bin/python bench/bottlenecks.py` (or `make bench`). For the bundled digits and for
photo-sized JPEGs generated on the fly it measures, on the same images and for each runtime
(LiteRT, the default on a CPU; TensorFlow):

  forward     the runtime alone on preprocessed images held in memory (the ceiling extraction can
              reach with that runtime and these threads);
  end-to-end  `retrain.extract.compute_bottlenecks` into a cold cache (read, decode, forward, write);
  per-image   retrain.py's shape, on TensorFlow: read, preprocess, forward a batch of one,
              `cache.put`, no threads;

and checks the targets: LiteRT end-to-end >= 0.8x LiteRT forward on digits and on photos, and
LiteRT end-to-end faster than TensorFlow end-to-end. Every runtime is opened and warmed up on every
batch shape first, so the rates compare steady states; the one-time costs (converting the backbone
to TFLite, tracing the TensorFlow graph) are printed separately.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

if TYPE_CHECKING:
    from retrain.backbones import Backbone
    from serve.preprocess import InputSpec

from hardware import cpu_model  # bench/, first on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
DIGITS_DIR = REPO / "image_dirs" / "digits"
RESULTS_DIR = REPO / "bench" / "results"

PHOTO_SIZE = (500, 375)  # (width, height): a typical web / ImageNet-sized photo
PHOTO_QUALITY = 90

# (image set, ratio name, minimum): what "extraction is fast enough" means.
TARGETS = (
    ("digits", "litert e2e/forward", 0.8),
    ("photos", "litert e2e/forward", 0.8),
    ("digits", "litert/tf e2e", 1.0),
    ("photos", "litert/tf e2e", 1.0),
)
RUNTIMES = ("litert", "tensorflow")

Forward = Callable[[np.ndarray], np.ndarray]


class OtherLoad:
    """CPU that other processes (or the hypervisor, as steal) used while a block ran, in cores.

    The rates only mean something on an otherwise idle machine; this says whether it was one.
    """

    def __init__(self) -> None:
        self.cores = 0.0

    def __enter__(self) -> OtherLoad:
        self._start = _cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        (busy0, own0, wall0), (busy1, own1, wall1) = self._start, _cpu_seconds()
        self.cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)


def _cpu_seconds() -> tuple[float, float, float]:
    """(busy CPU seconds of the whole machine, of this process and the children it waited for, wall clock);
    off Linux busy = own (reads as idle)."""
    own = sum(os.times()[:4])
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return own, own, time.perf_counter()
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own, time.perf_counter()


@dataclass
class SetResult:
    """Rates (images/s, median over repeats) for one image set; `runs` keeps every repeat's rate.
    `forward` and `end_to_end` are by runtime name."""

    name: str
    images: int
    mean_file_kb: float
    decode_1_thread: float
    forward: dict[str, float]
    end_to_end: dict[str, float]
    per_image: float
    per_image_images: int
    forward_cpu_ms: dict[str, float] = field(default_factory=dict)  # this process's CPU per image, all threads
    runs: dict[str, list[float]] = field(default_factory=dict)
    other_load: dict[str, list[float]] = field(default_factory=dict)  # cores used by other processes, per run

    def ratios(self) -> dict[str, float]:
        return {
            "litert e2e/forward": self.end_to_end["litert"] / self.forward["litert"],
            "tf e2e/forward": self.end_to_end["tensorflow"] / self.forward["tensorflow"],
            "litert/tf e2e": self.end_to_end["litert"] / self.end_to_end["tensorflow"],
            "litert e2e/per-image": self.end_to_end["litert"] / self.per_image,
            "litert ceiling/forward": self.ceiling("litert") / self.forward["litert"],
        }

    def ceiling(self, runtime: str, cores: int | None = None) -> float:
        """The best end-to-end rate the CPU allows: every core busy, each image costing its forward
        pass's CPU plus its preprocessing's (measured on one thread), nothing else."""
        cores = cores or len(os.sched_getaffinity(0))
        cpu_seconds = self.forward_cpu_ms[runtime] / 1000 + 1 / self.decode_1_thread
        return min(self.forward[runtime], cores / cpu_seconds)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--photos", default=300, show_default=True, type=click.IntRange(min=1), help="Generated JPEGs.")
@click.option("--digits", type=click.IntRange(min=1), help="Evenly spaced subset of the digits.  [default: all]")
@click.option("--batch_size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(min=1), help="Runs per rate; median.")
@click.option("--per_image", default=200, show_default=True, type=click.IntRange(min=1), help="Images in the loop.")
@click.option("--seed", default=0, show_default=True, help="Seed of the generated photos.")
@click.option("--json", "write_json", is_flag=True, help="Also write the results to bench/results/.")
def main(
    photos: int, digits: int | None, batch_size: int, repeat: int, per_image: int, seed: int, write_json: bool
) -> None:
    """Prints extraction throughput on digits and photos, its ratios, and PASS/MISS per target."""
    started = time.perf_counter()
    from retrain.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import tensorflow as tf

    from retrain.backbones import load_backbone

    backbone = load_backbone()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(_machine(tf.__version__, backbone.name))

    results = []
    with OtherLoad() as other, tempfile.TemporaryDirectory(prefix="bench-bottlenecks-") as tmp:
        open_seconds, runtimes = _open_runtimes(backbone, Path(tmp), batch_size)
        photo_dir = Path(tmp) / "photos"
        sets = {"digits": _digit_paths(digits), "photos": _make_photos(photo_dir, photos, seed)}
        for name, paths in sets.items():
            results.append(_bench_set(name, paths, backbone, runtimes, batch_size, repeat, per_image, Path(tmp)))

    elapsed = time.perf_counter() - started
    print()
    _print_table(results)
    print()
    print(
        "note: one-time costs, not in the rates: "
        + "; ".join(f"opening {name} {seconds:.1f}s" for name, seconds in open_seconds.items())
        + " (LiteRT's includes converting the backbone to TFLite, cached after the first run)."
    )
    print()
    verdicts = _print_targets(results)
    print(
        f"\ntotal run time: {elapsed:.0f}s; other processes used {other.cores:.2f} of {os.cpu_count()} cores meanwhile"
    )
    if other.cores > 0.1:
        print("warning: the machine was not idle, so the rates and ratios above are not reliable; run again when it is")
    if write_json:
        path = _write_json(
            results, verdicts, tf.__version__, backbone.name, batch_size, repeat, open_seconds, elapsed, other.cores
        )
        print(f"results written to {path.relative_to(REPO)}")


def _open_runtimes(backbone: Backbone, cache_root: Path, batch_size: int) -> tuple[dict[str, float], dict]:
    """Each runtime opened once (LiteRT converts the backbone into `cache_root`), with what that cost."""
    from retrain.runtimes import open_runtime

    spec = backbone.input_spec
    batch = np.zeros((batch_size, spec.height, spec.width, 3), dtype=np.float32)
    seconds, runtimes = {}, {}
    for name in RUNTIMES:
        started = time.perf_counter()
        runtimes[name] = open_runtime(backbone, cache_root, name)
        runtimes[name](batch)
        seconds[name] = time.perf_counter() - started
    return seconds, runtimes


def _warm_up(forward: Forward, spec: InputSpec, sizes: set[int]) -> None:
    """oneDNN and XNNPACK set up per batch shape on first use; a few calls each keeps that out of the timing."""
    for size in sorted(sizes):
        batch = np.zeros((size, spec.height, spec.width, 3), dtype=np.float32)
        for _ in range(3):
            forward(batch)


def _bench_set(
    name: str,
    paths: list[Path],
    backbone: Backbone,
    runtimes: dict[str, Forward],
    batch_size: int,
    repeat: int,
    per_image: int,
    tmp: Path,
) -> SetResult:
    """The rates for one image set, each a median over `repeat` runs."""
    from retrain.cache import BottleneckCache, image_digest
    from retrain.extract import compute_bottlenecks
    from serve.preprocess import preprocess

    spec = backbone.input_spec
    count = len(paths)
    print(f"\n[{name}] {count} images", flush=True)
    tail = count % batch_size
    for forward in runtimes.values():
        _warm_up(forward, spec, {batch_size, 1} | ({tail} if tail else set()))

    pixels = np.empty((count, spec.height, spec.width, 3), dtype=np.float32)  # 1 GB for all digits: no extra copy
    seconds = 0.0
    for index, path in enumerate(paths):
        started = time.perf_counter()
        image = preprocess(path.read_bytes(), spec)
        seconds += time.perf_counter() - started
        pixels[index] = image  # first touch of fresh pages costs ~1 ms an image here: not decoding
    decode_rate = count / seconds
    batches = [pixels[i : i + batch_size] for i in range(0, count, batch_size)]
    reference = {key: np.concatenate([forward(batch) for batch in batches]) for key, forward in runtimes.items()}

    def new_cache(label: str) -> BottleneckCache:
        root = Path(tempfile.mkdtemp(prefix=f"{name}-{label}-", dir=tmp))
        return BottleneckCache(root, backbone.cache_id, backbone.feature_dim)

    forward_cpu: dict[str, list[float]] = {runtime: [] for runtime in runtimes}

    def run_forward(runtime: str) -> float:
        forward = runtimes[runtime]
        started, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            forward(batch)
        forward_cpu[runtime].append((time.process_time() - cpu) / count * 1000)
        return count / (time.perf_counter() - started)

    def run_end_to_end(runtime: str) -> float:
        cache = new_cache(f"e2e-{runtime}")
        started = time.perf_counter()
        vectors, ok, stats = compute_bottlenecks(
            paths, backbone, cache, batch_size=batch_size, runtime=lambda: runtimes[runtime]
        )
        rate = count / (time.perf_counter() - started)
        if not ok.all() or stats.computed != count or stats.cached:
            raise RuntimeError(f"{name}: extraction computed {stats.computed} of {count} ({stats.cached} cached)")
        if not np.allclose(vectors, reference[runtime], atol=1e-3):
            raise RuntimeError(f"{name}: {runtime} extraction differs from its forward pass on pre-decoded pixels")
        return rate

    loop_paths = _evenly(paths, per_image)

    def run_per_image() -> float:
        forward = runtimes["tensorflow"]
        cache = new_cache("loop")
        started = time.perf_counter()
        for path in loop_paths:
            data = path.read_bytes()
            key = cache.key(image_digest(data))
            cache.put(key, forward(preprocess(data, spec)[np.newaxis])[0])
        return len(loop_paths) / (time.perf_counter() - started)

    measures: dict[str, Callable[[], float]] = {}
    for runtime in runtimes:
        measures[f"{runtime} forward"] = lambda runtime=runtime: run_forward(runtime)
        measures[f"{runtime} end_to_end"] = lambda runtime=runtime: run_end_to_end(runtime)
    measures["tensorflow per_image"] = run_per_image
    runs: dict[str, list[float]] = {key: [] for key in measures}
    other_load: dict[str, list[float]] = {key: [] for key in measures}
    for _ in range(repeat):
        for key, run in measures.items():
            with OtherLoad() as other:
                runs[key].append(run())
            other_load[key].append(other.cores)
            print(f"  {key:<22} {runs[key][-1]:7.1f} img/s   (other processes: {other.cores:.2f} cores)", flush=True)
    median = {key: statistics.median(values) for key, values in runs.items()}
    return SetResult(
        name=name,
        images=count,
        mean_file_kb=statistics.fmean(path.stat().st_size for path in paths) / 1024,
        decode_1_thread=decode_rate,
        forward={runtime: median[f"{runtime} forward"] for runtime in runtimes},
        forward_cpu_ms={runtime: statistics.median(values) for runtime, values in forward_cpu.items()},
        end_to_end={runtime: median[f"{runtime} end_to_end"] for runtime in runtimes},
        per_image=median["tensorflow per_image"],
        per_image_images=len(loop_paths),
        runs=runs,
        other_load=other_load,
    )


def _evenly(paths: Sequence[Path], count: int | None) -> list[Path]:
    """`count` paths spread over the whole list (every class, not just the first), in order."""
    if count is None or count >= len(paths):
        return list(paths)
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, count)]


def _digit_paths(count: int | None) -> list[Path]:
    paths = sorted(DIGITS_DIR.glob("*/*.png"))
    if not paths:
        raise click.ClickException(f"no digits under {DIGITS_DIR}")
    return _evenly(paths, count)


def _make_photos(folder: Path, count: int, seed: int) -> list[Path]:
    """Deterministic photo-like JPEGs, so decoding costs what a real photo of that size costs."""
    folder.mkdir(parents=True)
    paths = []
    for index in range(count):
        path = folder / f"photo_{index:04d}.jpg"
        _photo(np.random.default_rng([seed, index])).save(path, "JPEG", quality=PHOTO_QUALITY)
        paths.append(path)
    return paths


def _photo(rng: np.random.Generator) -> Image.Image:
    """Smooth colour field + soft-edged shapes + sensor-like noise: gradients, edges and texture."""
    width, height = PHOTO_SIZE
    grid = rng.integers(0, 256, size=(int(rng.integers(3, 7)), int(rng.integers(4, 9)), 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(5, 15))):
        x0, x1 = sorted(int(v) for v in rng.integers(-50, width + 50, size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(-50, height + 50, size=2))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 12)))
    image = image.filter(ImageFilter.GaussianBlur(radius=1.2))
    noise = rng.normal(0.0, 5.0, size=(height, width, 1)) + rng.normal(0.0, 2.0, size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def _machine(tf_version: str, backbone: str) -> str:
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return (
        f"machine: {cpu_model()}, {cores} cores ({usable} usable), {platform.system()} {platform.machine()}\n"
        f"software: Python {platform.python_version()}, TensorFlow {tf_version}, numpy {np.__version__}, "
        f"Pillow {Image.__version__}; backbone {backbone}"
    )


def _print_table(results: list[SetResult]) -> None:
    header = (
        f"{'set':<7} {'images':>6} {'KB/img':>7} {'decode 1thr':>11} {'LiteRT fwd':>10} {'LiteRT e2e':>10} "
        f"{'TF fwd':>7} {'TF e2e':>7} {'TF 1-by-1':>9} {'LiteRT e2e/fwd':>14} {'LiteRT/TF e2e':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratios = r.ratios()
        print(
            f"{r.name:<7} {r.images:>6} {r.mean_file_kb:>7.1f} {r.decode_1_thread:>11.0f} "
            f"{r.forward['litert']:>10.1f} {r.end_to_end['litert']:>10.1f} {r.forward['tensorflow']:>7.1f} "
            f"{r.end_to_end['tensorflow']:>7.1f} {r.per_image:>9.1f} {ratios['litert e2e/forward']:>14.2f} "
            f"{ratios['litert/tf e2e']:>13.2f}"
        )
    print(
        f"rates in images/s, median of {len(next(iter(results[0].runs.values())))} run(s); decode 1thr = read + "
        "preprocess on one thread; TF 1-by-1 = retrain.py's per-image loop on "
        + ", ".join(f"{r.per_image_images} {r.name}" for r in results)
    )
    cores = len(os.sched_getaffinity(0))
    for r in results:
        ratios = r.ratios()
        print(
            f"{r.name}: LiteRT's forward pass costs {r.forward_cpu_ms['litert']:.1f} core-ms an image and "
            f"preprocessing {1000 / r.decode_1_thread:.1f}; with both perfectly overlapped on {cores} cores, end to "
            f"end cannot pass {r.ceiling('litert'):.0f} img/s = {ratios['litert ceiling/forward']:.2f} x the forward "
            f"pass (reached: {ratios['litert e2e/forward'] / ratios['litert ceiling/forward']:.2f} of that)"
        )


def _print_targets(results: list[SetResult]) -> list[dict]:
    by_name = {r.name: r for r in results}
    verdicts = []
    for name, ratio, minimum in TARGETS:
        value = by_name[name].ratios()[ratio]
        verdict = "PASS" if value >= minimum else "MISS"
        verdicts.append({"set": name, "ratio": ratio, "minimum": minimum, "value": value, "verdict": verdict})
        print(f"{verdict}  {name:<7} {ratio:<14} {value:5.2f}  (target >= {minimum})")
    return verdicts


def _write_json(
    results: list[SetResult],
    verdicts: list[dict],
    tf_version: str,
    backbone: str,
    batch_size: int,
    repeat: int,
    open_seconds: dict[str, float],
    elapsed: float,
    other_cores: float,
) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"bottlenecks-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()},
        "versions": {"python": platform.python_version(), "tensorflow": tf_version, "pillow": Image.__version__},
        "backbone": backbone,
        "batch_size": batch_size,
        "repeat": repeat,
        "open_seconds": open_seconds,
        "elapsed_seconds": elapsed,
        "other_load_cores": other_cores,
        "sets": [{**asdict(r), "ratios": r.ratios()} for r in results],
        "targets": verdicts,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


if __name__ == "__main__":
    main()
