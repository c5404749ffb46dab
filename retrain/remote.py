"""`retrain --server URL --token_file F`: the same training, run by a server's job API (serve.jobs.routes).

The image folder is found as a local run finds it (`retrain.images.discover`), and its images, and
nothing else, are zipped as `<label>/<file>` into a temporary file: stored, not compressed (images
are compressed already, and a flat BMP deflates past the server's zip-bomb ratio). The zip is
streamed from that file as the `images` field of a multipart POST to `/v1/models/<name>/jobs`, with
the training flags that were given on the command line as the other fields and the admin token as
`Authorization: Bearer`. The job's Server-Sent Events are then printed as a local run prints its
progress, and Ctrl-C cancels the job.

Only the standard library (and numpy, through discovery): this runs where the `train` extra, and so
TensorFlow, is not installed, such as the serve image.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import select
import socket
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit

from retrain.errors import RetrainError
from retrain.files import read_regular_file
from retrain.images import SPLITS, ImageSet, discover
from serve.models import model_name_problem
from serve.text import is_printable, printable

log = logging.getLogger("retrain")

# The training options a job takes (serve.jobs.routes._options, retrain.job.HPARAMS and CONFIG):
# the only flags besides --image_dir and --model_name that go with --server.
JOB_OPTIONS = (
    "how_many_training_steps",
    "learning_rate",
    "train_batch_size",
    "random_seed",
    "architecture",
    "bottleneck_layers",
    "validation_percentage",
    "testing_percentage",
    "head",
)
FINISHED = ("succeeded", "failed", "cancelled")
REQUEST_SECONDS = 60  # any one answer, the upload's included (the server answers once it has unpacked the zip)
EVENTS_SECONDS = 300  # silence on the event stream (a long phase sends nothing) before it is reopened
CONTINUE_SECONDS = 5  # how long to wait for `100 Continue` before sending the body to a server that never says it
CHUNK = 1 << 20
VALIDATION_BATCH = 100  # retrain.train.HParams.validation_batch_size (drawn with replacement): not a job option
NAMES_SHOWN = 10
JOB_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_STEP_PHASES = ("images", "training", "evaluated", "features chosen", "exporting")  # any other phase is a bar


class JobInterruptedError(Exception):
    """Ctrl-C: the job was cancelled (or could not be); exit code 130, the message says which."""


@dataclass(frozen=True)
class Job:
    """What `train` sends: the images' folder, the model's name and the training options as form fields."""

    image_dir: str
    model_name: str
    options: dict[str, str]


def job_of(image_dir: str, model_name: str | None, options: dict[str, Any]) -> Job:
    """The job for `retrain --image_dir ... --server ...`; `options` are the job options given on the
    command line. `--architecture auto` is the server's default too, and its job API names only
    backbones, so it is left out."""
    name = model_name or Path(image_dir).expanduser().resolve().name
    where = "--model_name" if model_name else "--model_name (by default the image folder's name)"
    problem = model_name_problem(name, where)
    if problem:
        raise RetrainError(problem)
    fields = {k: str(v) for k, v in options.items() if k in JOB_OPTIONS and not (k == "architecture" and v == "auto")}
    return Job(image_dir, name, fields)


def train(job: Job, server: str, token_file: str) -> int:
    """Trains `job` on `server`, printing its progress as a local run prints it; returns the version
    the server exported. RetrainError for anything that stops it (one line), JobInterruptedError on Ctrl-C."""
    remote = Server(server, read_token(token_file))
    report = Report(printable(job.image_dir), remote.shown, job.model_name)
    try:
        job_id = _send_job(job, remote, report)
    except KeyboardInterrupt:
        raise JobInterruptedError("interrupted before the server took the job; nothing was exported") from None
    try:
        final = follow(remote, job_id, report)
    except KeyboardInterrupt:
        report.clear()
        raise JobInterruptedError(_cancel(remote, job_id)) from None
    report.clear()
    if final["state"] != "succeeded":
        raise RetrainError(report.from_server(str(final.get("error") or f"the job ended {final['state']}")))
    result = final.get("result") or {}
    report.finished(result)
    return int(result.get("version") or 0)


def _send_job(job: Job, remote: Server, report: Report) -> str:
    """Finds the images, checks the server and the token, zips the images and sends them; returns the job's id."""
    image_set = discover(
        job.image_dir,
        float(job.options.get("validation_percentage", 10)),
        float(job.options.get("testing_percentage", 10)),
    )
    remote.request("GET", "/v1/jobs")  # the server is there, its job API on, the token right: before any zipping
    _left_out(image_set)
    with tempfile.TemporaryFile(prefix="retrain-upload-", suffix=".zip") as archive:
        count = zip_images(image_set, archive)
        size = archive.tell()
        report.say(
            f"Sending {count} images in {len(image_set.labels)} classes ({_size(size)}) to {remote.shown} "
            f"for model {job.model_name}..."
        )
        archive.seek(0)
        accepted = remote.post_job(job.model_name, job.options, archive, size, report)
    job_id = str(accepted.get("job"))
    if not JOB_ID.fullmatch(job_id):
        raise RetrainError(f"{remote.shown} took the job but answered no job id ({printable(job_id)[:40]!r})")
    report.job_id = job_id
    report.say(f"Job {job_id} accepted by {remote.shown}.")
    return job_id


