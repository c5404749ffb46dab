"""Serving latency and throughput against the bare LiteRT forward pass.

Run: `.venv/bin/python bench/serving.py [--model_dir DIR]`. Without --model_dir it first trains a
small model on the bundled digits (200 steps; bottlenecks come from ~/.cache/retrain). Then, on the
same model and the same interpreter settings the server uses, it measures:

  bare        one LiteRT interpreter, batch 1, on a preprocessed digit (the floor a request can reach);
  sequential  one client, one keep-alive connection, requests one after another to a real
              `python -m serve` subprocess on 127.0.0.1: `POST /predict` (multipart upload) and
              TF Serving's `POST /v1/models/<name>:predict` (`{"instances": [{"b64": ...}]}`);
  load        requests/s with 1, 4 and 16 clients (threads, each with its own keep-alive connection),
              the client counts taking turns in rounds so that a drift in machine speed hits all alike;

and checks the targets: single-client p50 <= 1.5 x bare + 5 ms; throughput at 16 clients >= 2 x at 1.
With `--baseline REV` the same HTTP phases also run, in the same run and alternating with this tree's
server phase by phase, against the server of git revision REV (a temporary worktree): p50 and
throughput before and after, as ratios (what a change to serve costs).
With `--models [N]` (N = 20 when the flag is given alone) it measures instead what N models of one
backbone cost a `serve --models_dir` server against one model: N copies of the export under the names
m01 ... mNN (equal heads, which does not matter to memory: a head is tens of kilobytes
either way), served with one shared backbone (the default) and with --no_share_backbones; and one
of them alone. Each round starts the three servers fresh, one after another (the order rotating
from round to round); once every model has answered a few requests, it reads the server's memory
(VmRSS, VmHWM of /proc/<pid>/status) and measures the sequential p50 of `:predict` requests, spread
over all the models (again, up to twice, if other processes were busy meanwhile). Targets: RSS with
N shared <= 1.5 x RSS with one; p50 with N shared unchanged within noise (<= 1.10 x, or more if the
one-model p50s already spread more than that between rounds).
The client is Python on the same cores as the server, so its CPU use is measured and printed too;
so is every other process's, and each phase first waits for the machine to be idle.
"""

from __future__ import annotations

import base64
import http.client
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
from hardware import cpu_model  # bench/, first on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
DIGITS_DIR = REPO / "image_dirs" / "digits"
RESULTS_DIR = REPO / "bench" / "results"

MODEL_NAME = "retrained"  # the server's default --model_name
CLIENTS = (1, 4, 16)
BOUNDARY = "benchserveboundary7d1f"

LATENCY_FACTOR, LATENCY_SLACK_MS = 1.5, 5.0  # p50 single client <= 1.5 x bare + 5 ms
SCALING_MIN = 2.0  # throughput at 16 clients >= 2 x throughput at 1

MANY_MODELS = 20  # --models given alone
RSS_FACTOR = 1.5  # RSS with N models of one backbone (shared) <= 1.5 x RSS with one
P50_NOISE = 1.10  # p50 with N models / with one: "unchanged" up to this, or the one-model p50s' own spread
LATENCY_ATTEMPTS = 3  # a latency phase during which other processes were busy is measured again, up to this often
WARM_UP_PER_MODEL = 5  # requests each model answers before memory and latency are measured
MEMORY_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")  # of /proc/<pid>/status, reported in MiB

IDLE_CORES = 0.1  # "idle": other processes use less than this many cores ...
IDLE_SECONDS = 5.0  # ... averaged over this long


# --- CPU accounting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds: the whole machine (busy), this process (the client), the server; and wall time."""

    machine: float
    client: float
    server: float
    wall: float


@dataclass
class CpuUse:
    """Average cores used during a block: by the client (this process), the server, and everything else."""

    client: float = 0.0
    server: float = 0.0
    other: float = 0.0
    seconds: float = 0.0


