"""Training through the server against the command: job times cold and warm, and predict latency during a job.

Run: `.venv/bin/python bench/jobs.py [--per_class N] [--json]`. On the bundled digits 0-4 (every
image of those classes by default, ~900; `--per_class` takes fewer), as a zip of `<label>/<image>`
folders and as the same folder on disk, in one run:

  job   a real `serve --models_dir M --admin_token_file F` on 127.0.0.1 (a fresh models_dir; the
        jobs' bottleneck cache its default, `M/.cache/bottlenecks`, empty at first), the default
        worker settings: POST /v1/models/<name>/jobs with the zip, then GET /v1/jobs/<id> every
        0.1 s; the time from the POST until the job's state is `succeeded` (and, beside it, until
        the new version is AVAILABLE);
  CLI   the installed `retrain --image_dir <folder> --models_dir <tmp> --bottleneck_dir <tmp cache>`
        with the same options, in a fresh process: its wall time;

each cold (an empty bottleneck cache: the job's and the command's own) and warm (the same images
again, every bottleneck cached), taking turns: CLI cold, job cold, CLI warm, job warm (with
--rounds, the next round starts with the job, and so on; fresh caches each round; medians). First a
small warm-up run of the command (40 images a class, 200 steps, its own cache) makes the model the
server serves, `served`, and reads the libraries and weights into the page cache for everyone.

Then the latency a lone user sees: one client sending `:predict` requests (one digit each, as
`{"b64": ...}`) one after another on one keep-alive connection to `served`, while the server is idle
(before the job and after it, pooled) and while a cold job runs (a second cold job, its cache emptied
again: every request sent while GET /v1/jobs/<id> says `running`), p50 and p99, also per phase of
the job (start-up, bottlenecks, training, export). The job's child runs at nice 10 below the server.

Targets (issue 25): the same zip again (warm) finishes, POST to `succeeded`, within 15 s. Reported
as ratios without a target: job / CLI cold and warm; predict p50 and p99 during a job / idle.
Every measurement first waits for the machine to be idle (other processes < 0.1 cores over 5 s) and
is made again (up to 3 times, a cold one with its cache emptied again) if other processes were busy
meanwhile; the quietest attempt is kept and how busy they were is printed; CPU seconds are the run's own (the command's
process; the server with its job child for a job).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import click
import numpy as np
from hardware import cpu_model  # bench/, first on sys.path when run as a script
from runs import Run, measure
from serving import (
    DIGITS_DIR,
    IDLE_CORES,
    REPO,
    RESULTS_DIR,
    CpuMeter,
    Phase,
    RequestKind,
    ServerOptions,
    _digit_images,
    _machine,
    _machine_busy_seconds,
    _process_seconds,
    _send,
    _sequential,
    _server,
    _tf_serving,
    _versions,
    _wait,
)

LABELS = ("0", "1", "2", "3", "4")
MODEL = "digits0to4"  # the model the timed jobs and runs train (the folder's name, the command's default)
SERVED = "served"  # the model the latency phases ask
TOKEN = "bench-jobs-token-" + "0123456789abcdef"
RETRAIN_SCRIPT = Path(sys.executable).with_name("retrain")  # the installed console script, as a user runs it
WARM_UP_PER_CLASS, WARM_UP_STEPS = 40, 200  # over 20 training images a class: one backbone, as the timed runs

WARM_JOB_SECONDS = 15.0  # issue 25: the same zip again, POST to succeeded, within 15 s
POLL_SECONDS = 0.1  # GET /v1/jobs/<id> while timing a job
DURING_POLL_SECONDS = 0.25  # ... and between predict requests while measuring them during a job
FINISHED = ("succeeded", "failed", "cancelled")
ATTEMPTS = 3  # a measurement during which other processes were busy is made again, up to this often

T = TypeVar("T")


# --- CPU accounting of a run ----------------------------------------------------------------------


def _tree_seconds(pid: int | None) -> float:
    """utime + stime of a process and of its children it has waited for (cutime, cstime): for the
    server, itself and every finished job child."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass(frozen=True)
class Sample:
    """Cumulative CPU seconds: the machine's busy time, this process, its finished children, the server
    with its finished children; and wall time."""

    machine: float
    own: float
    children: float
    server: float
    wall: float


