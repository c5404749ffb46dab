"""`retrain --ray_address`: bottlenecks computed on a real Ray cluster of two nodes on this machine.

Each test starts its own cluster (tests/ray_cluster.py: `ray start` processes in a private network
namespace) and runs the real `retrain` command against it, as a user would.
"""

from __future__ import annotations

import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retrain.cluster import STALL_AFTER_BATCHES_ENV

from .conftest import REPO, copy_digits
from .ray_cluster import ADDRESS, RayCluster, require_cluster_tools

STEPS = "200"
BROKEN = b"\xff\xd8\xff\xe0 not really a jpeg"


@pytest.fixture(autouse=True)
def _cluster_tools() -> None:
    require_cluster_tools()


def _images(folder: Path, per_class: int) -> Path:
    images = copy_digits(folder, ["0", "1", "2", "3", "4"], per_class=per_class)
    (images / "0" / "broken.jpg").write_bytes(BROKEN)
    return images


def _retrain(images: Path, cache: Path, output: Path, *flags: str) -> list[str]:
    args = ["--image_dir", str(images), "--bottleneck_dir", str(cache), "--output_dir", str(output)]
    return [sys.executable, "-m", "retrain", *args, "--how_many_training_steps", STEPS, *flags]


def _entries(cache: Path) -> dict[str, np.ndarray]:
    """Every bottleneck in a cache by its path inside it; fails on any partial or stray file."""
    assert not [p for p in cache.rglob(".tmp-*")], "a temporary file was left in the cache"
    entries = {}
    for path in cache.rglob("*.npy"):
        vector = np.load(path)
        assert vector.dtype == np.float32 and vector.ndim == 1 and np.isfinite(vector).all(), path
        entries[str(path.relative_to(cache))] = vector
    return entries


def _computed(output: str) -> tuple[int, int]:
    match = re.search(r"(?m)^Bottlenecks: (\d+) from cache, (\d+) computed", output)
    assert match, output
    return int(match.group(1)), int(match.group(2))


def _training_log(output: str) -> list[tuple[str, float]]:
    return [(m.group(1), float(m.group(2))) for m in re.finditer(r"(?m)^(Step \d+: [^=]+)= ([0-9.]+)", output)]


def test_a_two_node_cluster_computes_what_a_local_run_computes(tmp_path: Path) -> None:
    images = _images(tmp_path / "images", per_class=16)
    local = subprocess.run(
        _retrain(images, tmp_path / "local-cache", tmp_path / "local"), capture_output=True, text=True, cwd=REPO
    )
    assert local.returncode == 0, local.stderr
    cluster = RayCluster.start(workers=[{"cpus": 1}], head_cpus=1)
    try:
        command = _retrain(images, tmp_path / "cache", tmp_path / "model", "--ray_address", ADDRESS)
        first = cluster.run(command, cwd=REPO)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        again = cluster.run(_retrain(images, tmp_path / "cache", tmp_path / "again", "--ray_address", ADDRESS))
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        cluster.stop()

    assert "Ray cluster at 127.0.0.1:6379: 2 nodes, 2 CPUs" in first.stdout
    assert "with the Ray cluster" in first.stdout
    assert re.search(r"(?m)^Ray: 80 images through the backbone on [12] nodes? in ", first.stdout)
    assert re.search(r"(?m)^Ray: \d+/81 images, [0-9.]+ images/s on [12] nodes?, ETA \d+s$", first.stdout)
    assert _computed(first.stdout) == _computed(local.stdout) == (0, 80)
    assert _computed(again.stdout) == (80, 0)  # a rerun computes nothing
    skipped = f"skipping {images / '0' / 'broken.jpg'}: not a decodable image"
    assert skipped in local.stderr and skipped in first.stderr

    # The same vectors, within the tolerance of LiteRT's batch composition, under the same keys.
    ours, theirs = _entries(tmp_path / "cache"), _entries(tmp_path / "local-cache")
    assert ours.keys() == theirs.keys() and len(ours) >= 80
    for key, vector in ours.items():
        np.testing.assert_allclose(vector, theirs[key], atol=2e-5, err_msg=key)
    # The same training log: accuracies exactly, cross entropies to the float noise of the vectors.
    log, reference = _training_log(first.stdout), _training_log(local.stdout)
    assert [name for name, _ in log] == [name for name, _ in reference] and log
    np.testing.assert_allclose([value for _, value in log], [value for _, value in reference], atol=1e-3)
    assert (
        re.search(r"Final test accuracy = .*", first.stdout)[0]
        == re.search(r"Final test accuracy = .*", local.stdout)[0]
    )


