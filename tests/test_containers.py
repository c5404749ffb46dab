"""The container contract, checked where no Docker engine runs.

hadolint lints the Dockerfile, docker-compose validates the compose files, and each Dockerfile
target is replayed here (tests/dockerfile_replay.py): its COPY and RUN instructions build a fresh
virtual environment under a temporary root, then its ENTRYPOINT runs with a typical command —
retrain on a small copy of the digits, serve answering a request on 127.0.0.1.
"""

from __future__ import annotations

import fnmatch
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import DIGITS, REPO, copy_digits, debian_tool
from .dockerfile_replay import Dockerfile, Image, ReplayError, replay

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker-compose.gpu.yml"
TARGETS = ("retrain", "serve")
# What a failed install says when there is no package index to reach: the only reason to skip.
NO_INDEX = re.compile(
    r"Failed to establish a new connection|Network is unreachable|Temporary failure in name resolution"
)


@pytest.fixture(scope="module")
def parsed() -> Dockerfile:
    return Dockerfile.parse(DOCKERFILE)


# --- the Dockerfile as text ------------------------------------------------------------------------


def test_hadolint_passes_with_no_unexplained_ignores() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([hadolint, "--no-color", DOCKERFILE], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert number > 0 and lines[number - 1].lstrip().startswith("#") and "ignore" not in lines[number - 1], (
                f"line {number + 1}: an ignored rule needs a comment above it saying why"
            )


def test_hadolint_is_really_checking() -> None:
    """The same lint fails a Dockerfile with a known mistake (root user, unpinned, cached pip)."""
    hadolint = Path(sys.executable).with_name("hadolint")
    bad = "FROM python:3.11-slim\nRUN pip install requests\nCMD python app.py\n"
    result = subprocess.run([hadolint, "--no-color", "-"], input=bad, capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3013" in result.stdout and "DL3042" in result.stdout


def test_both_targets_exist_run_their_cli_as_a_non_root_user(parsed: Dockerfile) -> None:
    for target in TARGETS:
        assert target in parsed.stages, f"no `FROM ... AS {target}` stage"
        instructions = parsed.instructions(target)
        by_name = {command.cmd: command for command in instructions}  # the last of each kind wins
        assert by_name["ENTRYPOINT"].json and list(by_name["ENTRYPOINT"].value) == [target]
        user = by_name["USER"].value[0]
        assert user.split(":")[0] not in ("root", "0"), f"{target} runs as {user}"
        installs = [c.value[0] for c in instructions if c.cmd == "RUN" and "pip install" in c.value[0]]
        assert installs, f"{target} installs nothing with pip"
        for install in installs:
            assert "--no-cache-dir" in install, f"the pip cache would stay in the {target} image: {install}"
            assert "--constraint constraints.txt" in install, f"{target} does not pin versions: {install}"


def test_retrain_bakes_the_weights_and_serve_has_no_tensorflow_extra(parsed: Dockerfile) -> None:
    retrain_runs = [c.value[0] for c in parsed.instructions("retrain") if c.cmd == "RUN"]
    assert any("retrain.prefetch" in run for run in retrain_runs)
    serve_runs = " ".join(c.value[0] for c in parsed.instructions("serve") if c.cmd == "RUN")
    assert re.findall(r"\.\[([\w,${}]+)\]", serve_runs) == ["serve"]  # the project's extras: serve only


def test_every_copy_source_exists_and_is_in_the_build_context(parsed: Dockerfile) -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in patterns if line and not line.startswith("#")]
    sources = [
        source
        for stage in parsed.stages.values()
        for command in stage.instructions
        if command.cmd == "COPY"
        for source in command.value[:-1]
    ]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY source {source} does not exist"
        assert not _docker_ignores(patterns, source), f"COPY source {source} is excluded by .dockerignore"
    for kept_out in (".venv", "models", ".git", "image_dirs", "bench/results", ".pytest_cache", "retrain/__pycache__"):
        assert _docker_ignores(patterns, kept_out), f".dockerignore lets {kept_out} into the build context"


def _docker_ignores(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").removeprefix("**/")
        anywhere = pattern.removeprefix("!").startswith("**/")
        names = [Path(c).name for c in candidates] if anywhere else candidates
        if any(fnmatch.fnmatch(name, glob) for name in names):
            ignored = not negated
    return ignored


# --- compose ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_compose() -> str:
    return debian_tool("docker-compose", "docker-compose")


def compose_config(docker_compose: str, *files: Path) -> dict:
    arguments = [item for file in files for item in ("-f", str(file))]
    result = subprocess.run([docker_compose, *arguments, "config"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_validates_and_wires_the_two_services(docker_compose: str) -> None:
    config = compose_config(docker_compose, COMPOSE)
    retrain, serve = config["services"]["retrain"], config["services"]["serve"]
    assert retrain["build"]["target"] == "retrain" and serve["build"]["target"] == "serve"
    assert retrain["restart"] == "no" and "job" in retrain["profiles"]  # one-shot, not started by `up`
    assert {volume.split(":")[1] for volume in retrain["volumes"]} == {"/data", "/models", "/cache"}
    assert f"{REPO}/models:/models:ro" in serve["volumes"]
    assert [(port["published"], port["target"]) for port in serve["ports"]] == [(8501, 8501)]
    assert "/readyz" in " ".join(serve["healthcheck"]["test"])
    assert serve["restart"] == "unless-stopped"
    assert serve["environment"]["SERVE_MODEL_DIR"] == "/models/latest"
    assert "deploy" not in retrain, "the base compose file must run on a CPU-only host"


def test_gpu_override_validates_and_only_adds_the_gpu(docker_compose: str) -> None:
    config = compose_config(docker_compose, COMPOSE, COMPOSE_GPU)
    retrain = config["services"]["retrain"]
    devices = retrain["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert retrain["build"]["args"]["EXTRAS"] == "train,gpu"
    assert "deploy" not in config["services"]["serve"]


def test_compose_validation_rejects_a_broken_file(docker_compose: str, tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("restart: unless-stopped", "restart: unless-stopped\n    sevrice: 1"))
    result = subprocess.run([docker_compose, "-f", str(broken), "config", "-q"], capture_output=True, text=True)
    assert result.returncode != 0 and "sevrice" in result.stderr


# --- the targets, replayed ------------------------------------------------------------------------


def build(parsed: Dockerfile, target: str, root: Path) -> Image:
    try:
        return replay(parsed, target, REPO, root)
    except ReplayError as e:
        if NO_INDEX.search(e.output):
            pytest.skip(
                f"the {target} image's pip install cannot reach a package index here: {NO_INDEX.search(e.output)[0]}"
            )
        raise


@pytest.fixture(scope="module")
def retrain_image(parsed: Dockerfile, tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build(parsed, "retrain", tmp_path_factory.mktemp("retrain-image"))


def retrain_in_image(image: Image, data: str, labels: list[str]) -> subprocess.CompletedProcess:
    """`docker run -v <folders>:/data/<set> -v $PWD/models:/models retrain --image_dir /data/<set> ...`"""
    copy_digits(image.path(f"/data/{data}"), labels, per_class=20)
    command = image.command("--image_dir", f"/data/{data}", "--how_many_training_steps", "100")
    return subprocess.run(command, cwd=image.workdir, env=image.env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def retrain_run(retrain_image: Image) -> subprocess.CompletedProcess:
    weights = Path(retrain_image.env["RETRAIN_WEIGHTS_DIR"])
    baked = {path: path.stat().st_mtime_ns for path in weights.iterdir()}
    result = retrain_in_image(retrain_image, "digits", ["0", "1", "7"])
    assert {path: path.stat().st_mtime_ns for path in weights.iterdir()} == baked, "retrain touched the baked weights"
    return result


def test_retrain_image_bakes_converted_weights(retrain_image: Image) -> None:
    weights = Path(retrain_image.env["RETRAIN_WEIGHTS_DIR"])
    assert (weights / "efficientnet_lite0_imagenet.weights.h5").stat().st_size > 10_000_000


def test_retrain_image_imports_tf_hub_and_every_backbone_module(retrain_image: Image) -> None:
    """TF Hub and the Keras applications load only on request; a missing runtime dependency of
    theirs (tensorflow-hub needs setuptools' pkg_resources) would otherwise surface only for users."""
    python = retrain_image.path("/opt/venv/bin/python")
    modules = "import tensorflow_hub, retrain.backbones.tfhub, retrain.backbones.keras_apps, retrain.prefetch"
    result = subprocess.run([python, "-c", modules], env=retrain_image.env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_retrain_image_default_cmd_prints_help(retrain_image: Image) -> None:
    result = subprocess.run(retrain_image.command(), env=retrain_image.env, capture_output=True, text=True)
    assert result.returncode == 0 and "--image_dir" in result.stdout


def test_retrain_image_trains_and_exports_into_the_models_volume(retrain_run, retrain_image: Image) -> None:
    result = retrain_run
    assert result.returncode == 0, result.stderr
    assert "Final test accuracy" in result.stdout
    latest = retrain_image.path("/models/latest")
    assert (latest / "model.json").is_file() and (latest / "model.tflite").is_file()
    assert any(retrain_image.path("/cache/bottlenecks").rglob("*.npy")), "bottlenecks not in the /cache volume"


@pytest.fixture(scope="module")
def serve_image(
    parsed: Dockerfile, retrain_run, retrain_image: Image, tmp_path_factory: pytest.TempPathFactory
) -> Image:
    """The serve image with the retrain image's /models mounted, as in docker-compose.yml."""
    image = build(parsed, "serve", tmp_path_factory.mktemp("serve-image"))
    image.path("/models").rmdir()
    image.path("/models").symlink_to(retrain_image.path("/models"))
    return image


def test_serve_image_has_no_tensorflow_and_stays_small(serve_image: Image) -> None:
    python = serve_image.path("/opt/venv/bin/python")
    probe = "import importlib.util as u; print([m for m in ('tensorflow', 'keras', 'torch') if u.find_spec(m)])"
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"
    venv = serve_image.path("/opt/venv")
    size = sum(file.lstat().st_size for file in venv.rglob("*"))
    assert size < 300 * 2**20, f"the serve image's packages take {size / 2**20:.0f} MB (README says about 200 MB)"


@pytest.fixture(scope="module")
def serving(serve_image: Image) -> Iterator[str]:
    """`docker run -p 8501:8501 -v $PWD/models:/models:ro serve --host 127.0.0.1` -> its URL."""
    port = _free_port(preferred=8501)
    command = serve_image.command("--host", "127.0.0.1", "--port", str(port))
    log = serve_image.root / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=serve_image.workdir, env=serve_image.env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while process.poll() is None and not _ready(url) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        assert process.poll() is None and _ready(url), log.read_text()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_serve_image_answers_a_request_and_passes_its_healthcheck(serving: str, serve_image: Image) -> None:
    answer = httpx.post(f"{serving}/predict", files={"file": _digit("7")}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] == "7"
    port = serving.rsplit(":", 1)[1]
    healthcheck = serve_image.argv([part.replace(":8501/", f":{port}/") for part in serve_image.healthcheck])
    assert subprocess.run(healthcheck, env=serve_image.env, capture_output=True, timeout=30).returncode == 0


def test_swapping_folders_and_retraining_is_served_without_restart(
    serving: str, serve_image: Image, retrain_image: Image
) -> None:
    """`docker compose run --rm retrain --image_dir /data/other` while `serve` runs."""
    result = retrain_in_image(retrain_image, "other", ["2", "5"])
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 60
    while httpx.get(f"{serving}/labels", timeout=10).json()["labels"] != ["2", "5"]:
        assert time.monotonic() < deadline, (serve_image.root / "serve.log").read_text()
        time.sleep(0.2)
    answer = httpx.post(f"{serving}/predict", files={"file": _digit("5")}, timeout=60)
    assert answer.json()["predictions"][0]["label"] == "5"


def _digit(label: str) -> bytes:
    """A digit outside the first 20 of its class, so none the image trained on."""
    return sorted((DIGITS / label).glob("*.png"))[-1].read_bytes()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _free_port(preferred: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