def _sample(server_pid: int | None) -> Sample:
    times = os.times()
    own, children = times.user + times.system, times.children_user + times.children_system
    server = _tree_seconds(server_pid)
    machine = _machine_busy_seconds()
    return Sample(own + children + server if machine is None else machine, own, children, server, time.perf_counter())


# --- results --------------------------------------------------------------------------------------


@dataclass
class TimedRun:
    """One training run, as a user waits for it: a job (POST to succeeded) or the command (start to exit)."""

    kind: str  # "job" or "CLI"
    cache: str  # "cold" or "warm"
    round: int
    seconds: float
    cpu_seconds: float  # the command's process; for a job the server with its job child (until served)
    other_cores: float  # other processes meanwhile
    waited_seconds: float
    extraction_seconds: float | None  # "Bottlenecks: ... in Xs" as the run printed it
    accuracy: str
    served_seconds: float | None = None  # a job: POST until its version is AVAILABLE
    attempts: int = 1  # how many runs it took to find a quiet one (the quietest is kept)

    @property
    def name(self) -> str:
        return f"{self.kind} {self.cache}"


@dataclass
class DuringJob:
    """The latency phase during a cold job, and what the job did meanwhile."""

    phase: Phase
    phases: list[str]  # the job's phase when each request was sent (latest seen, polled every 0.25 s)
    job_seconds: float  # POST to succeeded, under this load
    child_cores: float | None  # cores the job's child used while measured
    waited_seconds: float = 0.0
    attempts: int = 1

    @property
    def others(self) -> float:
        """Cores used meanwhile by processes other than the client, the server and the job's child."""
        return max(0.0, self.phase.cpu.other - (self.child_cores or 0.0))


# --- main -----------------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--per_class",
    type=click.IntRange(min=5),
    help="Images of each digit 0-4 in the zip and the folder.  [default: all, ~180]",
)
@click.option(
    "--how_many_training_steps",
    type=click.IntRange(min=1),
    help="Sent to the jobs and the command alike.  [default: theirs, 4000]",
)
@click.option(
    "--rounds",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Cold and warm runs of both, taking turns, this many times (medians).",
)
@click.option(
    "--requests",
    default=500,
    show_default=True,
    type=click.IntRange(min=100),
    help="Sequential :predict requests while idle, before and after the job (during it: as many as fit).",
)
@click.option("--idle_timeout", default=180.0, show_default=True, type=click.FloatRange(min=0), help="Max idle wait.")
@click.option("--json", "write_json", is_flag=True, help="Also write the results to bench/results/.")
def main(
    per_class: int | None,
    how_many_training_steps: int | None,
    rounds: int,
    requests: int,
    idle_timeout: float,
    write_json: bool,
) -> None:
    """Prints job and CLI times cold and warm, predict latency idle and during a job, and the targets."""
    started = time.perf_counter()
    options = {} if how_many_training_steps is None else {"how_many_training_steps": str(how_many_training_steps)}
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(_machine())
    if not RETRAIN_SCRIPT.exists():
        raise click.ClickException(f"no {RETRAIN_SCRIPT}: install the project into this environment first")
    settings = ServerOptions()
    print("server settings (serve's defaults): " + ", ".join(f"{k}={v:g}" for k, v in settings.effective().items()))
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp_name:
        tmp = Path(tmp_name)
        folder, archive, count = _image_set(tmp, per_class)
        print(f"images: {count} digits of {', '.join(LABELS)} in {folder} and a {len(archive) / 2**10:.0f} KiB zip")
        print(f"options: {options or 'the defaults'}", flush=True)
        models, token = tmp / "serve-models", tmp / "token"
        token.write_text(TOKEN + "\n")
        _warm_up(folder, models, tmp / "warm-up-cache")
        flags = ["--models_dir", str(models), "--admin_token_file", str(token)]
        runs: list[TimedRun] = []
        with _server(flags, settings, tmp / "serve.log") as (port, pid):
            for round_ in range(1, rounds + 1):
                runs += _round(round_, port, pid, folder, archive, options, models, tmp, idle_timeout)
            kind = _tf_serving(_digit_images(), SERVED)
            idle, during, idle_after = _latency(port, pid, kind, archive, options, models, tmp, requests, idle_timeout)
    elapsed = time.perf_counter() - started

    print()
    _print_runs(runs)
    print()
    _print_latency(idle, during, idle_after)
    print()
    verdicts, ratios = _print_targets(runs, idle, idle_after, during)
    other = max([run.other_cores for run in runs] + [idle.cpu.other, idle_after.cpu.other, during.others])
    waited = sum(run.waited_seconds for run in runs) + idle.waited_seconds + idle_after.waited_seconds
    waited += during.waited_seconds
    print(
        f"\ntotal run time: {elapsed:.0f}s (of which {waited:.0f}s waiting for an idle machine); other processes "
        f"used at most {other:.2f} of {os.cpu_count()} cores during a measurement (during the job: besides its child)"
    )
    if other > IDLE_CORES:
        print("warning: the machine was not idle, so the figures above are not reliable; run again when it is")
    if write_json:
        path = _write_json(runs, idle, during, idle_after, verdicts, ratios, options, count, settings, elapsed)
        print(f"results written to {path.relative_to(REPO)}")