def test_a_node_lost_mid_extraction_costs_no_vector_and_no_entry(tmp_path: Path) -> None:
    """Two one-CPU nodes hold one actor each (0.75 + 0.25 CPU fill a node). The worker's actor
    computes one batch, then stalls with its next batch in flight; a replacement node joins and the
    worker is killed: Ray restarts its actor on the new node and reruns that batch. The run
    completes, every cache entry is whole, and a rerun computes nothing."""
    images = _images(tmp_path / "images", per_class=40)
    cluster = RayCluster.start(workers=[{"cpus": 1, "env": {STALL_AFTER_BATCHES_ENV: "1"}}], head_cpus=1)
    try:
        command = _retrain(images, tmp_path / "cache", tmp_path / "model", "--ray_address", ADDRESS)
        driver = cluster.popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = _read_until(driver, "retrain: stalling after 1 batches", timeout=600)
        cluster.add_worker(cpus=1)
        cluster.kill("worker1")
        rest, _ = driver.communicate(timeout=900)
        output += rest
        assert driver.returncode == 0, output[-4000:]
        again = cluster.run(_retrain(images, tmp_path / "cache", tmp_path / "again", "--ray_address", ADDRESS))
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        cluster.stop()
    assert _computed(output) == (0, 200)
    assert len(_entries(tmp_path / "cache")) >= 200
    assert _computed(again.stdout) == (200, 0)


def test_a_driver_interrupted_mid_extraction_leaves_a_cache_the_rerun_completes(tmp_path: Path) -> None:
    """The head's only actor computes one batch and stalls; Ctrl-C on the driver then ends the run
    with exit code 130. What was computed is cached whole, and a local rerun computes only the rest."""
    images = _images(tmp_path / "images", per_class=20)
    cluster = RayCluster.start(workers=[], head_cpus=1, head_env={STALL_AFTER_BATCHES_ENV: "1"})
    try:
        command = _retrain(images, tmp_path / "cache", tmp_path / "model", "--ray_address", ADDRESS)
        driver = cluster.popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = _read_until(driver, "retrain: stalling after 1 batches", timeout=600)
        driver.send_signal(signal.SIGINT)
        rest, _ = driver.communicate(timeout=300)
    finally:
        cluster.stop()
    output += rest
    assert driver.returncode == 130, output[-3000:]
    assert "retrain: error: interrupted; finished bottlenecks are cached, nothing was exported" in output
    cached = len(_entries(tmp_path / "cache"))  # whole entries only: _entries fails on a partial one
    assert cached >= 32 and not (tmp_path / "model").exists()
    rerun = subprocess.run(_retrain(images, tmp_path / "cache", tmp_path / "model"), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    from_cache, computed = _computed(rerun.stdout)
    assert from_cache >= 32 and from_cache + computed == 100


def test_a_node_that_cannot_see_the_image_dir_is_named_before_any_work(tmp_path: Path) -> None:
    shared = tmp_path / "shared"  # what the worker is started without, as a node that lacks the mount
    images = _images(shared / "images", per_class=4)
    cluster = RayCluster.start(workers=[{"cpus": 1, "blind_to": shared}], head_cpus=1)
    try:
        run = cluster.run(_retrain(images, shared / "cache", tmp_path / "model", "--ray_address", ADDRESS))
    finally:
        cluster.stop()
    assert run.returncode == 2, run.stdout + run.stderr
    error = run.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"retrain: error: node 127\.0\.0\.1 \w+ cannot read --image_dir {images}: No such file or directory\. "
        r"With --ray_address, --image_dir and --bottleneck_dir must be paths that every node of the cluster sees "
        r"\(a shared filesystem\)",
        error,
    ), error
    assert not list((shared / "cache").rglob("*.npy")) and not (tmp_path / "model").exists()


def _read_until(process: subprocess.Popen, marker: str, timeout: float) -> str:
    """What `process` printed up to and including the line with `marker`; fails if it exits first."""
    output, deadline = "", time.monotonic() + timeout
    while marker not in output:
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {marker!r} within {timeout:.0f} s:\n{output[-4000:]}")
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                pytest.fail(f"exited ({process.returncode}) before {marker!r}:\n{output[-4000:]}")
            output += line
    return output