def read_token(path: str) -> str:
    """The admin token in `path`: its text without surrounding whitespace, one word."""
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise RetrainError(f"--token_file {printable(path)} cannot be read: {reason}") from e
    if not token or any(c.isspace() for c in token) or not token.isprintable():
        raise RetrainError(f"--token_file {printable(path)} must hold the server's admin token, one word")
    return token


# --- the zip -------------------------------------------------------------------------------------


def zip_images(image_set: ImageSet, sink: IO[bytes]) -> int:
    """Writes the images of `image_set` into `sink` as a zip of `<label>/<file>`, one file in memory
    at a time; returns how many. A file the server's job API would refuse by its name, or that cannot
    be read now, is left out with a warning."""
    examples = sorted((e for split in SPLITS for e in image_set.splits[split]), key=lambda e: e.relpath)
    for label in image_set.labels:
        if ":" in label:  # the job API takes `x:` first in a path for a drive letter
            raise RetrainError(f"class folder {printable(label)!r}: the server's job API refuses ':' there; rename it")
    unnamed, unreadable, count = [], [], 0
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:
        for example in examples:
            if not is_printable(example.relpath):
                unnamed.append(example.relpath)
                continue
            try:
                data = read_regular_file(example.path)
            except OSError as e:
                unreadable.append(f"{example.relpath} ({e.strerror or e})")
                continue
            info = zipfile.ZipInfo(example.relpath, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
            count += 1
    if unnamed:
        log.warning("not sending %d files whose names the server's job API refuses (not printable): %s",
                    len(unnamed), _names(unnamed))  # fmt: skip
    if unreadable:
        log.warning("not sending %d files that cannot be read: %s", len(unreadable), _names(unreadable))
    if not count:
        raise RetrainError(f"no images in {printable(image_set.image_dir)} can be sent")
    return count


def _left_out(image_set: ImageSet) -> None:
    """What discovery left out never reaches the server, so the server cannot warn about it: warned
    here, in retrain.report's words."""
    if image_set.empty_folders:
        log.warning("ignoring folders with no images: %s", _names(image_set.empty_folders))
    by_reason: dict[str, list[str]] = {}
    for entry in image_set.skipped:
        by_reason.setdefault(entry.reason, []).append(entry.relpath)
    for reason, names in by_reason.items():
        entries = "entry" if len(names) == 1 else "entries"
        log.warning("skipping %d %s of --image_dir (%s): %s", len(names), entries, reason, _names(names))
    if image_set.ignored_files:
        log.warning("ignoring %d files that are not images (by extension)", image_set.ignored_files)


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MB" if count >= 2**20 else f"{count / 2**10:.0f} kB"


def _from_server(text: str) -> str:
    """A message of the server's, safe to print: control characters escaped (its messages escape the
    names they hold already, so backslashes are left as they are)."""
    return printable(text).replace("\\\\", "\\")


def _names(names: list[str]) -> str:
    shown = ", ".join(printable(name) for name in names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


# --- the server ----------------------------------------------------------------------------------


class Server:
    """The job API of one `serve`, through http.client."""

    def __init__(self, url: str, token: str):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RetrainError(f"--server {printable(url)} is not a URL such as http://host:8501")
        try:
            self._port = parts.port
        except ValueError as e:
            raise RetrainError(f"--server {printable(url)}: {e}") from e
        self.shown = printable(url.rstrip("/"))
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._prefix = parts.path.rstrip("/")
        self._headers = {"authorization": f"Bearer {token}", "user-agent": "retrain"}

    def request(self, method: str, path: str) -> dict:
        """The JSON answer of a request without a body; RetrainError for an error answer or no answer."""
        connection = self._connect(REQUEST_SECONDS)
        try:
            connection.request(method, self._prefix + path, headers=self._headers)
            return self._answer(connection.getresponse())
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from e
        finally:
            connection.close()

    def post_job(self, name: str, fields: dict[str, str], archive: IO[bytes], size: int, report: Report) -> dict:
        """POSTs the job as multipart/form-data, the zip streamed from `archive`. On plain HTTP it asks
        for `100 Continue` first, so a refusal (a zip over --max_job_upload_mb) comes before the upload."""
        boundary = uuid.uuid4().hex
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
            for key, value in fields.items()
        )
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}.zip"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        connection = self._connect(REQUEST_SECONDS)
        try:
            connection.putrequest("POST", f"{self._prefix}/v1/models/{quote(name)}/jobs", skip_accept_encoding=True)
            for key, value in self._headers.items():
                connection.putheader(key, value)
            connection.putheader("content-type", f"multipart/form-data; boundary={boundary}")
            connection.putheader("content-length", str(len(head) + size + len(tail)))
            if not self._https:
                connection.putheader("expect", "100-continue")
            connection.endheaders()
            if self._https or _continued(connection):
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it answered before taking it all
                    _send(connection, head, archive, size, tail, report)
            connection.sock.settimeout(EVENTS_SECONDS)  # it answers once it has unpacked the zip
            try:
                return self._answer(connection.getresponse())
            except KeyboardInterrupt:
                raise JobInterruptedError(
                    f"interrupted while {self.shown} unpacked the images: if it took the job, it runs "
                    f"(GET /v1/jobs lists it, DELETE /v1/jobs/<id> cancels it)"
                ) from None
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from e
        finally:
            report.clear()
            connection.close()

    def events(self, job_id: str) -> Iterator[dict]:
        """The job's Server-Sent Events, each the job's JSON, until the server ends the stream. Errors
        on the way (a timeout, a lost connection) are raised as they are."""
        connection = self._connect(EVENTS_SECONDS)
        try:
            headers = {**self._headers, "accept": "text/event-stream"}
            connection.request("GET", f"{self._prefix}/v1/jobs/{quote(job_id)}/events", headers=headers)
            response = connection.getresponse()
            if response.status != 200:
                self._answer(response)
            data: list[bytes] = []
            while line := response.readline():
                line = line.rstrip(b"\r\n")
                if not line and data:
                    yield json.loads(b"\n".join(data))
                    data = []
                elif line.startswith(b"data:"):
                    data.append(line[5:].removeprefix(b" "))
        finally:
            connection.close()

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return kind(self._host, self._port, timeout=timeout)

    def _answer(self, response: http.client.HTTPResponse) -> dict:
        body = response.read()
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if 200 <= response.status < 300 and isinstance(answer, dict):
            return answer
        if isinstance(answer, dict) and "error" in answer:
            reason = str(answer["error"])
        else:
            reason = body.decode("utf-8", "replace").strip().splitlines()[0] if body.strip() else "no reason given"
        raise RetrainError(f"{self.shown} answered {response.status} {response.reason}: {_from_server(reason)[:500]}")

    def _unreachable(self, error: Exception) -> RetrainError:
        if isinstance(error, ConnectionRefusedError):
            reason = "connection refused (is `serve` running there?)"
        elif isinstance(error, socket.gaierror):
            reason = f"unknown host {printable(self._host)!r}"
        elif isinstance(error, TimeoutError):
            reason = "no answer in time"
        elif isinstance(error, ConnectionResetError):  # http.client.RemoteDisconnected too
            reason = "the server closed the connection"
        else:
            reason = str(getattr(error, "strerror", None) or error)
        return RetrainError(f"cannot reach {self.shown}: {printable(reason)}")