def _machine_busy_seconds() -> float | None:
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_seconds(pid: int | None) -> float:
    """utime + stime of another process (all its threads), from /proc/<pid>/stat; 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def cpu_sample(server_pid: int | None = None) -> CpuSample:
    """Off Linux the machine counts as busy only with our own CPU, so it reads as idle."""
    client = sum(os.times()[:2])
    server = _process_seconds(server_pid)
    machine = _machine_busy_seconds()
    return CpuSample(client + server if machine is None else machine, client, server, time.perf_counter())


def cpu_use(start: CpuSample, end: CpuSample) -> CpuUse:
    wall = max(end.wall - start.wall, 1e-9)
    client, server = end.client - start.client, end.server - start.server
    other = max(0.0, (end.machine - start.machine) - client - server)
    return CpuUse(client / wall, server / wall, other / wall, wall)


class CpuMeter:
    """Cores used by client, server and other processes while a block runs; the rates mean little if `other` > 0.1."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.use = CpuUse()

    def __enter__(self) -> CpuMeter:
        self._start = cpu_sample(self.server_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.use = cpu_use(self._start, cpu_sample(self.server_pid))


def wait_for_idle(server_pid: int | None, timeout: float) -> tuple[float, float]:
    """Polls until other processes used < IDLE_CORES over the last IDLE_SECONDS; (seconds waited, their load).

    Gives up after `timeout` seconds (the phase then runs anyway and reports how busy it was).
    """
    started = time.perf_counter()
    samples = [cpu_sample(server_pid)]
    while True:
        time.sleep(0.25)
        samples.append(cpu_sample(server_pid))
        while len(samples) > 2 and samples[-1].wall - samples[1].wall >= IDLE_SECONDS:
            samples.pop(0)
        if samples[-1].wall - samples[0].wall >= IDLE_SECONDS:
            other = cpu_use(samples[0], samples[-1]).other
            if other < IDLE_CORES or time.perf_counter() - started >= timeout:
                return time.perf_counter() - started, other


# --- results --------------------------------------------------------------------------------------


@dataclass
class Phase:
    """One measured phase: latencies (ms) of every request, the rate, and who used the CPU meanwhile."""

    name: str
    clients: int
    latencies_ms: list[float]
    seconds: float
    cpu: CpuUse
    waited_seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))

    def cpu_ms_per_request(self, cores: float) -> float:
        return cores * self.seconds / self.requests * 1000

    def summary(self) -> dict:
        return {
            "name": self.name,
            "clients": self.clients,
            "requests": self.requests,
            "seconds": self.seconds,
            "rate": self.rate,
            "p50_ms": self.percentile(50),
            "p90_ms": self.percentile(90),
            "p99_ms": self.percentile(99),
            "cpu_cores": asdict(self.cpu),
            "waited_for_idle_seconds": self.waited_seconds,
        }


@dataclass
class ServerOptions:
    """The server's knobs; None leaves the server's own default."""

    workers: int | None = None
    threads_per_worker: int | None = None
    max_batch_size: int | None = None
    batch_timeout_ms: float | None = None

    def args(self) -> list[str]:
        return [f"--{key}={value}" for key, value in asdict(self).items() if value is not None]

    def effective(self) -> dict[str, float]:
        """What the server will use: these knobs, else the defaults read from serve.cli itself (so never stale)."""
        from serve.cli import main as serve_main

        defaults = {param.name: param.default for param in serve_main.params}
        workers = self.workers or defaults["workers"]
        return {
            "workers": workers,
            "threads_per_worker": self.threads_per_worker or max(1, (os.cpu_count() or 1) // workers),
            "max_batch_size": self.max_batch_size or defaults["max_batch_size"],
            "batch_timeout_ms": defaults["batch_timeout_ms"]
            if self.batch_timeout_ms is None
            else self.batch_timeout_ms,
        }


@dataclass
class Results:
    bare_ms: float
    bare_p90_ms: float
    preprocess_ms: float
    phases: list[Phase] = field(default_factory=list)

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)