def _image_set(tmp: Path, per_class: int | None) -> tuple[Path, bytes, int]:
    """The digits 0-4 (`per_class` of each, else all), as a folder `<tmp>/MODEL/<label>/` and as a zip
    of `<label>/<image>`; the folder, the zip's bytes and how many images."""
    folder = tmp / MODEL
    buffer = io.BytesIO()
    count = 0
    with zipfile.ZipFile(buffer, "w") as archive:
        for label in LABELS:
            (folder / label).mkdir(parents=True)
            for path in sorted((DIGITS_DIR / label).glob("*.png"))[:per_class]:
                data = path.read_bytes()
                (folder / label / path.name).write_bytes(data)
                archive.writestr(f"{label}/{path.name}", data)
                count += 1
    return folder, buffer.getvalue(), count


def _warm_up(folder: Path, models: Path, cache: Path) -> None:
    """The model the server will serve (`models/SERVED/1`), from a few of the images and a cache of its own;
    it also reads the command's libraries and weights into the page cache before anything is timed."""
    few = folder.parent / "warm-up"
    for label in LABELS:
        (few / label).mkdir(parents=True)
        for path in sorted((folder / label).iterdir())[:WARM_UP_PER_CLASS]:
            shutil.copy(path, few / label / path.name)
    command = [str(RETRAIN_SCRIPT), "--image_dir", str(few), "--models_dir", str(models), "--model_name", SERVED]
    command += ["--bottleneck_dir", str(cache), "--how_many_training_steps", str(WARM_UP_STEPS)]
    print(f"warm-up, and the model to serve: {shlex.join(command)}", flush=True)
    run = measure("warm-up", command, dict(os.environ))
    print(f"  {run.wall:.1f}s, test accuracy {run.accuracy}", flush=True)


# --- job and command times ------------------------------------------------------------------------


def _round(
    round_: int,
    port: int,
    pid: int,
    folder: Path,
    archive: bytes,
    options: dict[str, str],
    models: Path,
    tmp: Path,
    idle_timeout: float,
) -> list[TimedRun]:
    """Cold then warm, each the command and a job in turn; who goes first alternates between rounds."""
    cli_models, cli_cache, job_cache = tmp / "cli-models", tmp / "cli-cache", models / ".cache" / "bottlenecks"

    def cli(cache: str) -> TimedRun:
        def once() -> TimedRun:
            if cache == "cold":
                shutil.rmtree(cli_cache, ignore_errors=True)
            return _cli_run(cache, round_, folder, cli_models, cli_cache, options, pid, idle_timeout)

        return _quietest_run(f"CLI {cache}", once)

    def job(cache: str) -> TimedRun:
        def once() -> TimedRun:
            if cache == "cold":
                shutil.rmtree(job_cache, ignore_errors=True)  # the jobs' cache (the server's default), empty
            return _job_run(cache, round_, port, pid, archive, options, models, idle_timeout)

        return _quietest_run(f"job {cache}", once)

    order = (cli, job) if round_ % 2 else (job, cli)
    return [run(cache) for cache in ("cold", "warm") for run in order]


