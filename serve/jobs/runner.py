"""Training jobs, one at a time, each a `python -m retrain.job` child process.

A job is a folder under `jobs_dir` (`<models_dir>/.jobs/<id>/`, hidden from the model catalog):
`job.json` (its state, written on every change, so a restarted server knows it), `spec.json` (what
the child trains), `events.jsonl` (the child's progress), `log.txt` (what the `retrain` command would
have printed) and, while it runs, `images/` (the unpacked upload, deleted afterwards: the bottleneck
cache keeps what the next job needs). The child is a separate process in its own session, at a
lower CPU priority than serving: an out-of-memory kill or a crash of training cannot take the
server down, and serving keeps answering while a job runs. Its export is retrain's: written hidden,
renamed into place as the model's next version, then found by the manager like any other.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from serve.text import printable

log = logging.getLogger("serve")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
WARNINGS_KEPT = 50
INTERRUPTED = "interrupted: the server stopped during this job; nothing was exported"
POLL_SECONDS = 0.2


class JobQueueFullError(RuntimeError):
    """More jobs are waiting than --max_queued_jobs (HTTP 503)."""


@dataclass
class Job:
    id: str
    model: str
    state: str
    created: float
    options: dict
    progress: dict = field(default_factory=dict)  # the latest of each: phase, done/total, step, accuracies
    warnings: list[str] = field(default_factory=list)
    result: dict | None = None  # on success: version, test accuracy
    error: str | None = None
    finished: float | None = None
    revision: int = 0  # bumped on every change: what event streams watch

    def public(self) -> dict:
        """The job as the API shows it."""
        shown = {k: v for k, v in asdict(self).items() if k != "revision"}
        return {"job": shown.pop("id"), **shown}


class JobRunner:
    """Queues jobs and runs them one after another in child processes."""

    def __init__(
        self,
        jobs_dir: Path,
        models_dir: Path,
        bottleneck_dir: Path,
        max_queued: int = 4,
        child_nice: int = 10,
        on_exported: Callable[[str], None] | None = None,
    ):
        self.jobs_dir = jobs_dir
        self.models_dir = models_dir
        self.bottleneck_dir = bottleneck_dir
        self.child_nice = child_nice
        self._on_exported = on_exported or (lambda model: None)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queued)
        self._process: subprocess.Popen | None = None
        self._cancelled: set[str] = set()
        self._closing = False
        jobs_dir.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._worker = threading.Thread(target=self._work, name="jobs", daemon=True)
        self._worker.start()

    # --- the API's side -----------------------------------------------------------------------

    def new_folder(self) -> tuple[str, Path]:
        """A fresh job id and its folder, for the upload to be unpacked into before `submit`."""
        job_id = uuid.uuid4().hex[:12]
        folder = self.jobs_dir / job_id
        folder.mkdir()
        return job_id, folder

    def submit(self, job_id: str, model: str, image_dir: Path, options: dict) -> Job:
        """Queues a job whose images are unpacked in its folder; JobQueueFullError if too many wait."""
        job = Job(job_id, model, QUEUED, time.time(), options)
        spec = {
            "image_dir": str(image_dir),
            "model_name": model,
            "models_dir": str(self.models_dir),
            "bottleneck_dir": str(self.bottleneck_dir),
            "options": options,
        }
        (self.jobs_dir / job_id / "spec.json").write_text(json.dumps(spec))
        with self._lock:
            try:
                self._queue.put_nowait(job)
            except queue.Full as e:
                raise JobQueueFullError(f"{self._queue.maxsize} jobs are waiting already (--max_queued_jobs)") from e
            self._jobs[job_id] = job
            self._save(job)
        log.warning("job %s queued: model %s", job_id, model)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda job: job.created, reverse=True)

    def cancel(self, job_id: str) -> Job | None:
        """Cancels a queued job, or stops a running one (its child is killed; nothing is exported)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state in FINISHED:
                return job
            self._cancelled.add(job_id)
            process = self._process if job.state == RUNNING else None
            if job.state == QUEUED:
                self._finish(job, CANCELLED, error="cancelled before it started")
        if process is not None:
            _stop(process)
        return job

    def close(self) -> None:
        """Stops the worker; a running child is stopped and its job marked interrupted."""
        self._queue.put(None)
        with self._lock:
            self._closing = True
            process = self._process
        if process is not None:
            _stop(process)
        self._worker.join(timeout=30)

    # --- the worker's side --------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.state != QUEUED:  # cancelled while it waited
                    continue
                job.state = RUNNING
                self._save(job)
            try:
                self._run(job)
            except Exception as e:  # the runner must outlive any one job
                log.exception("job %s failed in the runner", job.id)
                with self._lock:
                    self._finish(job, FAILED, error=f"internal error: {type(e).__name__}: {e}")
            finally:
                shutil.rmtree(self.jobs_dir / job.id / "images", ignore_errors=True)

    def _run(self, job: Job) -> None:
        folder = self.jobs_dir / job.id
        events = folder / "events.jsonl"
        events.touch()
        with (folder / "log.txt").open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "retrain.job", str(folder / "spec.json"), str(events)],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped as one
                env={**os.environ, "PYTHONUNBUFFERED": "1", "RETRAIN_JOB_PARENT": str(os.getpid())},
            )
            # Below serving's priority before it starts its threads (they inherit it).
            os.setpriority(os.PRIO_PROCESS, process.pid, self.child_nice)
            with self._lock:
                self._process = process
            log.warning("job %s running (pid %d): model %s", job.id, process.pid, job.model)
            offset = 0
            while process.poll() is None:
                offset = self._read_events(job, events, offset)
                time.sleep(POLL_SECONDS)
            offset = self._read_events(job, events, offset)
        with self._lock:
            self._process = None
            if job.id in self._cancelled:
                self._finish(job, CANCELLED, error="cancelled while running; nothing was exported")
            elif job.state == RUNNING and self._closing:
                self._finish(job, FAILED, error=INTERRUPTED)
            elif job.state == RUNNING:  # the child died without saying how it ended
                self._finish(job, FAILED, error=f"the training process ended with exit code {process.returncode}")
        if job.state == SUCCEEDED:
            self._on_exported(job.model)

    def _read_events(self, job: Job, events: Path, offset: int) -> int:
        with events.open("rb") as stream:
            stream.seek(offset)
            data = stream.read()
        complete = data[: data.rfind(b"\n") + 1]
        for line in complete.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self._apply(job, event)
        return offset + len(complete)

    def _apply(self, job: Job, event: dict) -> None:
        with self._lock:
            if "warning" in event:
                if len(job.warnings) < WARNINGS_KEPT:
                    job.warnings.append(str(event["warning"]))
            elif event.get("phase") == "succeeded":
                job.result = {
                    k: event.get(k) for k in ("version", "test_accuracy", "test_count", "tensorflow_imported")
                }
                self._finish(job, SUCCEEDED)
                log.warning("job %s succeeded: model %s version %s", job.id, job.model, job.result["version"])
                return
            elif event.get("phase") == "failed":
                self._finish(job, FAILED, error=str(event.get("error")))
                log.warning("job %s failed: %s", job.id, printable(str(event.get("error"))))
                return
            else:
                job.progress = {**job.progress, **event}
            job.revision += 1

    def _finish(self, job: Job, state: str, error: str | None = None) -> None:
        """Under self._lock."""
        job.state, job.error, job.finished = state, error, time.time()
        job.revision += 1
        self._save(job)

    def _save(self, job: Job) -> None:
        """job.json, replaced atomically (under self._lock)."""
        path = self.jobs_dir / job.id / "job.json"
        temporary = path.with_name(".job.json.tmp")
        temporary.write_text(json.dumps(asdict(job)))
        os.replace(temporary, path)

    def _recover(self) -> None:
        """Jobs of an earlier run of the server: kept for GET; one it left queued or running failed."""
        for path in sorted(self.jobs_dir.glob("*/job.json")):
            try:
                job = Job(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if job.state not in FINISHED:
                self._finish(job, FAILED, error=INTERRUPTED)
                shutil.rmtree(path.parent / "images", ignore_errors=True)
            self._jobs[job.id] = job


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the child's process group, SIGKILL if it has not gone in 10 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