def _continued(connection: http.client.HTTPConnection) -> bool:
    """After headers with `Expect: 100-continue`: True if the server says `100 Continue`, or says
    nothing for CONTINUE_SECONDS (it does not do 100-continue), False if it answers at once (a
    refusal that http.client then reads)."""
    sock = connection.sock
    readable, _, _ = select.select([sock], [], [], CONTINUE_SECONDS)
    if not readable:
        return True
    status = sock.recv(12, socket.MSG_PEEK | socket.MSG_WAITALL)  # "HTTP/1.1 100", left for http.client
    return status.endswith(b" 100")  # http.client skips an interim answer when it reads the final one


def _send(
    connection: http.client.HTTPConnection, head: bytes, archive: IO[bytes], size: int, tail: bytes, report: Report
) -> None:
    connection.send(head)
    sent = 0
    while chunk := archive.read(CHUNK):
        connection.send(chunk)
        sent += len(chunk)
        report.live(f"Uploading: {_size(sent)} of {_size(size)}")
    connection.send(tail)


# --- following the job ---------------------------------------------------------------------------


def follow(remote: Server, job_id: str, report: Report) -> dict:
    """Prints the job's progress from its event stream until it has finished; returns its last state.
    A stream that breaks or stays silent for EVENTS_SECONDS is reopened (each starts with the job as
    it is); one that ends without the job having finished, and without a single event, is an error."""
    while True:
        seen = 0
        try:
            for job in remote.events(job_id):
                seen += 1
                report.update(job)
                if job.get("state") in FINISHED:
                    return job
        except (OSError, http.client.HTTPException, ValueError):
            pass  # reopened below, if the server still knows the job
        job = remote.request("GET", f"/v1/jobs/{quote(job_id)}")
        report.update(job)
        if job.get("state") in FINISHED:
            return job
        if not seen:
            state = job.get("state")
            raise RetrainError(f"{remote.shown} ends job {job_id}'s event stream at once; the job is {state}")