def _cli_run(
    cache: str,
    round_: int,
    folder: Path,
    cli_models: Path,
    cli_cache: Path,
    options: dict[str, str],
    server_pid: int,
    idle_timeout: float,
) -> TimedRun:
    command = [str(RETRAIN_SCRIPT), "--image_dir", str(folder), "--models_dir", str(cli_models)]
    command += ["--bottleneck_dir", str(cli_cache), *(f"--{key}={value}" for key, value in options.items())]
    waited, _ = _wait(server_pid, idle_timeout, f"round {round_}, CLI {cache}")
    print(f"  {shlex.join(command)}", flush=True)
    before = _sample(server_pid)
    run = measure(f"CLI {cache}", command, dict(os.environ))
    after = _sample(server_pid)
    cpu = after.children - before.children
    timed = TimedRun(
        "CLI", cache, round_, run.wall, cpu, _other(before, after), waited, run.extraction_seconds, run.accuracy
    )
    _say(timed)
    return timed


def _job_run(
    cache: str,
    round_: int,
    port: int,
    pid: int,
    archive: bytes,
    options: dict[str, str],
    models: Path,
    idle_timeout: float,
) -> TimedRun:
    waited, _ = _wait(pid, idle_timeout, f"round {round_}, job {cache}")
    before = _sample(pid)
    started = time.perf_counter()
    job = _submit(port, MODEL, archive, options)
    status = _status(port, job)
    while status["state"] not in FINISHED:
        time.sleep(POLL_SECONDS)
        status = _status(port, job)
    seconds = time.perf_counter() - started
    output = _job_log(models, job)
    if status["state"] != "succeeded":
        raise click.ClickException(f"job {job} {status['state']}: {status.get('error')}\n{output[-2000:]}")
    _until_served(port, MODEL, str(status["result"]["version"]))
    served = time.perf_counter() - started
    after = _sample(pid)  # the child was waited for before the runner asked for the version to be served
    printed = Run("job", seconds, 0, output)
    timed = TimedRun(
        "job",
        cache,
        round_,
        seconds,
        after.server - before.server,
        _other(before, after),
        waited,
        printed.extraction_seconds,
        printed.accuracy,
        served,
    )
    _say(timed)
    return timed


def _other(before: Sample, after: Sample) -> float:
    """Cores used by processes other than this one, its children and the server with its children."""
    ours = sum(getattr(after, key) - getattr(before, key) for key in ("own", "children", "server"))
    return max(0.0, after.machine - before.machine - ours) / max(after.wall - before.wall, 1e-9)


def _say(run: TimedRun) -> None:
    served = f", served after {run.served_seconds:.1f}s" if run.served_seconds is not None else ""
    print(
        f"  {run.name}: {run.seconds:.1f}s{served} ({run.cpu_seconds:.1f} CPU s; bottlenecks "
        f"{_seconds(run.extraction_seconds)}; test accuracy {run.accuracy}; other processes {run.other_cores:.2f} "
        "cores)",
        flush=True,
    )


# --- the job API ----------------------------------------------------------------------------------


def _call(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None, expect: tuple = ()
) -> dict:
    """One request on a fresh connection (the server closes idle keep-alive ones); its JSON answer, with its
    status as `http_status`. A status of 300 or more fails the run unless it is one of `expect`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(method, path, body, {"authorization": f"Bearer {TOKEN}", **(headers or {})})
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    if response.status >= 300 and response.status not in expect:
        raise click.ClickException(f"{method} {path}: HTTP {response.status}: {payload[:500]!r}")
    return {"http_status": response.status, **json.loads(payload or b"{}")}


def _submit(port: int, model: str, archive: bytes, options: dict[str, str]) -> str:
    """POST /v1/models/<model>/jobs: the zip as `images` and the options as fields; the job's id."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in options.items()
    ]
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="images.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    )
    parts.append(head.encode() + archive + f"\r\n--{boundary}--\r\n".encode())
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    return _call(port, "POST", f"/v1/models/{model}/jobs", b"".join(parts), headers)["job"]


def _status(port: int, job: str) -> dict:
    return _call(port, "GET", f"/v1/jobs/{job}")


