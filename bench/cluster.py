"""Bottleneck extraction through Ray against extraction in one process, on the same images.

Run: `.venv/bin/python bench/cluster.py` (or `make bench`; the two-node part needs root, for the
private network namespace its cluster runs in). On the bundled digits (1,797 images), each run
into a fresh bottleneck cache whose TFLite feature model is already written (so no run pays a
conversion), it measures:

  local          `compute_bottlenecks` in this process: LiteRT with a thread per core
  ray local      `retrain --ray_address local`'s path: a private Ray cluster on this machine (every
                 core), started, then the extraction through it (`RayExtraction`)
  ray 1 node     a cluster of one node with one CPU        } started as tests/ray_cluster.py starts
  ray 2 nodes    a cluster of two nodes with one CPU each  } them: `ray start` in a network namespace

Each Ray run is a fresh driver process, as a `retrain` run is; its start-up (joining or starting
the cluster) is printed apart from the extraction, which includes creating the actors and loading
a backbone in each; the rate "once started" counts from the first vectors back. Targets
(issue 13): ray local once started >= 0.8 x local images/s; two nodes vs one is printed (ideal
2.0, on two cores shared with the driver).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from hardware import cpu_model  # bench/, first on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
DIGITS_DIR = REPO / "image_dirs" / "digits"
sys.path.insert(0, str(REPO))  # tests.ray_cluster, the multi-node harness the cluster tests use


def _digits() -> list[Path]:
    return sorted(DIGITS_DIR.glob("*/*.png"))


def _fresh_cache(root: Path):
    """A bottleneck cache for the default backbone with its feature model already written."""
    from retrain.backbones import load_backbone
    from retrain.cache import BottleneckCache
    from retrain.feature_models import cached_feature_model

    backbone = load_backbone()
    cache = BottleneckCache(root, backbone.cache_id, backbone.feature_dim)
    cached_feature_model(backbone, cache.root)
    return backbone, cache


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(context: click.Context) -> None:
    """Prints images/s of local and Ray extraction, Ray's start-up, and PASS/MISS per target."""
    if context.invoked_subcommand:
        return
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    from retrain.extract import compute_bottlenecks

    images = _digits()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="retrain-bench-cluster-") as folder:
        root = Path(folder)
        backbone, cache = _fresh_cache(root / "local")
        print("  local ...", flush=True)
        started = time.monotonic()
        _, ok, stats = compute_bottlenecks(images, backbone, cache)
        seconds = time.monotonic() - started
        assert ok.all() and stats.computed == len(images), stats
        results["local"] = {"startup": 0.0, "seconds": seconds, "images": stats.computed}

        print("  ray local ...", flush=True)
        results["ray local"] = _through_ray("local", root / "ray-local", [sys.executable])
        try:
            from tests.ray_cluster import RayCluster, require_cluster_tools

            require_cluster_tools()
        except BaseException as e:  # pytest's Skipped is a BaseException
            print(f"  (no multi-node runs: {e})")
        else:
            for name, workers in (("ray 1 node", []), ("ray 2 nodes", [{"cpus": 1}])):
                print(f"  {name} ...", flush=True)
                started = time.monotonic()
                cluster = RayCluster.start(workers=workers, head_cpus=1)
                cluster_start = time.monotonic() - started
                try:
                    from tests.ray_cluster import ADDRESS

                    folder = root / name.replace(" ", "-")
                    result = _through_ray(ADDRESS, folder, cluster.command([sys.executable]), cluster.env)
                finally:
                    cluster.stop()
                results[name] = {**result, "cluster_start": cluster_start}

    print()
    print(f"{'run':<12} {'join s':>7} {'spin-up s':>9} {'extract s':>9} {'images/s':>9} {'once started':>13}")
    for name, result in results.items():
        result["rate"] = result["images"] / result["seconds"]
        result.setdefault("steady_rate", result["rate"])
        print(
            f"{name:<12} {result['startup']:7.1f} {result.get('spin_up', 0.0):9.1f} {result['seconds']:9.1f}"
            f" {result['rate']:9.1f} {result['steady_rate']:13.1f}"
        )
    for name in ("ray 1 node", "ray 2 nodes"):
        if name in results:
            print(f"({name}: its `ray start` processes took {results[name]['cluster_start']:.1f} s to come up)")
    print(
        "join: ray.init (for `local`, starting the cluster); spin-up: until the first vectors came back (worker"
        " processes, actors, a backbone in each); once started: images/s after that"
    )
    print()
    ratio = results["ray local"]["steady_rate"] / results["local"]["rate"]
    verdict = "PASS" if ratio >= 0.8 else "MISS"
    print(f"{verdict}  ray local once started / local images/s  {ratio:5.2f}  (target >= 0.8)")
    overall = results["ray local"]["rate"] / results["local"]["rate"]
    print(f"      ray local overall / local images/s       {overall:5.2f}")
    if "ray 2 nodes" in results:
        scaling = results["ray 2 nodes"]["steady_rate"] / results["ray 1 node"]["steady_rate"]
        print(f"      two nodes / one node, once started       {scaling:5.2f}  (ideal 2.0 with a core each)")


@main.command("ray-extract", hidden=True)
@click.option("--address", required=True)
@click.option("--cache_dir", required=True, type=click.Path(path_type=Path))
def ray_extract(address: str, cache_dir: Path) -> None:
    """One driver: joins `address`, computes the digits' vectors through it, prints JSON timings."""
    from retrain import cluster

    backbone, cache = _fresh_cache(cache_dir)
    started = time.monotonic()
    cluster.connect(address)
    startup = time.monotonic() - started
    jobs = list({_digest(path): path for path in _digits()}.items())  # distinct contents, as retrain sends
    jobs = [(path, digest) for digest, path in jobs]
    extraction = cluster.RayExtraction(backbone, cache, "auto", 32)
    extraction(jobs)
    cluster.disconnect()
    computed = sum(1 for _ in cache.directory.rglob("*.npy"))
    assert computed == len(jobs), f"{computed} vectors for {len(jobs)} images"
    timing = extraction.timing
    print(json.dumps({"startup": startup, "seconds": timing.seconds, "images": computed,
                      "spin_up": timing.start_up_seconds, "steady_rate": timing.steady_rate}))  # fmt: skip


def _digest(path: Path) -> str:
    from retrain.cache import image_digest

    return image_digest(path.read_bytes())


def _through_ray(address: str, cache_dir: Path, python: list[str], env: dict[str, str] | None = None) -> dict:
    command = [*python, __file__, "ray-extract", "--address", address, "--cache_dir", str(cache_dir)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1800, env=env)
    if run.returncode != 0:
        raise click.ClickException(f"{shlex.join(command)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