# --- main -----------------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model_dir", type=click.Path(file_okay=False, path_type=Path), help="[default: train one on digits]")
@click.option("--requests", default=300, show_default=True, type=click.IntRange(min=10), help="Sequential requests.")
@click.option(
    "--duration", default=6.0, show_default=True, type=click.FloatRange(min=0.5), help="Load seconds per client count."
)
@click.option(
    "--rounds",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Client counts take turns this many times, so a drift in machine speed hits them all alike.",
)
@click.option("--bare_runs", default=300, show_default=True, type=click.IntRange(min=10), help="Bare inferences.")
@click.option("--idle_timeout", default=300.0, show_default=True, type=click.FloatRange(min=0), help="Max idle wait.")
@click.option("--workers", type=click.IntRange(min=1), help="Passed to the server.  [default: the server's]")
@click.option("--threads_per_worker", type=click.IntRange(min=1), help="Passed to the server.")
@click.option("--max_batch_size", type=click.IntRange(min=1), help="Passed to the server.")
@click.option("--batch_timeout_ms", type=click.FloatRange(min=0), help="Passed to the server.")
@click.option("--baseline", help="A git revision whose server is measured beside this tree's (before/after).")
@click.option(
    "--models",
    "many",
    type=click.IntRange(min=2),
    is_flag=False,
    flag_value=MANY_MODELS,
    help=f"Instead: memory and p50 of a server with this many models of one backbone, shared and not, against "
    f"one model (--requests per server, --rounds).  [alone: {MANY_MODELS}]",
)
@click.option("--json", "write_json", is_flag=True, help="Also write the results to bench/results/.")
def main(
    model_dir: Path | None,
    baseline: str | None,
    many: int | None,
    requests: int,
    duration: float,
    rounds: int,
    bare_runs: int,
    idle_timeout: float,
    write_json: bool,
    **knobs: float | None,
) -> None:
    """Prints bare inference, HTTP latency and throughput, and PASS/MISS per target."""
    if many and baseline:
        raise click.UsageError("--models and --baseline do not combine")
    started = time.perf_counter()
    options = ServerOptions(**knobs)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(_machine())
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        if model_dir is None:
            model_dir = _train_model(Path(tmp) / "model")
        print(f"model: {model_dir}")
        settings = options.effective()
        print("server settings: " + ", ".join(f"{k}={v:g}" for k, v in settings.items()), flush=True)
        images = _digit_images()
        if many:
            runs = _many_models(model_dir, many, options, images, Path(tmp), requests, rounds, idle_timeout)
            _report_many_models(runs, many, settings, model_dir, time.perf_counter() - started, write_json)
            return
        results = _bare(model_dir, settings, images, bare_runs, idle_timeout)
        if baseline:
            before = _before_and_after(model_dir, options, images, baseline, Path(tmp), requests, duration, rounds)
        with _server(_one_export(model_dir), options, Path(tmp) / "server.log") as (port, pid):
            results.phases += _http_phases(port, pid, images, requests, duration, rounds, idle_timeout)
    elapsed = time.perf_counter() - started
    if baseline:
        _print_before_and_after(baseline, before)

    print()
    _print_table(results)
    print()
    verdicts = _print_targets(results)
    other = max(p.cpu.other for p in results.phases)
    waited = sum(p.waited_seconds for p in results.phases)
    print(
        f"\ntotal run time: {elapsed:.0f}s (of which {waited:.0f}s waiting for an idle machine); other processes "
        f"used at most {other:.2f} of {os.cpu_count()} cores during a phase"
    )
    if other > IDLE_CORES:
        print("warning: the machine was not idle, so the figures above are not reliable; run again when it is")
    if write_json:
        path = _write_json(results, verdicts, settings, model_dir, elapsed)
        print(f"results written to {path.relative_to(REPO)}")


def _before_and_after(
    model_dir: Path,
    options: ServerOptions,
    images: list[bytes],
    baseline: str,
    tmp: Path,
    requests: int,
    duration: float,
    rounds: int,
) -> list[tuple[Phase, Phase]]:
    """(baseline phase, this tree's phase) pairs, measured alternately: each pair back to back."""
    tree = tmp / "baseline"
    add = ["git", "worktree", "add", "--detach", str(tree), baseline]
    subprocess.run(add, cwd=REPO, check=True, capture_output=True)
    pairs = []
    try:
        kinds = (("/predict multipart", _multipart(images)), (":predict b64 JSON", _tf_serving(images)))
        with (
            _server(_one_export(model_dir), options, tmp / "baseline.log", source=tree) as (old_port, old_pid),
            _server(_one_export(model_dir), options, tmp / "after.log") as (new_port, new_pid),
        ):
            for name, kind in kinds:
                old = _sequential(old_port, old_pid, name, kind, requests)
                pairs.append((old, _sequential(new_port, new_pid, name, kind, requests)))
            clients = CLIENTS[-1]
            for _ in range(rounds):
                old = _load(old_port, old_pid, kinds[0][1], clients, duration / rounds)
                pairs.append((old, _load(new_port, new_pid, kinds[0][1], clients, duration / rounds)))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    return pairs


def _print_before_and_after(baseline: str, pairs: list[tuple[Phase, Phase]]) -> None:
    print(f"\nbefore ({baseline}) and after (this tree), measured alternately in this run:")
    for old, new in pairs[:2]:
        before, after = old.percentile(50), new.percentile(50)
        print(f"  {old.name:<19} p50 {before:6.2f} ms -> {after:6.2f} ms  (after / before {after / before:.2f})")
    loads = pairs[2:]
    before = sum(old.requests for old, _ in loads) / sum(old.seconds for old, _ in loads)
    after = sum(new.requests for _, new in loads) / sum(new.seconds for _, new in loads)
    name = loads[0][0].name
    print(f"  {name:<19} {before:7.1f} req/s -> {after:7.1f} req/s  (after / before {after / before:.2f})")