def _until_served(port: int, model: str, version: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = _call(port, "GET", f"/v1/models/{model}", expect=(404, 503))  # not loaded yet
        states = {v["version"]: v["state"] for v in answer.get("model_version_status", [])}
        if states.get(version) == "AVAILABLE":
            return
        time.sleep(POLL_SECONDS)
    raise click.ClickException(f"{model} version {version} was not served {timeout:.0f}s after its job succeeded")


def _job_log(models: Path, job: str) -> str:
    """What the job printed (the command's output), kept by the runner as the job's log."""
    try:
        return (models / ".jobs" / job / "log.txt").read_text(errors="replace")
    except OSError:
        return ""


def _child_pid(log_path: Path, job: str, timeout: float = 10.0) -> int | None:
    """The job's child process, as the server logs it when the job starts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(rf"job {job} running \(pid (\d+)\)", log_path.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        time.sleep(0.05)
    return None


# --- predict latency, idle and during a job -------------------------------------------------------


def _latency(
    port: int,
    pid: int,
    kind: RequestKind,
    archive: bytes,
    options: dict[str, str],
    models: Path,
    tmp: Path,
    requests: int,
    idle_timeout: float,
) -> tuple[Phase, DuringJob, Phase]:
    """Sequential :predict latency idle, during a cold job, and idle again; each the quietest of up to
    ATTEMPTS (during the job, the fewest cores used by processes besides the job's child)."""

    def idle_once(name: str) -> Phase:
        waited, _ = _wait(pid, idle_timeout, f"predict, {name} the job")
        phase = _sequential(port, pid, f"idle, {name}", kind, requests)
        phase.waited_seconds = waited
        print(f"  p50 {phase.percentile(50):.2f} ms, p99 {phase.percentile(99):.2f} ms", flush=True)
        return phase

    def during_once() -> DuringJob:
        waited, _ = _wait(pid, idle_timeout, "predict during a cold job: before it starts")
        shutil.rmtree(models / ".cache" / "bottlenecks", ignore_errors=True)  # a cold job
        during = _during_job(port, pid, kind, archive, options, models, tmp / "serve.log")
        during.waited_seconds = waited
        return during

    idle, tries = _quietest("the idle phase", lambda: idle_once("before"), lambda phase: phase.cpu.other)
    idle.waited_seconds = sum(phase.waited_seconds for phase in tries)
    during, tries = _quietest("the job", during_once, lambda during: during.others)
    during.waited_seconds, during.attempts = sum(each.waited_seconds for each in tries), len(tries)
    idle_after, tries = _quietest("the idle phase", lambda: idle_once("after"), lambda phase: phase.cpu.other)
    idle_after.waited_seconds = sum(phase.waited_seconds for phase in tries)
    return idle, during, idle_after


def _quietest(what: str, once: Callable[[], T], other: Callable[[T], float]) -> tuple[T, list[T]]:
    """`once()`, again while other processes used IDLE_CORES or more meanwhile, up to ATTEMPTS times in
    all; the quietest attempt (the fewest cores used by others, whatever its figures) and every attempt."""
    attempts = [once()]
    while other(min(attempts, key=other)) >= IDLE_CORES and len(attempts) < ATTEMPTS:
        print(f"  other processes used {other(attempts[-1]):.2f} cores meanwhile: measuring {what} again", flush=True)
        attempts.append(once())
    return min(attempts, key=other), attempts


def _quietest_run(what: str, once: Callable[[], TimedRun]) -> TimedRun:
    run, tries = _quietest(what, once, lambda run: run.other_cores)
    run.waited_seconds, run.attempts = sum(each.waited_seconds for each in tries), len(tries)
    return run


def _during_job(
    port: int, pid: int, kind: RequestKind, archive: bytes, options: dict[str, str], models: Path, log_path: Path
) -> DuringJob:
    """Starts a cold job and sends requests one after another for as long as the job says `running`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for index in range(20):
        _send(connection, kind, kind.bodies[index % len(kind.bodies)])
    started = time.perf_counter()
    job = _submit(port, MODEL, archive, options)
    status = _status(port, job)
    while status["state"] == "queued":
        time.sleep(0.05)
        status = _status(port, job)
    if status["state"] != "running":
        raise click.ClickException(f"job {job} {status['state']} before it could be measured: {status.get('error')}")
    child = _child_pid(log_path, job)
    child_first = child_last = (_process_seconds(child), time.perf_counter())
    job_phase = status["progress"].get("phase") or "start-up"
    latencies: list[float] = []
    phases: list[str] = []
    next_poll = time.perf_counter() + DURING_POLL_SECONDS
    index = 0
    with CpuMeter(pid) as meter:
        while True:
            begin = time.perf_counter()
            _send(connection, kind, kind.bodies[index % len(kind.bodies)])
            latencies.append((time.perf_counter() - begin) * 1000)
            phases.append(job_phase)
            index += 1
            if time.perf_counter() >= next_poll:
                status = _status(port, job)
                if status["state"] != "running":
                    break
                job_phase = status["progress"].get("phase") or "start-up"
                seconds = _process_seconds(child)
                if seconds > 0:
                    child_last = (seconds, time.perf_counter())
                next_poll = time.perf_counter() + DURING_POLL_SECONDS
    connection.close()
    while status["state"] not in FINISHED:
        time.sleep(POLL_SECONDS)
        status = _status(port, job)
    job_seconds = time.perf_counter() - started
    if status["state"] != "succeeded":
        raise click.ClickException(f"job {job} {status['state']}: {status.get('error')}")
    span = child_last[1] - child_first[1]
    child_cores = (child_last[0] - child_first[0]) / span if child is not None and span > 1 else None
    measured = Phase("during a cold job", 1, latencies, meter.use.seconds, meter.use)
    result = DuringJob(measured, phases, job_seconds, child_cores)
    print(
        f"  {result.phase.requests} requests in {result.phase.seconds:.1f}s: p50 {result.phase.percentile(50):.2f} "
        f"ms, p99 {result.phase.percentile(99):.2f} ms; the job took {job_seconds:.1f}s, POST to succeeded (other "
        f"processes, besides its child: {result.others:.2f} cores)",
        flush=True,
    )
    return result


# --- report ---------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}s"


def _median(runs: list[TimedRun], kind: str, cache: str, pick: str = "seconds") -> float:
    values = [getattr(run, pick) for run in runs if run.kind == kind and run.cache == cache]
    return float(statistics.median(values))


def _print_runs(runs: list[TimedRun]) -> None:
    rounds = max(run.round for run in runs)
    print(
        "Training the digits 0-4: a job through serve (POST to succeeded) and the retrain command (start to exit), "
        f"same images and options{f', {rounds} rounds' if rounds > 1 else ''}"
    )
    header = (
        f"{'run':<9} {'round':>5} {'seconds':>8} {'served s':>8} {'CPU s':>6} {'bottlenecks s':>13} "
        f"{'accuracy':>8} {'other':>5} {'tries':>5}"
    )
    print(header)
    print("-" * len(header))
    for run in sorted(runs, key=lambda run: (run.cache, run.kind, run.round)):
        served = f"{run.served_seconds:.1f}" if run.served_seconds is not None else "-"
        extraction = f"{run.extraction_seconds:.1f}" if run.extraction_seconds is not None else "?"
        print(
            f"{run.name:<9} {run.round:>5} {run.seconds:>8.1f} {served:>8} {run.cpu_seconds:>6.1f} "
            f"{extraction:>13} {run.accuracy:>8} {run.other_cores:>5.2f} {run.attempts:>5}"
        )
    print(
        "served s = POST until the new version is AVAILABLE; CPU s = the command's process, or the server and its\n"
        "job child; bottlenecks s = as the run printed it; other = cores used by other processes meanwhile;\n"
        f"tries = runs made to find one during which other processes used under {IDLE_CORES:g} cores (the quietest "
        "is shown)."
    )


def _print_latency(idle: Phase, during: DuringJob, idle_after: Phase) -> None:
    print(f"Sequential :predict of model {SERVED} (one digit a request, one client, keep-alive), idle and during a job")
    header = f"{'phase':<28} {'requests':>8} {'p50 ms':>7} {'p99 ms':>7} {'client':>6} {'server':>6} {'other':>5}"
    print(header)
    print("-" * len(header))
    for phase in (idle, during.phase, idle_after):
        cpu = phase.cpu
        print(
            f"{phase.name:<28} {phase.requests:>8} {phase.percentile(50):>7.2f} {phase.percentile(99):>7.2f} "
            f"{cpu.client:>6.2f} {cpu.server:>6.2f} {cpu.other:>5.2f}"
        )
    for name in dict.fromkeys(during.phases):
        part = [ms for ms, seen in zip(during.phase.latencies_ms, during.phases, strict=True) if seen == name]
        label = f"  job: {name}"[:28]
        print(f"{label:<28} {len(part):>8} {np.percentile(part, 50):>7.2f} {np.percentile(part, 99):>7.2f}")
    child = f"{during.child_cores:.2f}" if during.child_cores is not None else "?"
    print(
        f"client/server/other = cores used meanwhile by the client, the server and everything else; during the job\n"
        f"`other` includes the job's child (it used {child} cores, at nice 10; processes besides it {during.others:.2f}"
        f" cores; {during.attempts} cold job(s) run to find a quiet one). The job under this load took "
        f"{during.job_seconds:.1f}s, POST to succeeded."
    )


def _print_targets(runs: list[TimedRun], idle: Phase, idle_after: Phase, during: DuringJob) -> tuple[list, dict]:
    idle_ms = idle.latencies_ms + idle_after.latencies_ms
    idle_p50, idle_p99 = float(np.percentile(idle_ms, 50)), float(np.percentile(idle_ms, 99))
    ratios = {
        "job / CLI, cold": _median(runs, "job", "cold") / _median(runs, "CLI", "cold"),
        "job / CLI, warm": _median(runs, "job", "warm") / _median(runs, "CLI", "warm"),
        "predict p50, during a job / idle": during.phase.percentile(50) / idle_p50,
        "predict p99, during a job / idle": during.phase.percentile(99) / idle_p99,
    }
    warm = _median(runs, "job", "warm")
    ok = warm <= WARM_JOB_SECONDS
    verdict = "PASS" if ok else "MISS"
    rule = f"<= {WARM_JOB_SECONDS:g} s on this {os.cpu_count()}-core machine"
    print(f"{verdict}  {'warm job, POST to succeeded':<34} {warm:6.1f} s  (target {rule})")
    for name, value in ratios.items():
        print(f"      {name:<34} {value:6.2f}    (reported; no target)")
    print(
        f"      idle p50/p99 {idle_p50:.2f}/{idle_p99:.2f} ms (before and after the job, pooled); during "
        f"{during.phase.percentile(50):.2f}/{during.phase.percentile(99):.2f} ms"
    )
    verdicts = [{"target": "warm job seconds", "value": warm, "rule": rule, "verdict": verdict}]
    return verdicts, ratios


def _write_json(
    runs: list[TimedRun],
    idle: Phase,
    during: DuringJob,
    idle_after: Phase,
    verdicts: list[dict],
    ratios: dict,
    options: dict,
    count: int,
    settings: ServerOptions,
    elapsed: float,
) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"jobs-{time.strftime('%Y%m%d-%H%M%S')}.json"
    by_phase = {}
    for name in dict.fromkeys(during.phases):
        part = [ms for ms, seen in zip(during.phase.latencies_ms, during.phases, strict=True) if seen == name]
        by_phase[name] = {"requests": len(part), "p50_ms": np.percentile(part, 50), "p99_ms": np.percentile(part, 99)}
    document = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()},
        "versions": {"python": platform.python_version(), **_versions()},
        "images": {"labels": list(LABELS), "count": count},
        "options": options,
        "server_settings": settings.effective(),
        "elapsed_seconds": elapsed,
        "runs": [{**asdict(run), "name": run.name} for run in runs],
        "latency": {
            "idle_before": idle.summary(),
            "during_job": {
                **during.phase.summary(),
                "by_job_phase": by_phase,
                "job_seconds": during.job_seconds,
                "job_child_cores": during.child_cores,
                "other_cores_besides_the_job": during.others,
                "waited_for_idle_seconds": during.waited_seconds,
                "cold_jobs_run": during.attempts,
            },
            "idle_after": idle_after.summary(),
        },
        "ratios": ratios,
        "targets": verdicts,
    }
    path.write_text(json.dumps(document, indent=2, default=float) + "\n")
    return path


if __name__ == "__main__":
    main()
