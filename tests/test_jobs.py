"""Training through the server (issue 25): the job API of the installed `serve`, on 127.0.0.1.

A zip of digits 0-4 sent with the admin token becomes model `low`'s next version, trained by the
same `retrain.pipeline.run` as the command in a child process, and is then served; without the
token 401/403, without --admin_token_file 404; hostile zips are refused before anything is
written outside the job's folder; a job can be followed as Server-Sent Events and cancelled; a
server stopped during a job shows no export and says the job was interrupted when it comes back.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import stat
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serve.jobs.archive import ArchiveError, ArchiveLimits, unpack

from .conftest import DIGITS, Server, start_serve, wait_for

SERVE_SCRIPT = [str(Path(sys.executable).with_name("serve"))]
TOKEN = "test-token-0123456789abcdef"
LOW = [str(d) for d in range(5)]


def digits_zip(
    labels: list[str], per_class: int = 20, top: str | None = "low", extra: dict[str, bytes] | None = None
) -> bytes:
    """A zip of `per_class` bundled digits of each label, in `<top>/<label>/` (or `<label>/`)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label in labels:
            for path in sorted((DIGITS / label).glob("*.png"))[:per_class]:
                archive.writestr(f"{top + '/' if top else ''}{label}/{path.name}", path.read_bytes())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def member(name: str, data: bytes = b"x", mode: int | None = None) -> bytes:
    """A zip of one member, its name and Unix mode as given (a hostile zip's)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        if mode is not None:
            info.create_system, info.external_attr = 3, mode << 16
        archive.writestr(info, data)
    return buffer.getvalue()


# --- the archive, unpacked safely ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (member("../evil.png"), "points outside"),
        (member("low/../../evil.png"), "points outside"),
        (member("/etc/evil.png"), "not a relative path"),
        (member("C:/evil.png"), "not a relative path"),
        (member("low\\..\\evil.png"), "not a relative path"),
        (member("low/\x1b[31mred.png"), "not a relative path"),
        (member("low/link.png", b"/etc/passwd", stat.S_IFLNK | 0o777), "symbolic link"),
        (member("low/fifo.png", b"", stat.S_IFIFO | 0o644), "not a regular file"),
        (member("low/0/bomb.png", bytes(50 * 2**20)), "zip bomb"),
        (b"PK\x03\x04 not really a zip", "not a zip file"),
        (b"", "not a zip file"),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "drive",
        "backslash",
        "escape",
        "symlink",
        "fifo",
        "bomb",
        "fake",
        "empty",
    ],
)
def test_hostile_zips_are_refused_and_write_nothing_outside(archive: bytes, message: str, tmp_path: Path) -> None:
    upload = tmp_path / "upload.zip"
    upload.write_bytes(archive)
    destination = tmp_path / "job" / "images"
    destination.mkdir(parents=True)
    with pytest.raises(ArchiveError, match=message) as refused:
        unpack(upload, destination)
    assert "\n" not in str(refused.value) and "\x1b" not in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job", "upload.zip"]  # nothing beside the job
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "job" / "evil.png").exists()


def test_limits_on_files_and_size_are_checked(tmp_path: Path) -> None:
    upload = tmp_path / "upload.zip"
    upload.write_bytes(digits_zip(LOW, per_class=3))
    for limits, message in (
        (ArchiveLimits(max_files=14), "holds 15 files; at most 14"),
        (ArchiveLimits(max_unpacked_bytes=1000), "unpacks to more than"),
    ):
        destination = tmp_path / f"out-{limits.max_files}"
        destination.mkdir()
        with pytest.raises(ArchiveError, match=message) as refused:
            unpack(upload, destination, limits)
        assert refused.value.status == 413


def test_one_top_folder_is_the_image_folder(tmp_path: Path) -> None:
    for top, expected in (("low", "low"), (None, "")):
        upload = tmp_path / f"{top}.zip"
        upload.write_bytes(digits_zip(["0", "1"], per_class=2, top=top))
        destination = tmp_path / f"out-{top}"
        destination.mkdir()
        image_dir = unpack(upload, destination)
        assert image_dir == destination / expected if expected else image_dir == destination
        assert sorted(p.name for p in image_dir.iterdir()) == ["0", "1"]


# --- the API, on a real server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("jobs")
    (folder / "models").mkdir()
    (folder / "token").write_text(TOKEN + "\n")
    return folder


def start(root: Path, log: str, *flags: str) -> Server:
    args = ["--models_dir", str(root / "models"), "--admin_token_file", str(root / "token"), "--wait_for_model", *flags]
    return start_serve(args, root / log, SERVE_SCRIPT, ready="/healthz")


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Server]:
    running = start(root, "serve.log", "--poll_seconds", "0.5")
    yield running
    running.stop()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def submit(client: httpx.Client, name: str, archive: bytes, **options: str) -> httpx.Response:
    return client.post(f"/v1/models/{name}/jobs", files={"images": ("set.zip", archive)}, data=options, headers=auth())


def finished(client: httpx.Client, job: str) -> dict:
    wait_for(lambda: client.get(f"/v1/jobs/{job}", headers=auth()).json()["state"] not in ("queued", "running"),
             f"job {job} to end", timeout=600)  # fmt: skip
    return client.get(f"/v1/jobs/{job}", headers=auth()).json()


def test_a_job_trains_the_next_version_which_is_then_served(server: Server, root: Path) -> None:
    archive = digits_zip(LOW)
    with server.client() as client:
        answer = submit(client, "low", archive, how_many_training_steps="300")
        assert answer.status_code == 202, answer.text
        job = answer.json()["job"]
        assert answer.headers["location"] == f"/v1/jobs/{job}"
        done = finished(client, job)
        assert done["state"] == "succeeded", done
        assert done["result"]["version"] == 1 and done["result"]["tensorflow_imported"] is False
        assert done["progress"]["labels"] == LOW and done["progress"]["step"] == 299
        wait_for(lambda: _available(client, "low") == ["1"], "low version 1 to be served")
        three = base64.b64encode(sorted((DIGITS / "3").glob("*.png"))[-1].read_bytes()).decode()
        ranked = client.post("/v1/models/low:classify", json={"examples": [{"b64": three}]}).json()
        assert ranked["result"][0][0][0] == "3" and ranked["model_spec"] == {"name": "low", "version": "1"}

        again = submit(client, "low", archive, how_many_training_steps="300").json()["job"]  # the cache is warm
        assert finished(client, again)["result"]["version"] == 2
        listed = client.get("/v1/jobs", headers=auth()).json()["jobs"]
    assert [entry["job"] for entry in listed] == [again, job]
    assert sorted(p.name for p in (root / "models" / "low").iterdir() if not p.name.startswith(".")) == ["1", "2"]
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "tensorflow" not in maps and "_pywrap_tensorflow" not in maps  # the server itself never loads it


def _available(client: httpx.Client, name: str) -> list[str]:
    answer = client.get(f"/v1/models/{name}")
    statuses = answer.json().get("model_version_status", []) if answer.status_code == 200 else []
    return [v["version"] for v in statuses if v["state"] == "AVAILABLE"]


def test_without_the_token_401_and_with_a_wrong_one_403(server: Server) -> None:
    with server.client() as client:
        missing = client.get("/v1/jobs")
        wrong = client.get("/v1/jobs", headers=auth("x" * len(TOKEN)))
        post = client.post("/v1/models/low/jobs", files={"images": ("a.zip", b"PK")})
    assert (missing.status_code, wrong.status_code, post.status_code) == (401, 403, 401)
    assert missing.headers["www-authenticate"] == "Bearer" and set(wrong.json()) == {"error"}


def test_bad_requests_are_400_with_a_reason_and_leave_nothing(server: Server, root: Path) -> None:
    with server.client() as client:
        answers = {
            "dotdot": submit(client, "low", member("../escaped.png", b"not an image")),
            "not a zip": submit(client, "low", b"just bytes"),
            "bad option": submit(client, "low", digits_zip(["0", "1"], 3), how_many_training_steps="many"),
            "unknown option": submit(client, "low", digits_zip(["0", "1"], 3), fine_tune_layers="5"),
            "architecture": submit(client, "low", digits_zip(["0", "1"], 3), architecture="inception_v3"),
            "bad name": submit(client, "latest", digits_zip(["0", "1"], 3)),
        }
        no_file = client.post("/v1/models/low/jobs", data={"x": "1"}, files={"other": ("a", b"1")}, headers=auth())
    for case, answer in answers.items():
        assert answer.status_code == 400, (case, answer.text)
    assert "points outside" in answers["dotdot"].json()["error"]
    assert "efficientnet_lite0" in answers["architecture"].json()["error"]
    assert no_file.status_code == 400 and "images" in no_file.json()["error"]
    assert not (root / "models" / "escaped.png").exists() and not (root / "escaped.png").exists()
    jobs = root / "models" / ".jobs"
    assert all((folder / "job.json").exists() for folder in jobs.iterdir())  # refused uploads leave no folder


def test_one_class_is_refused_at_once_and_undecodable_classes_fail_the_job(server: Server) -> None:
    with server.client() as client:
        single = submit(client, "single", digits_zip(["7"], 10))
        junk = {f"low/junk/{i}.png": b"not a png" for i in range(3)}
        job = submit(client, "junk", digits_zip(["7"], 10, extra=junk)).json()["job"]
        done = finished(client, job)
    assert single.status_code == 400 and "at least two" in single.json()["error"]
    assert done["state"] == "failed" and "class" in done["error"]
    assert any("junk" in warning for warning in done["warnings"])  # the skipped files are listed


def test_events_stream_until_the_job_ends_and_a_job_can_be_cancelled(server: Server, root: Path) -> None:
    with server.client() as client:
        job = submit(client, "slow", digits_zip(LOW, 10), how_many_training_steps="20000").json()["job"]
        states = []
        with client.stream("GET", f"/v1/jobs/{job}/events", headers=auth()) as events:
            for line in events.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line.removeprefix("data: "))
                states.append(event["state"])
                if event["progress"].get("phase") == "training":
                    assert client.delete(f"/v1/jobs/{job}", headers=auth()).status_code == 200
        done = client.get(f"/v1/jobs/{job}", headers=auth()).json()
    assert states[-1] == "cancelled" and "running" in states
    assert done["state"] == "cancelled" and done["result"] is None
    assert not [p for p in (root / "models" / "slow").glob("*") if not p.name.startswith(".")]  # nothing served


def test_a_server_stopped_during_a_job_shows_no_export_and_says_so_after(root: Path, tmp_path: Path) -> None:
    first = start(root, "restart-1.log")
    with first.client() as client:
        job = submit(client, "interrupted", digits_zip(LOW, 10), how_many_training_steps="20000").json()["job"]
        wait_for(lambda: client.get(f"/v1/jobs/{job}", headers=auth()).json()["progress"].get("phase") == "training",
                 "the job to train")  # fmt: skip
    child = int(re.search(rf"job {job} running \(pid (\d+)\)", first.log()).group(1))
    first.process.send_signal(signal.SIGKILL)  # no clean shutdown: the child must die with it
    first.process.wait()
    wait_for(lambda: not _alive(child), "the training child to die with the server")
    second = start(root, "restart-2.log")
    try:
        with second.client() as client:
            status = client.get(f"/v1/jobs/{job}", headers=auth()).json()
    finally:
        second.stop()
    assert status["state"] == "failed" and status["error"].startswith("interrupted")
    assert not [p for p in (root / "models" / "interrupted").glob("*") if not p.name.startswith(".")]


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its exit to be collected."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_without_a_token_file_the_job_api_is_off(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    server = start_serve(["--models_dir", str(tmp_path / "models"), "--wait_for_model"], tmp_path / "off.log",
                         SERVE_SCRIPT, ready="/healthz")  # fmt: skip
    try:
        with server.client() as client:
            answer = client.get("/v1/jobs", headers=auth())
    finally:
        server.stop()
    assert answer.status_code == 404 and "--admin_token_file" in answer.json()["error"]
    assert not os.path.exists(tmp_path / "models" / ".jobs")
