"""`retrain --server URL --token_file F` (issue 25): the installed `retrain` sends a folder to a real
`serve`'s job API and prints the job's progress as a local run prints it.

A copy of digits 0-4 becomes model `low`'s version 1 on the server, which then serves it; only the
flags given are sent; a wrong token, an upload over the server's limit, a job the server refuses or
one that fails, and a server that is not there are each one line on stderr and exit code 2; flags
that only mean something locally are a usage error; Ctrl-C cancels the job and exits 130.
"""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from retrain import job as retrain_job
from retrain.remote import JOB_OPTIONS

from .conftest import DIGITS, Server, copy_digits, start_serve, wait_for

RETRAIN = str(Path(sys.executable).with_name("retrain"))
SERVE_SCRIPT = [str(Path(sys.executable).with_name("serve"))]
TOKEN = "remote-token-0123456789abcdef"
LOW = [str(d) for d in range(5)]
UPLOAD_LIMIT_MB = 1


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("remote")
    (folder / "models").mkdir()
    (folder / "token").write_text(TOKEN + "\n")
    (folder / "wrong").write_text("x" * len(TOKEN))
    return folder


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Server]:
    flags = ["--models_dir", str(root / "models"), "--admin_token_file", str(root / "token"), "--wait_for_model"]
    running = start_serve([*flags, "--max_job_upload_mb", str(UPLOAD_LIMIT_MB)], root / "serve.log", SERVE_SCRIPT,
                          ready="/healthz")  # fmt: skip
    yield running
    running.stop()


def retrain(*args: str, server: Server | None = None, token: str = "token", root: Path | None = None):
    """The installed `retrain` with --server and --token_file (when given), its output captured."""
    remote = ["--server", server.url, "--token_file", str(root / token)] if server else []
    return subprocess.run([RETRAIN, *args, *remote], capture_output=True, text=True, timeout=600)


def jobs(server: Server) -> list[dict]:
    with server.client() as client:
        return client.get("/v1/jobs", headers={"authorization": f"Bearer {TOKEN}"}).json()["jobs"]


def test_the_job_options_are_the_job_apis() -> None:
    assert set(JOB_OPTIONS) == set(retrain_job.HPARAMS) | set(retrain_job.CONFIG)


def test_a_folder_sent_to_the_server_trains_there_and_is_served(server: Server, root: Path, tmp_path: Path) -> None:
    image_dir = copy_digits(tmp_path / "low", LOW, per_class=20)
    (image_dir / "0" / "notes.txt").write_text("not an image")  # left out, and said so, as a local run says it
    done = retrain("--image_dir", str(image_dir), "--how_many_training_steps", "300", server=server, root=root)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    found = [line for line in lines if line.startswith("Found ")]
    assert found == [f"Found 100 images in 5 classes in {image_dir} (78 training, 10 validation, 12 testing)."]
    steps = [int(line.split(":")[0].removeprefix("Step ")) for line in lines if line.startswith("Step ")]
    assert steps[-1] == 299 and steps == sorted(steps)
    assert len(steps) == 3 * len(set(steps))  # train accuracy, cross entropy, validation accuracy: each step once
    assert "Step 299: Cross entropy = " in done.stdout and "Step 299: Validation accuracy = " in done.stdout
    assert lines.index(found[0]) < lines.index(next(line for line in lines if line.startswith("Step ")))
    assert sum(line.startswith("Final test accuracy = ") and line.endswith("(N=12)") for line in lines) == 1
    assert lines[-1] == f"Exported model to {server.url} as low version 1"
    assert done.stderr == "retrain: warning: ignoring 1 files that are not images (by extension)\n"
    assert jobs(server)[0]["options"] == {"how_many_training_steps": 300}  # only the flags given on the command line

    with server.client() as client:
        wait_for(lambda: _available(client, "low") == ["1"], "low version 1 to be served")
        three = base64.b64encode(sorted((DIGITS / "3").glob("*.png"))[-1].read_bytes()).decode()
        ranked = client.post("/v1/models/low:classify", json={"examples": [{"b64": three}]}).json()
    assert ranked["result"][0][0][0] == "3" and ranked["model_spec"] == {"name": "low", "version": "1"}


def _available(client: httpx.Client, name: str) -> list[str]:
    answer = client.get(f"/v1/models/{name}")
    statuses = answer.json().get("model_version_status", []) if answer.status_code == 200 else []
    return [v["version"] for v in statuses if v["state"] == "AVAILABLE"]


