"""Bottleneck extraction on a Ray cluster (`retrain --ray_address ...`).

Only extraction grows with the number of images, so only extraction leaves the driver. The driver
discovers the images, looks each one up in the cache (reading it once to hash it) and hands the
misses to a Ray Data pipeline:

    (path, digest) rows -> read and preprocess in tasks -> the backbone in an actor pool
                        -> each vector written to the shared cache by the node that computed it

Each actor loads the backbone once, through the same `open_runtime` a local run uses (LiteRT on a
CPU, TensorFlow where the actor has a GPU), and writes every vector atomically, so a node lost
mid-batch leaves no partial entry and Ray reruns its batch elsewhere. The driver then reads the
vectors back from the cache: the rest of the run (split, head, export) is the local run's, and a
file the cluster could not decode is retried by the local path, which skips it with the local
warning.

`--image_dir` and `--bottleneck_dir` must be paths that every node sees (a shared filesystem);
`check_nodes_see` says which node does not, before any heavy work. Paths travel as the OS's bytes:
Arrow strings must be UTF-8, and a file name need not be.

Decoding memory: a read task decodes its images one after another, each within a budget of the
run's `--decode_memory_mb` (an image that needs more is left to the driver, which skips it with the
local warning), so a node holds at most that much per read task Ray runs on it at once (one per
core, or fewer: READ_TASK_CPUS each, beside the actors). A budget shared by a node's tasks would
need a Ray actor per node to hold it; not done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from retrain.backbones import Backbone
from retrain.cache import BottleneckCache, image_digest
from retrain.errors import RetrainError
from retrain.extract import DECODE_MEMORY_BYTES
from retrain.files import read_regular_file
from retrain.progress import progress_bar
from serve.budget import DecodeBudget
from serve.preprocess import ImageDecodeError, InputSpec, preprocess

LOCAL = "local"  # --ray_address local: a private cluster on this machine, stopped with the run
ACTOR_THREADS = 1  # each actor's LiteRT interpreter runs one thread: more actors use more cores
ACTOR_CPUS = 0.75  # what an actor asks Ray for, so that with a read task's share a node runs an actor per core
PROGRESS_LINES = 10  # without a terminal, a progress line each tenth of the way (a RayJob's log)
MAX_BLOCKS = 4096  # how finely the rows are split into read tasks, at most
READ_TASK_CPUS = 0.25  # reading and resizing an image costs a fifth to a third of its forward pass
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's nodes use 127.0.0.1, not the host's address
STALL_AFTER_BATCHES_ENV = "RETRAIN_RAY_STALL_AFTER_BATCHES"
"""For the fault tests: an actor on a node started with this variable stops working after that many
batches, as a node does before it is lost, so the test can kill the node with work in flight."""


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    nodes: int
    cpus: float
    gpus: float
    startup_seconds: float


@dataclass(frozen=True)
class ClusterTiming:
    """One extraction on the cluster: the whole of it, and its steady state after the first vectors
    came back (worker processes started, actors created, a backbone loaded in each)."""

    images: int  # vectors computed (a file that would not decode is left out)
    seconds: float
    start_up_seconds: float  # until the first batch of vectors reached the driver
    first_batch: int
    nodes: int

    @property
    def all_at_once(self) -> bool:
        """Whether every vector came back with the first batch: then there is no steady state to time."""
        return self.images <= self.first_batch or self.seconds - self.start_up_seconds < 1e-6

    @property
    def steady_rate(self) -> float:
        """Images/s after the first batch, or the overall rate if it all came back at once."""
        if self.all_at_once:
            return self.images / max(self.seconds, 1e-9)
        return (self.images - self.first_batch) / (self.seconds - self.start_up_seconds)


def connect(address: str) -> ClusterInfo:
    """Joins the Ray cluster at `address` (`auto`, `ray://host:port`, `host:port`), or starts a private
    one for `local`; RetrainError if Ray is not installed or the cluster cannot be reached."""
    try:
        import ray
    except ImportError as e:
        raise RetrainError("--ray_address needs Ray: pip install 'retrain[cluster]'") from e
    started = time.monotonic()
    options = {"logging_level": logging.ERROR, "configure_logging": True}
    try:
        if address == LOCAL:
            os.environ.setdefault(SINGLE_NODE_ENV, "0")  # binds the private cluster to loopback
            ray.init(address="local", include_dashboard=False, **options)  # never an existing cluster
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RetrainError(f"cannot reach the Ray cluster at --ray_address {address}: {_first_line(e)}") from e
    _quiet_ray_data()
    resources = ray.cluster_resources()
    return ClusterInfo(
        address=address,
        nodes=len(_alive_nodes()),
        cpus=resources.get("CPU", 0.0),
        gpus=resources.get("GPU", 0.0),
        startup_seconds=time.monotonic() - started,
    )


def disconnect() -> None:
    import ray

    ray.shutdown()


def check_nodes_see(image_dir: Path, labels: Sequence[str], bottleneck_dir: Path) -> None:
    """Every alive node can list `image_dir` and its label folders and write into `bottleneck_dir`;
    otherwise a RetrainError naming the nodes and what they cannot do."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_paths)
    pending = {
        node["NodeManagerAddress"] + " " + node["NodeID"][:8]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(str(image_dir), list(labels), str(bottleneck_dir))
        for node in _alive_nodes()
    }
    problems = [f"node {node} {problem}" for node, ref in pending.items() if (problem := ray.get(ref))]
    if problems:
        raise RetrainError(
            "; ".join(problems) + ". With --ray_address, --image_dir and --bottleneck_dir must be paths "
            "that every node of the cluster sees (a shared filesystem)"
        )