def _cancel(remote: Server, job_id: str) -> str:
    """Cancels the job after Ctrl-C; the message to end with."""
    try:
        state = remote.request("DELETE", f"/v1/jobs/{quote(job_id)}").get("state")
    except (RetrainError, KeyboardInterrupt) as e:
        reason = "interrupted again" if isinstance(e, KeyboardInterrupt) else str(e)
        return f"interrupted; job {job_id} may still be running on {remote.shown} ({reason})"
    if state == "succeeded":
        return f"interrupted; job {job_id} had already finished on {remote.shown}: its export is served there"
    return f"interrupted; job {job_id} cancelled on {remote.shown}, nothing was exported"


@dataclass
class _Bar:
    phase: str
    total: int
    started: float = field(default_factory=time.monotonic)


class Report:
    """Prints a job's states as a local run prints its progress (retrain.report's lines, from the
    events retrain.report emits): each line once, in the order a run reaches them. Bars are drawn
    on stderr when it is a terminal, and summed up in one line each when they end."""

    def __init__(self, image_dir: str, server: str, model: str):
        self.image_dir, self.server, self.model = image_dir, server, model
        self.job_id: str | None = None
        self._terminal = sys.stderr.isatty()
        self._live = False
        self._found = self._queued = self._chosen = self._evaluated = self._exporting = False
        self._step: int | None = None
        self._warnings = 0
        self._bar: _Bar | None = None

    def from_server(self, text: str) -> str:
        """A message of the server's about the job, its image folder (`<models_dir>/.jobs/<id>/images`) written
        as the local folder it came from: a warning names the file as a local run would."""
        shown = _from_server(text)
        if self.job_id:
            unpacked = re.compile(rf"[^\s'\"(]*\.jobs/{re.escape(self.job_id)}/images\b")
            shown = unpacked.sub(lambda _: self.image_dir, shown)
        return shown

    def say(self, line: str) -> None:
        self.clear()
        print(line, flush=True)

    def live(self, text: str) -> None:
        """A line redrawn in place on a terminal's stderr (nothing when stderr is not a terminal)."""
        if self._terminal:
            sys.stderr.write(f"\r{text}\x1b[K")
            sys.stderr.flush()
            self._live = True

    def clear(self) -> None:
        if self._live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._live = False

    def update(self, job: dict) -> None:
        progress = job.get("progress") or {}
        if job.get("state") == "queued" and not self._queued:
            self._queued = True
            self.say(f"Queued behind the job {self.server} is running.")
        if "labels" in progress and not self._found:
            self._found = True
            counts = ", ".join(f"{progress.get(split, 0)} {split}" for split in SPLITS)
            total = sum(int(progress.get(split, 0)) for split in SPLITS)
            self.say(f"Found {total} images in {len(progress['labels'])} classes in {self.image_dir} ({counts}).")
        warnings = job.get("warnings") or []
        for warning in warnings[self._warnings :]:
            self.clear()
            log.warning("%s", self.from_server(str(warning)))
        self._warnings = max(self._warnings, len(warnings))
        self._bars(progress, job.get("state") in FINISHED)
        if "features" in progress and not self._chosen:
            self._chosen = True
            self.say(f"Kept {progress['features']} bottleneck features.")
        if "step" in progress and progress["step"] != self._step:
            self._step = progress["step"]
            self._eval_step(progress)
        if "test_accuracy" in progress and not self._evaluated:
            self._evaluated = True
            self._final_accuracy(progress.get("test_accuracy"), progress.get("test_count"))
        if progress.get("phase") == "exporting" and not self._exporting:
            self._exporting = True
            self.say(f"Exporting to a new version of {self.model} on {self.server}...")

    def finished(self, result: dict) -> None:
        if not self._evaluated:
            self._final_accuracy(result.get("test_accuracy"), result.get("test_count"))
        self.say(f"Exported model to {self.server} as {self.model} version {result.get('version')}")

    def _bars(self, progress: dict, ended: bool) -> None:
        phase = progress.get("phase")
        is_bar = phase is not None and phase not in _STEP_PHASES and "total" in progress and not ended
        if self._bar and (not is_bar or phase != self._bar.phase):
            bar, self._bar = self._bar, None
            self.say(f"{printable(bar.phase)}: {bar.total} images in {time.monotonic() - bar.started:.1f}s.")
        if is_bar:
            total, done = int(progress.get("total") or 0), int(progress.get("done") or 0)
            if self._bar is None:
                self._bar = _Bar(phase, total)
            self.live(f"{printable(phase)}: {done}/{total} img ({done / max(total, 1):.0%})")

    def _eval_step(self, progress: dict) -> None:
        step = progress["step"]
        self.say(f"Step {step}: Train accuracy = {progress.get('train_accuracy', 0) * 100:.1f}%")
        self.say(f"Step {step}: Cross entropy = {progress.get('cross_entropy', 0):.6f}")
        validation = progress.get("validation_accuracy")
        if validation is not None:
            self.say(f"Step {step}: Validation accuracy = {validation * 100:.1f}% (N={VALIDATION_BATCH})")

    def _final_accuracy(self, accuracy: float | None, count: int | None) -> None:
        if accuracy is None:
            self.say("Final test accuracy = n/a (N=0): no test images")
        else:
            self.say(f"Final test accuracy = {accuracy * 100:.1f}% (N={count})")