def test_a_wrong_token_is_one_line_and_sends_nothing(server: Server, root: Path, tmp_path: Path) -> None:
    image_dir = copy_digits(tmp_path / "wrong", ["0", "1"], per_class=5)
    before = len(jobs(server))
    done = retrain("--image_dir", str(image_dir), server=server, token="wrong", root=root)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"retrain: error: {server.url} answered 403 Forbidden: wrong admin token\n"
    assert len(jobs(server)) == before


def test_refusals_by_the_server_are_one_line(server: Server, root: Path, tmp_path: Path) -> None:
    image_dir = copy_digits(tmp_path / "refused", ["0", "1"], per_class=5)
    done = retrain("--image_dir", str(image_dir), "--architecture", "inception_v3", server=server, root=root)
    assert done.returncode == 2
    assert done.stderr.startswith(f"retrain: error: {server.url} answered 400 Bad Request: architecture must be ")
    assert done.stderr.count("\n") == 1

    noise = np.random.default_rng(0)  # incompressible PNGs: a zip over the server's upload limit
    for label in ("a", "b"):
        (tmp_path / "big" / label).mkdir(parents=True)
        for index in range(6):
            pixels = noise.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "big" / label / f"{index}.png")
    done = retrain("--image_dir", str(tmp_path / "big"), server=server, root=root)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "answered 413 Request Entity Too Large: upload of " in done.stderr and "--max_job_upload_mb" in done.stderr


def test_a_job_that_fails_says_why_after_its_warnings(server: Server, root: Path, tmp_path: Path) -> None:
    image_dir = copy_digits(tmp_path / "broken", ["0"], per_class=10)
    (image_dir / "junk").mkdir()
    for index in range(5):  # a second class whose images are not images: nothing to learn
        (image_dir / "junk" / f"{index}.png").write_bytes(bytes(range(200)))
    done = retrain("--image_dir", str(image_dir), "--how_many_training_steps", "30", server=server, root=root)
    assert done.returncode == 2
    errors = done.stderr.splitlines()
    assert errors[-1] == "retrain: error: fewer than two classes have decodable training images; nothing to learn"
    warnings = [line for line in errors[:-1] if line.startswith("retrain: warning: skipping ")]
    assert warnings and all(line.startswith(f"retrain: warning: skipping {image_dir}/junk/") for line in warnings)
    assert "Found 15 images in 2 classes" in done.stdout and "Exported" not in done.stdout


def test_flags_of_a_local_run_are_a_usage_error_with_server(root: Path, tmp_path: Path) -> None:
    image_dir = copy_digits(tmp_path / "local", ["0", "1"], per_class=3)
    base = ["--image_dir", str(image_dir), "--server", "http://127.0.0.1:1"]
    done = retrain(*base, "--token_file", str(root / "token"), "--output_dir", "out", "--fine_tune_layers", "2")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("retrain: error: --output_dir, --fine_tune_layers: not with --server")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
    alone = retrain(*base)
    assert alone.returncode == 2 and alone.stderr.startswith("retrain: error: --server and --token_file go together")


def test_a_server_that_is_not_there_is_one_line(root: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    image_dir = copy_digits(tmp_path / "nowhere", ["0", "1"], per_class=3)
    url = f"http://127.0.0.1:{port}"
    done = retrain("--image_dir", str(image_dir), "--server", url, "--token_file", str(root / "token"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"retrain: error: cannot reach {url}: connection refused (is `serve` running there?)\n"


def test_ctrl_c_cancels_the_job(server: Server, root: Path, tmp_path: Path) -> None:
    image_dir = copy_digits(tmp_path / "slow", LOW, per_class=10)
    command = [RETRAIN, "--image_dir", str(image_dir), "--how_many_training_steps", "20000",
               "--server", server.url, "--token_file", str(root / "token")]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("Step "):  # training on the server: now Ctrl-C
                process.send_signal(signal.SIGINT)
                break
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    job = jobs(server)[0]
    assert job["model"] == "slow"
    cancelled = f"retrain: error: interrupted; job {job['job']} cancelled on {server.url}, nothing was exported"
    assert stderr.splitlines()[-1] == cancelled
    wait_for(lambda: jobs(server)[0]["state"] == "cancelled", "the job to be cancelled")
    assert not [p for p in (root / "models" / "slow").glob("*") if not p.name.startswith(".")]


def test_the_client_needs_no_tensorflow() -> None:
    """`retrain --server` runs where only the serve dependencies are (the serve image has `retrain`)."""
    code = "import sys, retrain.cli, retrain.remote; print(sorted({'tensorflow', 'tqdm', 'keras'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