def _probe_paths(image_dir: str, labels: list[str], bottleneck_dir: str) -> str | None:
    """Runs on one node: what it cannot do with the run's folders, or None."""
    try:
        present = set(os.listdir(image_dir))
    except OSError as e:
        return f"cannot read --image_dir {image_dir}: {e.strerror or e}"
    missing = [label for label in labels if label not in present]
    if missing:
        return f"sees --image_dir {image_dir} without the label folders {', '.join(missing[:3])}"
    try:
        os.makedirs(bottleneck_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=bottleneck_dir, prefix=".probe-"):
            pass
    except OSError as e:
        return f"cannot write --bottleneck_dir {bottleneck_dir}: {e.strerror or e}"
    return None


class RayExtraction:
    """Computes missing vectors on the cluster and writes them into the shared cache.

    Called by `compute_bottlenecks` with the misses, as (path, content digest) pairs; it returns
    nothing: the caller reads what was computed from the cache, which is where the result lives.
    """

    name = "ray"

    def __init__(
        self,
        backbone: Backbone,
        cache: BottleneckCache,
        runtime: str,
        batch_size: int,
        decode_memory_bytes: int = DECODE_MEMORY_BYTES,
    ) -> None:
        self.backbone = replace(backbone)  # a copy without the built model: actors build their own
        self.cache = cache
        self.runtime = runtime
        self.batch_size = batch_size
        self.decode_memory_bytes = decode_memory_bytes

    def __call__(self, jobs: Sequence[tuple[Path, str]]) -> None:
        import ray
        import ray.data

        from retrain import report

        resources = ray.cluster_resources()
        gpus = 1 if resources.get("GPU") else None
        if self.runtime != "tensorflow" and not gpus:
            self._convert_once()
        nodes = len(_alive_nodes())
        most = max(1, int(resources["GPU"]) if gpus else int(resources.get("CPU", 1) // (ACTOR_CPUS + READ_TASK_CPUS)))
        # Ray Data places actors with SPREAD: the first `nodes` actors go one to a node.
        actors = ray.data.ActorPoolStrategy(min_size=min(nodes, most), max_size=most)
        rows = [{"path": os.fsencode(os.path.abspath(path)), "digest": digest} for path, digest in jobs]  # not cwd
        blocks = max(1, min(len(rows) // self.batch_size, MAX_BLOCKS))  # a read task per batch: work spreads early
        dataset = (
            ray.data.from_items(rows, override_num_blocks=blocks)
            .map_batches(
                _read_images, fn_kwargs={"spec": self.backbone.input_spec, "max_bytes": self.decode_memory_bytes},
                batch_size=self.batch_size, num_cpus=READ_TASK_CPUS,
            )
            .map_batches(
                _ComputeVectors, fn_constructor_args=(self.backbone, self.cache, self.runtime),
                batch_size=self.batch_size, compute=actors, num_cpus=ACTOR_CPUS, num_gpus=gpus,
            )
        )  # fmt: skip
        workers: set[str] = set()
        started, first, done, logged = time.monotonic(), None, 0, 0
        with progress_bar(total=len(rows), desc=f"Computing bottlenecks on Ray ({report.nodes(nodes)})") as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                if first is None:
                    first = (time.monotonic() - started, len(batch["digest"]))
                workers.update(batch["node"].tolist())
                bar.update(len(batch["digest"]))
                done += len(batch["digest"])
                if bar.disable and done * PROGRESS_LINES // len(rows) > logged:  # no terminal: a line per 10%
                    logged = done * PROGRESS_LINES // len(rows)
                    report.cluster_progress(done, len(rows), time.monotonic() - started, len(workers))
        self.timing = ClusterTiming(done, time.monotonic() - started, *(first or (0.0, 0)), len(workers))
        report.cluster_extraction(self.timing)

    def _convert_once(self) -> None:
        """The feature model, converted here once, before actors on every node look for it."""
        from retrain.feature_models import ConversionError, cached_feature_model

        with contextlib.suppress(ConversionError, ValueError, RuntimeError):  # then the actors fall back to
            cached_feature_model(self.backbone, self.cache.root)  # TensorFlow, as a local run does, and say so


def _read_images(batch: dict[str, np.ndarray], spec: InputSpec, max_bytes: int) -> dict[str, np.ndarray]:
    """Reads and preprocesses a batch of files; drops the ones that changed since the driver hashed
    them or do not decode within `max_bytes` (the driver's local pass skips those, with the local warning)."""
    budget = DecodeBudget(max_bytes)
    digests, pixels = [], []
    for path, digest in zip(batch["path"], batch["digest"], strict=True):
        try:
            data = read_regular_file(os.fsdecode(bytes(path)))
            if image_digest(data) != digest:
                continue
            pixels.append(preprocess(data, spec, budget=budget))
        except (OSError, ImageDecodeError):
            continue
        digests.append(digest)
    empty = np.zeros((0, spec.height, spec.width, 3), np.float32)
    return {"digest": np.array(digests, dtype=object), "pixels": np.stack(pixels) if pixels else empty}


class _ComputeVectors:
    """One backbone per actor, loaded once; writes each vector to the cache as the local loop does."""

    def __init__(self, backbone: Backbone, cache: BottleneckCache, runtime: str) -> None:
        import ray

        from retrain.runtimes import open_runtime

        self.forward = open_runtime(backbone, cache.root, runtime, threads=ACTOR_THREADS)
        self.cache = cache
        self.node = ray.get_runtime_context().get_node_id()
        self.stall_after = int(os.environ.get(STALL_AFTER_BATCHES_ENV, "0")) or None
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.stall_after is not None and self.batches >= self.stall_after:
            print(f"retrain: stalling after {self.batches} batches ({STALL_AFTER_BATCHES_ENV})", flush=True)
            time.sleep(3600)
        digests = batch["digest"]
        if len(digests):
            vectors = self.forward(np.asarray(batch["pixels"], dtype=np.float32))
            for digest, vector in zip(digests, vectors, strict=True):
                self.cache.put(self.cache.key(str(digest)), vector)
        self.batches += 1
        return {"digest": digests, "node": np.array([self.node] * len(digests), dtype=object)}


def _alive_nodes() -> list[dict]:
    import ray

    return [node for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) > 0]


def _quiet_ray_data() -> None:
    """Our progress line instead of Ray Data's bars and per-dataset log lines."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