def _train_model(output_dir: Path) -> Path:
    """A real export to serve: retrain on the bundled digits, briefly (accuracy does not matter here)."""
    command = [sys.executable, "-m", "retrain", "--image_dir", "image_dirs/digits", "--output_dir", str(output_dir)]
    command += ["--how_many_training_steps", "200"]
    print(f"making a model: {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise click.ClickException(f"retrain failed ({done.returncode}):\n{done.stderr[-2000:]}")
    print(f"  trained and exported in {time.perf_counter() - started:.0f}s", flush=True)
    return output_dir


def _digit_images() -> list[bytes]:
    """One PNG of each digit: requests cycle through them, so no response is a cache hit anywhere."""
    paths = [path for folder in sorted(DIGITS_DIR.glob("*/")) for path in sorted(folder.glob("*.png"))[:1]]
    if not paths:
        raise click.ClickException(f"no digits under {DIGITS_DIR}")
    return [path.read_bytes() for path in paths]


def _bare(model_dir: Path, settings: dict, images: list[bytes], runs: int, idle_timeout: float) -> Results:
    """Median batch-1 inference of one of the server's interpreters, and of preprocessing, in this process."""
    from serve.preprocess import preprocess
    from serve.runtime import load_model

    model = load_model(model_dir, int(settings["workers"]), int(settings["threads_per_worker"]))
    spec = model.info.input_spec
    pixels = [preprocess(data, spec)[np.newaxis] for data in images]
    runner = model.runners[0]
    for index in range(30):
        runner.scores(pixels[index % len(pixels)])
    waited, _ = _wait(None, idle_timeout, "bare inference")
    times = []
    with CpuMeter() as meter:
        for index in range(runs):
            begin = time.perf_counter()
            runner.scores(pixels[index % len(pixels)])
            times.append((time.perf_counter() - begin) * 1000)
    prep_times = []
    for index in range(100):
        begin = time.perf_counter()
        preprocess(images[index % len(images)], spec)
        prep_times.append((time.perf_counter() - begin) * 1000)
    bare_ms = float(np.median(times))
    print(f"  bare inference {bare_ms:.2f} ms (other processes: {meter.use.other:.2f} cores)", flush=True)
    del model, runner
    results = Results(bare_ms, float(np.percentile(times, 90)), float(np.median(prep_times)))
    results.phases.append(Phase("bare", 1, times, sum(times) / 1000, meter.use, waited))
    return results


def _wait(server_pid: int | None, timeout: float, what: str) -> tuple[float, float]:
    waited, other = wait_for_idle(server_pid, timeout)
    state = "idle" if other < IDLE_CORES else "NOT idle, gave up waiting"
    print(f"[{what}] waited {waited:.0f}s: other processes {other:.2f} cores over {IDLE_SECONDS:g}s ({state})")
    return waited, other


# --- the server -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_export(model_dir: Path) -> list[str]:
    """serve's flags to serve one export, as model MODEL_NAME."""
    return ["--model_dir", str(model_dir)]


@contextmanager
def _server(
    models: Sequence[str], options: ServerOptions, log_path: Path, source: Path = REPO
) -> Iterator[tuple[int, int]]:
    """A real `python -m serve` on 127.0.0.1 of the sources in `source`, serving what the flags `models`
    name (its log goes to a file: a full pipe would stall it)."""
    port = _free_port()
    command = [sys.executable, "-m", "serve", *models, "--host", "127.0.0.1"]
    command += ["--port", str(port), *options.args()]
    print(f"server: {shlex.join(command)}", flush=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=source, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(port, process, log_path)
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(port: int, process: subprocess.Popen, log_path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"the server exited ({process.returncode}):\n{log_path.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise click.ClickException(f"the server was not ready after {timeout:.0f}s:\n{log_path.read_text()[-2000:]}")


# --- the client -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestKind:
    """A pre-encoded request: the client only sends bytes, so it costs the shared CPU as little as it can."""

    path: str
    bodies: list[bytes]
    headers: dict[str, str]


def _multipart(images: list[bytes]) -> RequestKind:
    def body(data: bytes, index: int) -> bytes:
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="digit{index}.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        )
        return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()

    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    return RequestKind("/predict", [body(d, i) for i, d in enumerate(images)], {"Content-Type": content_type})


def _tf_serving(images: list[bytes], model: str = MODEL_NAME) -> RequestKind:
    bodies = [json.dumps({"instances": [{"b64": base64.b64encode(d).decode()}]}).encode() for d in images]
    return RequestKind(f"/v1/models/{model}:predict", bodies, {"Content-Type": "application/json"})


def _send(connection: http.client.HTTPConnection, kind: RequestKind, body: bytes) -> bytes:
    connection.request("POST", kind.path, body, kind.headers)
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"{kind.path}: HTTP {response.status}: {payload[:200]!r}")
    return payload


def _client_loop(
    port: int, kind: RequestKind, offset: int, warm_up: int, start: threading.Barrier, stop: Sequence[float]
) -> list[float]:
    """One client: warm up its connection, wait for the others, then send until `stop[0]`; latencies in ms."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    bodies, count = kind.bodies, len(kind.bodies)
    for index in range(warm_up):
        _send(connection, kind, bodies[(offset + index) % count])
    start.wait()
    latencies = []
    index = offset
    clock = time.perf_counter
    while clock() < stop[0]:
        begin = clock()
        _send(connection, kind, bodies[index % count])
        latencies.append((clock() - begin) * 1000)
        index += 1
    connection.close()
    return latencies


def _sequential(port: int, pid: int, name: str, kind: RequestKind, requests: int) -> Phase:
    """One client, requests back to back: the latency a lone user sees."""
    return _sequential_across(port, pid, name, [kind], requests)


def _sequential_across(port: int, pid: int, name: str, kinds: Sequence[RequestKind], requests: int) -> Phase:
    """One client, requests back to back, each to the next of `kinds` (models) in turn; the images
    cycle too, each model getting every image in turn."""

    def request(index: int) -> tuple[RequestKind, bytes]:
        kind = kinds[index % len(kinds)]
        return kind, kind.bodies[index // len(kinds) % len(kind.bodies)]

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    reply = json.loads(_send(connection, *request(0)))
    if not (reply.get("predictions") or reply.get("results")):
        raise RuntimeError(f"{kinds[0].path}: unexpected reply {reply}")
    for index in range(20):
        _send(connection, *request(index))
    latencies = []
    with CpuMeter(pid) as meter:
        for index in range(requests):
            begin = time.perf_counter()
            _send(connection, *request(index))
            latencies.append((time.perf_counter() - begin) * 1000)
    connection.close()
    return Phase(name, 1, latencies, meter.use.seconds, meter.use)


def _load(port: int, pid: int, kind: RequestKind, clients: int, duration: float) -> Phase:
    """`clients` threads with their own connections, for `duration` seconds; rate = completed / elapsed."""
    start = threading.Barrier(clients + 1)
    stop = [float("inf")]
    outputs: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def run(slot: int) -> None:
        try:
            outputs[slot] = _client_loop(port, kind, slot, 3, start, stop)
        except BaseException as e:  # reported below, after every thread is done
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=run, args=(slot,), daemon=True) for slot in range(clients)]
    for thread in threads:
        thread.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        for thread in threads:
            thread.join()
        raise errors[0] from None
    with CpuMeter(pid) as meter:
        stop[0] = time.perf_counter() + duration
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return Phase(f"{clients} clients", clients, [ms for out in outputs for ms in out], meter.use.seconds, meter.use)


def _http_phases(
    port: int, pid: int, images: list[bytes], requests: int, duration: float, rounds: int, idle_timeout: float
) -> list[Phase]:
    """Sequential latency on both endpoints, then throughput at every client count (uploads)."""
    multipart, tf_serving = _multipart(images), _tf_serving(images)
    phases = []
    for name, kind in (("/predict multipart", multipart), (":predict b64 JSON", tf_serving)):
        waited, _ = _wait(pid, idle_timeout, name)
        phase = _sequential(port, pid, name, kind, requests)
        phase.waited_seconds = waited
        print(f"  p50 {phase.percentile(50):.2f} ms (other processes: {phase.cpu.other:.2f} cores)", flush=True)
        phases.append(phase)
    waited, _ = _wait(pid, idle_timeout, "throughput")
    runs: dict[int, list[Phase]] = {clients: [] for clients in CLIENTS}
    for round_ in range(rounds):
        for clients in CLIENTS:
            runs[clients].append(_load(port, pid, multipart, clients, duration / rounds))
        line = ", ".join(f"{c} clients {runs[c][-1].rate:.1f} req/s ({runs[c][-1].cpu.other:.2f})" for c in CLIENTS)
        print(f"  round {round_ + 1}: {line}", flush=True)
    merged = [_merge(f"{clients} clients", clients, runs[clients]) for clients in CLIENTS]
    merged[0].waited_seconds = waited
    return phases + merged


def _merge(name: str, clients: int, parts: list[Phase]) -> Phase:
    """Rounds of one client count as one phase: all requests over all their seconds; cores time-weighted."""
    seconds = sum(p.seconds for p in parts)

    def cores(pick: str) -> float:
        return sum(getattr(p.cpu, pick) * p.seconds for p in parts) / seconds

    cpu = CpuUse(cores("client"), cores("server"), cores("other"), seconds)
    return Phase(name, clients, [ms for p in parts for ms in p.latencies_ms], seconds, cpu)


# --- many models of one backbone -----------------------------------------------------------------


@dataclass(frozen=True)
class ModelsServer:
    """A server of the comparison: a models_dir, its model names, and whether it shares their backbone."""

    label: str
    models_dir: Path
    names: list[str]
    share: bool

    def flags(self) -> list[str]:
        return ["--models_dir", str(self.models_dir), *([] if self.share else ["--no_share_backbones"])]


@dataclass
class ServerRun:
    """One fresh start of a server: how long until every model answered, its memory (MiB) once they had
    (`memory`) and after the latency phase (`memory_after`), and that phase."""

    label: str
    round: int
    models: int
    share: bool
    load_seconds: float
    memory: dict[str, float]
    memory_after: dict[str, float]
    phase: Phase

    def summary(self) -> dict:
        fields = ("label", "round", "models", "share", "load_seconds", "memory", "memory_after")
        return {**{name: getattr(self, name) for name in fields}, "phase": self.phase.summary()}


def _many_models(
    model_dir: Path,
    count: int,
    options: ServerOptions,
    images: list[bytes],
    tmp: Path,
    requests: int,
    rounds: int,
    idle_timeout: float,
) -> list[ServerRun]:
    """Each round starts, in turn, a server of one model, of `count` sharing their backbone, and of
    `count` each run whole; the order rotates from round to round, so a drift hits each alike."""
    one, many = _models_dir(model_dir, tmp / "one-model", 1), _models_dir(model_dir, tmp / "many-models", count)
    print(f"models: {tmp / 'many-models'}/{many[0]}/1 ... /{many[-1]}/1, copies of the export (equal heads)")
    servers = [
        ModelsServer("1 model", tmp / "one-model", one, True),
        ModelsServer(f"{count} shared", tmp / "many-models", many, True),
        ModelsServer(f"{count} unshared", tmp / "many-models", many, False),
    ]
    runs = []
    for round_ in range(rounds):
        turn = round_ % len(servers)
        for server in servers[turn:] + servers[:turn]:
            run = _measure_server(server, round_ + 1, options, images, tmp, requests, idle_timeout)
            runs.append(run)
            print(
                f"  round {run.round} {run.label}: ready in {run.load_seconds:.1f}s, VmRSS {run.memory['VmRSS']:.0f} "
                f"MiB (VmHWM {run.memory['VmHWM']:.0f}), p50 {run.phase.percentile(50):.2f} ms "
                f"(other processes: {run.phase.cpu.other:.2f} cores)",
                flush=True,
            )
    return runs


def _models_dir(model_dir: Path, root: Path, count: int) -> list[str]:
    """`count` copies of the export, as versions 1 of the models m01, m02, ... in `root`; their names."""
    names = [f"m{index:0{max(2, len(str(count)))}d}" for index in range(1, count + 1)]
    for name in names:
        shutil.copytree(model_dir, root / name / "1")
    return names


def _measure_server(
    server: ModelsServer,
    round_: int,
    options: ServerOptions,
    images: list[bytes],
    tmp: Path,
    requests: int,
    idle_timeout: float,
) -> ServerRun:
    started = time.perf_counter()
    log = tmp / f"server-{server.label.replace(' ', '-')}-{round_}.log"
    with _server(server.flags(), options, log) as (port, pid):
        _wait_for_models(port, server.names, log)
        kinds = [_tf_serving(images, name) for name in server.names]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for kind in kinds:
            for index in range(WARM_UP_PER_MODEL):
                _send(connection, kind, kind.bodies[index % len(kind.bodies)])
        connection.close()
        load_seconds = time.perf_counter() - started
        memory = _memory(pid)
        phase, waited = None, 0.0
        for _ in range(LATENCY_ATTEMPTS):  # the quietest of up to LATENCY_ATTEMPTS
            waited += _wait(pid, idle_timeout, f"round {round_}, {server.label}")[0]
            attempt = _sequential_across(port, pid, f"{server.label}, round {round_}", kinds, requests)
            if phase is None or attempt.cpu.other < phase.cpu.other:
                phase = attempt
            if phase.cpu.other < IDLE_CORES:
                break
            print(
                f"  other processes used {attempt.cpu.other:.2f} cores meanwhile (p50 {attempt.percentile(50):.2f} ms)"
            )
        phase.waited_seconds = waited
        memory_after = _memory(pid)
    return ServerRun(server.label, round_, len(server.names), server.share, load_seconds, memory, memory_after, phase)


def _wait_for_models(port: int, names: Sequence[str], log_path: Path, timeout: float = 600.0) -> None:
    """Until /readyz lists every one of `names` (it answers 200 as soon as the first is loaded)."""
    deadline = time.monotonic() + timeout
    ready: set[str] = set()
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        body = json.loads(response.read() or b"{}")
        connection.close()
        if body.get("refused"):
            raise click.ClickException(f"the server refused a model: {body['refused'][0]}")
        ready = {model["name"] for model in body.get("models", [])}
        if ready >= set(names):
            return
        time.sleep(0.2)
    missing = sorted(set(names) - ready)
    raise click.ClickException(f"not loaded after {timeout:.0f}s: {missing}\n{log_path.read_text()[-2000:]}")


def _memory(pid: int) -> dict[str, float]:
    """MEMORY_FIELDS of /proc/<pid>/status in MiB (Linux only)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as e:
        raise click.ClickException(f"cannot read the server's memory: {e}") from e
    found = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in MEMORY_FIELDS:
            found[key] = int(value.split()[0]) / 1024  # kB
    return found


def _run_medians(runs: list[ServerRun]) -> dict[str, float]:
    """Medians over the rounds of one server: seconds until ready, memory (MiB) and p50 (ms)."""
    values = {
        "ready_seconds": [run.load_seconds for run in runs],
        **{key: [run.memory[key] for run in runs] for key in MEMORY_FIELDS},
        "VmRSS_after": [run.memory_after["VmRSS"] for run in runs],
        "p50_ms": [run.phase.percentile(50) for run in runs],
    }
    return {key: float(np.median(each)) for key, each in values.items()}


def _report_many_models(
    runs: list[ServerRun], count: int, settings: dict, model_dir: Path, elapsed: float, write_json: bool
) -> None:
    labels = list(dict.fromkeys(run.label for run in runs))
    by_label = {label: [run for run in runs if run.label == label] for label in labels}
    medians = {label: _run_medians(each) for label, each in by_label.items()}
    rounds = len(by_label[labels[0]])
    print(
        f"\n{count} models of one backbone against one: copies of one export (equal heads; a head is tens of "
        f"kilobytes, the backbone megabytes),\neach server started fresh in each of {rounds} rounds; medians over "
        "the rounds. Memory once every model had answered; p50 of sequential :predict requests spread over the "
        "models.\n"
    )
    header = (
        f"{'server':<13} {'models':>6} {'ready s':>7} {'VmRSS MiB':>9} {'anon':>6} {'file':>6} {'VmHWM':>6} "
        f"{'RSS after':>9} {'p50 ms':>7} {'p50 per round':<22} {'other':>5}"
    )
    print(header)
    print("-" * len(header))
    for label in labels:
        each = by_label[label]
        p50s = " ".join(f"{run.phase.percentile(50):.2f}" for run in sorted(each, key=lambda run: run.round))
        m = medians[label]
        print(
            f"{label:<13} {each[0].models:>6} {m['ready_seconds']:>7.1f} {m['VmRSS']:>9.0f} {m['RssAnon']:>6.0f} "
            f"{m['RssFile']:>6.0f} {m['VmHWM']:>6.0f} {m['VmRSS_after']:>9.0f} {m['p50_ms']:>7.2f} {p50s:<22} "
            f"{max(run.phase.cpu.other for run in each):>5.2f}"
        )
    print(
        "ready s = from start until every model had answered; anon, file = VmRSS's anonymous and file-backed parts;\n"
        "RSS after = VmRSS after the latency phase; other = most cores used by other processes during a latency phase."
    )
    print()
    one, shared, unshared = labels
    rss = {label: medians[label]["VmRSS"] for label in labels}
    p50 = {label: medians[label]["p50_ms"] for label in labels}
    one_p50s = [run.phase.percentile(50) for run in by_label[one]]
    noise = max(one_p50s) / min(one_p50s)
    p50_limit = max(P50_NOISE, noise)
    checks = [
        (f"RSS {shared} / 1 model", rss[shared] / rss[one], f"<= {RSS_FACTOR:g}", rss[shared] / rss[one] <= RSS_FACTOR),
        (
            f"p50 {shared} / 1 model",
            p50[shared] / p50[one],
            f"<= max({P50_NOISE:.2f}, spread of the 1-model p50s between rounds {noise:.2f}) = {p50_limit:.2f}",
            p50[shared] / p50[one] <= p50_limit,
        ),
    ]
    verdicts = []
    for name, value, rule, ok in checks:
        verdict = "PASS" if ok else "MISS"
        verdicts.append({"target": name, "value": value, "rule": rule, "verdict": verdict})
        print(f"{verdict}  {name:<28} {value:6.2f}  (target {rule})")
    contrast = f"RSS {unshared} / 1 model"
    print(
        f"      {contrast:<28} {rss[unshared] / rss[one]:6.2f}  (for contrast: sharing the backbone saves "
        f"{rss[unshared] - rss[shared]:.0f} MiB; p50 {unshared} / 1 model {p50[unshared] / p50[one]:.2f})"
    )
    other = max(run.phase.cpu.other for run in runs)
    waited = sum(run.phase.waited_seconds for run in runs)
    print(
        f"\ntotal run time: {elapsed:.0f}s (of which {waited:.0f}s waiting for an idle machine); other processes "
        f"used at most {other:.2f} of {os.cpu_count()} cores during a latency phase"
    )
    if other > IDLE_CORES:
        print("warning: the machine was not idle, so the latencies above are not reliable; run again when it is")
    if write_json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"serve-models-{time.strftime('%Y%m%d-%H%M%S')}.json"
        document = {
            "command": shlex.join([sys.executable, *sys.argv]),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()},
            "versions": {"python": platform.python_version(), **_versions()},
            "model_dir": str(model_dir),
            "models": count,
            "server_settings": settings,
            "elapsed_seconds": elapsed,
            "medians": medians,
            "p50_noise_between_rounds": noise,
            "runs": [run.summary() for run in runs],
            "targets": verdicts,
        }
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"results written to {path.relative_to(REPO)}")


# --- report ---------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    names = ("ai-edge-litert", "fastapi", "starlette", "uvicorn", "python-multipart", "numpy", "pillow")
    found = {}
    for name in (*names, "httptools", "uvloop"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def _machine() -> str:
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    versions = ", ".join(f"{k} {v}" for k, v in _versions().items())
    return (
        f"machine: {cpu_model()}, {cores} cores ({usable} usable), {platform.system()} {platform.machine()}\n"
        f"software: Python {platform.python_version()}, {versions}"
    )


def _print_table(results: Results) -> None:
    print(f"bare LiteRT inference, batch 1: {results.bare_ms:.2f} ms median (p90 {results.bare_p90_ms:.2f} ms)")
    print(f"preprocess one digit PNG (decode, crop, resize, normalise): {results.preprocess_ms:.2f} ms median")
    print()
    header = (
        f"{'phase':<19} {'clients':>7} {'requests':>8} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>7} "
        f"{'client ms':>9} {'server ms':>9} {'cores':>5} {'other':>5}"
    )
    print(header)
    print("-" * len(header))
    for p in results.phases:
        if p.name == "bare":
            continue
        print(
            f"{p.name:<19} {p.clients:>7} {p.requests:>8} {p.percentile(50):>7.2f} {p.percentile(99):>7.2f} "
            f"{p.rate:>7.1f} {p.cpu_ms_per_request(p.cpu.client):>9.2f} {p.cpu_ms_per_request(p.cpu.server):>9.2f} "
            f"{p.cpu.client + p.cpu.server:>5.2f} {p.cpu.other:>5.2f}"
        )
    print(
        "client/server ms = CPU time per request, all threads; cores = busy cores of client + server; other = cores\n"
        "used by other processes meanwhile. Throughput: client counts took turns in rounds, totals over all rounds.\n"
        f"The load-generating client is Python on the same {os.cpu_count()} cores as the server: the CPU it uses is "
        "the server's loss."
    )


def _print_targets(results: Results) -> list[dict]:
    p50 = results.phase("/predict multipart").percentile(50)
    limit = LATENCY_FACTOR * results.bare_ms + LATENCY_SLACK_MS
    scaling = results.phase(f"{CLIENTS[-1]} clients").rate / results.phase(f"{CLIENTS[0]} clients").rate
    rule = f"<= {LATENCY_FACTOR} x {results.bare_ms:.2f} + {LATENCY_SLACK_MS:g} = {limit:.2f}"
    checks = [
        ("single-client p50 ms", p50, rule),
        (f"throughput {CLIENTS[-1]}/{CLIENTS[0]} clients", scaling, f">= {SCALING_MIN:g}"),
    ]
    passed = [p50 <= limit, scaling >= SCALING_MIN]
    verdicts = []
    for (name, value, target), ok in zip(checks, passed, strict=True):
        verdict = "PASS" if ok else "MISS"
        verdicts.append({"target": name, "value": value, "rule": target, "verdict": verdict})
        print(f"{verdict}  {name:<26} {value:6.2f}  (target {target})")
    alone = results.phase(f"{CLIENTS[0]} clients").cpu
    busy = alone.client + alone.server
    print(
        f"note: one client alone keeps {busy:.2f} cores busy (client + server), so {CLIENTS[-1]} clients can reach "
        f"about {os.cpu_count()} / {busy:.2f} = {(os.cpu_count() or 1) / busy:.2f}x its rate, more only as far as "
        "batching makes a request cheaper"
    )
    return verdicts


def _write_json(results: Results, verdicts: list[dict], settings: dict, model_dir: Path, elapsed: float) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()},
        "versions": {"python": platform.python_version(), **_versions()},
        "model_dir": str(model_dir),
        "server_settings": settings,
        "bare_ms": results.bare_ms,
        "bare_p90_ms": results.bare_p90_ms,
        "preprocess_ms": results.preprocess_ms,
        "elapsed_seconds": elapsed,
        "phases": [p.summary() for p in results.phases],
        "targets": verdicts,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


if __name__ == "__main__":
    main()
