"""The images, built from the Dockerfile by a real engine and run the way the README runs them.

    docker build --target retrain -t retrain .      docker build --target serve -t serve .
    docker run -v $PWD/image_dirs:/data:ro -v $PWD/models:/models retrain --image_dir /data/digits
    docker run -p 8501:8501 -v $PWD/models:/models:ro serve

Both containers run as the images' user, uid 1000, on host folders mounted as volumes; serve is
reached through a published port on 127.0.0.1 and answers for every model in /models by the name of
the image folder it was trained on (/models/<name>/<version>/). With a token file mounted, the serve
container also trains (its job API), without TensorFlow. tests/oci.py finds or installs the engine
and makes the base image where Docker Hub is out of reach.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import stat
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from retrain.images import discover
from serve.preprocess import preprocess
from serve.runtime import load_model

from .conftest import DIGITS, REPO, copy_digits
from .oci import Engine, compose_command, find_engine, python_image, wait_until
from .test_jobs import LOW, digits_zip

IMAGES = ("retrain", "serve")  # the README's tags
USER = 1000  # the images' user; the volumes it writes must be its own
TIMEOUT = 60


@dataclass
class Volumes:
    """Host folders for one deployment: image folders (mounted read-only), models, bottleneck cache."""

    data: Path
    models: Path
    cache: Path

    @classmethod
    def make(cls, root: Path, data: Path) -> Volumes:
        volumes = cls(data, root / "models", root / "cache")
        for folder in (volumes.models, volumes.cache):
            folder.mkdir(parents=True)
            _give_to_image_user(folder)
        return volumes

    def mounts(self) -> list[str]:
        return [
            "--volume",
            f"{self.data}:/data:ro",
            "--volume",
            f"{self.models}:/models",
            "--volume",
            f"{self.cache}:/cache",
        ]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return find_engine(tmp_path_factory.mktemp("engine"))


@pytest.fixture(scope="module")
def images(engine: Engine) -> dict[str, float]:
    """Builds both targets (serve first: it is quick) and returns each build's seconds."""
    base = python_image(engine)
    return {target: engine.build(target, target, base) for target in ("serve", "retrain")}


def retrain(engine: Engine, volumes: Volumes, *flags: str) -> subprocess.CompletedProcess:
    """`docker run --rm <volumes> retrain <flags>`."""
    return engine("run", "--rm", *volumes.mounts(), "retrain", *flags, check=False, timeout=900)


@contextmanager
def serve_container(engine: Engine, models: Path, *options: str, mode: str = "ro") -> Iterator[Container]:
    """`docker run -d -p 127.0.0.1:<port>:8501 -v <models>:/models:ro <options> serve`, removed afterwards."""
    name = f"retrain-test-serve-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    engine(
        "run",
        "--detach",
        "--name",
        name,
        "--publish",
        f"127.0.0.1:{port}:8501",
        "--volume",
        f"{models}:/models:{mode}",
        *options,
        "serve",
    )
    container = Container(engine, name, f"http://127.0.0.1:{port}")
    try:
        wait_until(container.answers, f"the serve container to answer /healthz\n{container.logs()}")
        yield container
    finally:
        engine.remove(name)


@dataclass
class Container:
    engine: Engine
    name: str
    url: str

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/readyz", timeout=TIMEOUT).status_code == 200

    def served(self) -> dict[str, int]:
        """Each model /readyz lists -> the version that answers for it; {} while none is loaded."""
        try:
            answer = httpx.get(f"{self.url}/readyz", timeout=TIMEOUT)
        except httpx.TransportError:
            return {}
        return {m["name"]: m["version"] for m in answer.json()["models"]} if answer.status_code == 200 else {}

    def predict(self, model: str, image: bytes) -> dict:
        """TF Serving's `POST /v1/models/<model>:predict` of one image."""
        body = {"instances": [{"b64": base64.b64encode(image).decode()}]}
        answer = httpx.post(f"{self.url}/v1/models/{model}:predict", json=body, timeout=TIMEOUT)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def logs(self) -> str:
        result = self.engine("logs", self.name, check=False)
        return result.stdout + result.stderr

    def healthcheck(self) -> int:
        """The image's own HEALTHCHECK command, run now in the container (podman's timers need systemd)."""
        if self.engine.kind == "podman":
            return self.engine("healthcheck", "run", self.name, check=False).returncode
        test = self.engine.healthcheck("serve")
        return self.engine("exec", self.name, *test[1:], check=False).returncode


# --- building -----------------------------------------------------------------------------------


def test_images_build_with_a_healthcheck_and_the_user(engine: Engine, images: dict[str, float]) -> None:
    for target in IMAGES:
        config = engine.inspect(target)["Config"]
        assert config["User"] == f"{USER}:{USER}" and config["Entrypoint"] == [target]
    assert engine.healthcheck("serve") == ["CMD", "python", "-m", "serve.healthcheck"]


def test_serve_image_is_small_and_holds_no_tensorflow_or_pip(engine: Engine, images) -> None:
    probe = "import importlib.util as u; print([m for m in ('tensorflow', 'keras', 'torch', 'pip') if u.find_spec(m)])"
    result = engine("run", "--rm", "--entrypoint", "python", "serve", "-c", probe)
    assert result.stdout.strip() == "[]"
    venv = engine("run", "--rm", "--entrypoint", "du", "serve", "-s", "--block-size=1", "/opt/venv").stdout
    # 149.4 MiB for serving alone; the `jobs` extra (training in this container) adds EfficientNet-Lite0's
    # and Lite2's ImageNet weights, 18.0 + 23.5 MiB: 191.2 MiB measured (2026-12-07); the page's in-browser
    # runtime (MediaPipe Tasks for Web, gzip-compressed) 6.7 MB more: 197.7 MiB measured, the line a little above.
    assert int(venv.split()[0]) < 200 * 2**20, f"serve's environment grew to {int(venv.split()[0]) / 2**20:.0f} MiB"


def test_retrain_in_the_serve_image_says_what_it_lacks(engine: Engine, images) -> None:
    result = engine("run", "--rm", "--entrypoint", "retrain", "serve", "--image_dir", "/data", check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no module named 'tensorflow'" in lines[0] and "retrain[train]" in lines[0]


def test_retrain_image_prints_help_and_imports_every_backbone(engine: Engine, images) -> None:
    """TF Hub and the Keras applications load only on request; a missing dependency of theirs
    (tensorflow-hub needs setuptools' pkg_resources) would otherwise surface only for users."""
    assert "--image_dir" in engine("run", "--rm", "retrain").stdout
    modules = (
        "import tensorflow_hub, retrain.backbones.tfhub, retrain.backbones.keras_apps, "
        "retrain.backbones.efficientnet_lite, retrain.backbones.scratch, retrain.tensorflow_export"
    )
    engine("run", "--rm", "--entrypoint", "python", "retrain", "-c", modules)


# --- retrain, then serve what it wrote ----------------------------------------------------------


@pytest.fixture(scope="module")
def deployment(images, tmp_path_factory: pytest.TempPathFactory) -> Volumes:
    return Volumes.make(tmp_path_factory.mktemp("deployment"), REPO / "image_dirs")


@pytest.fixture(scope="module")
def digits_job(engine: Engine, deployment: Volumes) -> subprocess.CompletedProcess:
    """The README's job: all bundled digits, default flags, the image folders read-only."""
    before = _listing(DIGITS)
    result = retrain(engine, deployment, "--image_dir", "/data/digits")
    assert _listing(DIGITS) == before, "retrain changed the image folders"
    return result


def test_retrain_exports_into_the_models_volume_as_the_image_user(digits_job, deployment: Volumes) -> None:
    assert digits_job.returncode == 0, digits_job.stderr[-3000:]
    accuracy = float(re.search(r"Final test accuracy = ([\d.]+)%", digits_job.stdout)[1])
    assert accuracy >= 85.0
    assert "with LiteRT" in digits_job.stdout, "the CPU image should extract with LiteRT"
    assert "converting" not in digits_job.stderr, "the image should hold its converted weights and feature model"
    # TF Serving's layout: the model is named after the image folder, its first version is 1.
    export = deployment.models / "digits" / "1"
    assert {"model.json", "model.tflite", "labels.txt"} <= {p.name for p in export.iterdir()}
    latest = deployment.models / "latest"
    assert latest.is_symlink() and os.readlink(latest) == "digits/1", "latest must work outside the container"
    written = [*deployment.models.rglob("*"), *deployment.cache.rglob("*")]
    assert any(p.suffix == ".npy" for p in written), "no bottleneck reached the cache volume"
    for path in written:
        info = path.lstat()
        assert info.st_uid == USER or os.geteuid() != 0, f"{path} is owned by uid {info.st_uid}"
        assert stat.S_ISLNK(info.st_mode) or info.st_mode & stat.S_IROTH, f"{path} is private to its owner"


@pytest.fixture(scope="module")
def serving(engine: Engine, deployment: Volumes, digits_job) -> Iterator[Container]:
    with serve_container(engine, deployment.models) as container:
        wait_until(container.ready, f"the model to load\n{container.logs()}")
        yield container


def test_serve_answers_every_test_digit_as_the_exported_model_does(serving: Container, deployment: Volumes) -> None:
    """By the model's name (its image folder's): `/predict?model=digits` and `/v1/models/digits:predict`."""
    assert serving.served() == {"digits": 1}
    model = load_model(deployment.models / "digits" / "1")
    image_set = discover(DIGITS)
    paths = [example.path for example in image_set.splits["testing"]]
    truth = [image_set.labels[example.label_index] for example in image_set.splits["testing"]]
    expected = [model.labels[int(np.argmax(model.runners[0].scores(_pixels(model, p)[None])[0]))] for p in paths]
    with httpx.Client(base_url=serving.url, timeout=TIMEOUT) as client:
        uploaded = [client.post("/predict?model=digits", files={"file": p.read_bytes()}).json() for p in paths]
        assert [answer["predictions"][0]["label"] for answer in uploaded] == expected
        assert {(a["model_spec"]["name"], a["model_spec"]["version"]) for a in uploaded} == {("digits", "1")}
        batches = [paths[i : i + 32] for i in range(0, len(paths), 32)]
        answers = [
            client.post(
                "/v1/models/digits:predict",
                json={"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in batch]},
            ).json()
            for batch in batches
        ]
    assert all(answer["model_spec"] == {"name": "digits", "version": "1"} for answer in answers)
    rest = [prediction for answer in answers for prediction in answer["predictions"]]
    assert [row["classes"][int(np.argmax(row["scores"]))] for row in rest] == expected
    assert np.mean(np.array(expected) == np.array(truth)) >= 0.85


def test_serve_container_passes_its_own_healthcheck(serving: Container) -> None:
    assert serving.healthcheck() == 0, serving.logs()


def test_a_retrain_on_other_folders_is_served_beside_the_first_without_a_restart(
    engine: Engine, serving: Container, deployment: Volumes, tmp_path: Path
) -> None:
    """`docker compose run --rm retrain --image_dir /data/twofive` while `serve` runs: a second model,
    named after its folder, served by the same container beside `digits`."""
    started = engine.inspect(serving.name)["State"]["StartedAt"]
    data = tmp_path / "other"
    copy_digits(data / "twofive", ["2", "5"], per_class=20)
    other = Volumes(data, deployment.models, deployment.cache)
    result = retrain(engine, other, "--image_dir", "/data/twofive", "--how_many_training_steps", "200")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (deployment.models / "twofive" / "1" / "model.tflite").is_file()
    wait_until(lambda: serving.served() == {"digits": 1, "twofive": 1}, f"serve to load twofive\n{serving.logs()}")
    labels = httpx.get(f"{serving.url}/labels", params={"model": "twofive"}, timeout=TIMEOUT).json()["labels"]
    assert labels == ["2", "5"]
    answer = httpx.post(f"{serving.url}/predict?model=twofive", files={"file": _unseen_digit("5")}, timeout=TIMEOUT)
    assert answer.json()["predictions"][0]["label"] == "5"
    assert answer.json()["model_spec"] == {"name": "twofive", "version": "1"}
    digits = serving.predict("digits", _unseen_digit("7"))
    assert digits["model_spec"]["name"] == "digits" and len(digits["predictions"][0]["classes"]) == 10
    # With two models, an upload must name one: a 400 that lists them.
    unnamed = httpx.post(f"{serving.url}/predict", files={"file": _unseen_digit("5")}, timeout=TIMEOUT)
    assert unnamed.status_code == 400 and "digits" in unnamed.text and "twofive" in unnamed.text
    assert engine.inspect(serving.name)["State"]["StartedAt"] == started


# --- what goes wrong ------------------------------------------------------------------------------


def test_a_models_volume_the_image_user_cannot_write_is_one_clear_error(engine: Engine, images, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a folder the container's user cannot write")
    volumes = Volumes(copy_digits(tmp_path / "data", ["0", "1"], per_class=5), tmp_path / "models", tmp_path / "cache")
    volumes.models.mkdir()  # root's, mode 0755: uid 1000 cannot write it
    volumes.cache.mkdir()
    _give_to_image_user(volumes.cache)
    result = retrain(engine, volumes, "--image_dir", "/data")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retrain: error: ") and "/models" in lines[0], result.stderr
    assert not any(volumes.models.iterdir())


def test_serve_without_a_model_waits_until_retrain_writes_one(engine: Engine, images, tmp_path: Path) -> None:
    copy_digits(tmp_path / "data" / "zero_one", ["0", "1"], per_class=15)
    volumes = Volumes.make(tmp_path, tmp_path / "data")
    with serve_container(engine, volumes.models) as container:
        assert httpx.get(f"{container.url}/readyz", timeout=TIMEOUT).status_code == 503
        assert (
            httpx.post(f"{container.url}/predict", files={"file": _unseen_digit("1")}, timeout=TIMEOUT).status_code
            == 503
        )
        assert container.healthcheck() != 0
        result = retrain(engine, volumes, "--image_dir", "/data/zero_one", "--how_many_training_steps", "100")
        assert result.returncode == 0, result.stderr[-3000:]
        wait_until(container.ready, f"serve to load the first model\n{container.logs()}")
        assert container.served() == {"zero_one": 1}
        assert container.healthcheck() == 0
        # The only model served: an upload may leave its name out.
        answer = httpx.post(f"{container.url}/predict", files={"file": _unseen_digit("1")}, timeout=TIMEOUT)
        assert answer.json()["predictions"][0]["label"] == "1"
        assert answer.json()["model_spec"] == {"name": "zero_one", "version": "1"}


# --- training through the serve container ------------------------------------------------------------

ADMIN_TOKEN = "container-test-token-0123456789"
TOKEN_FILE = "/run/secrets/admin_token"  # where compose's secret lands, as docker-compose.yml says
FEATURE_MODELS = "/opt/retrain/feature_models"  # the serve image's RETRAIN_FEATURE_MODELS_DIR


def test_a_job_through_the_serve_container_trains_without_tensorflow_and_is_served(
    engine: Engine, images, tmp_path: Path
) -> None:
    """`docker run -v $PWD/models:/models -v $PWD/admin_token:/run/secrets/admin_token:ro
    -e SERVE_ADMIN_TOKEN_FILE=/run/secrets/admin_token serve`: a zip of digits 0-4 posted with the
    token becomes model `low` version 1, trained in the container without TensorFlow on feature
    models the image holds, and served by that container at once."""
    prebuilt = engine("run", "--rm", "--entrypoint", "ls", "serve", FEATURE_MODELS).stdout.split()
    assert len(prebuilt) == 2 and all(name.endswith(".tflite") for name in prebuilt), prebuilt  # Lite0's, Lite2's
    models = tmp_path / "models"
    models.mkdir()
    _give_to_image_user(models)
    token = tmp_path / "admin_token"
    token.write_text(ADMIN_TOKEN + "\n")
    token.chmod(0o644)
    secret = ("--volume", f"{token}:{TOKEN_FILE}:ro", "--env", f"SERVE_ADMIN_TOKEN_FILE={TOKEN_FILE}")
    with serve_container(engine, models, *secret, mode="rw") as container:
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=container.url, timeout=TIMEOUT) as client:
            assert client.get("/v1/jobs").status_code == 401  # on, and guarded
            answer = client.post("/v1/models/low/jobs", files={"images": ("low.zip", digits_zip(LOW))},
                                 data={"how_many_training_steps": "200"}, headers=auth)  # fmt: skip
            assert answer.status_code == 202, answer.text
            job = answer.json()["job"]
            status = lambda: client.get(f"/v1/jobs/{job}", headers=auth).json()  # noqa: E731
            wait_until(lambda: status()["state"] not in ("queued", "running"), f"job {job} to end", timeout=600)
            done = status()
            log = (models / ".jobs" / job / "log.txt").read_text() if (models / ".jobs" / job).is_dir() else ""
            assert done["state"] == "succeeded", f"{done}\n{log[-3000:]}\n{container.logs()[-3000:]}"
            assert done["result"]["version"] == 1 and done["result"]["tensorflow_imported"] is False
            wait_until(lambda: container.served() == {"low": 1}, f"serve to load low/1\n{container.logs()}")
            three = base64.b64encode(_unseen_digit("3")).decode()
            ranked = client.post("/v1/models/low:classify", json={"examples": [{"b64": three}]}).json()
        assert ranked["result"][0][0][0] == "3" and ranked["model_spec"] == {"name": "low", "version": "1"}
    export = models / "low" / "1"
    assert {"model.json", "model.tflite", "labels.txt"} <= {p.name for p in export.iterdir()}
    assert (export / "labels.txt").read_text().split() == LOW
    # The bottlenecks went to the models volume's cache; the feature models they were computed
    # with (auto's, for both backbones) came from the image, not written by the job.
    cache = models / ".cache" / "bottlenecks"
    assert any(p.suffix == ".npy" for p in cache.rglob("*")), "no bottleneck reached the models volume"
    written = {p.name for p in (cache / "feature_models").glob("*.tflite")}
    assert not written & set(prebuilt), f"the job wrote the feature models the image holds: {written}"


# --- helpers ----------------------------------------------------------------------------------------


def _give_to_image_user(folder: Path) -> None:
    """As the README says: the folder a container writes must be writable by uid 1000."""
    if os.geteuid() == 0:
        os.chown(folder, USER, USER)
    else:  # a rootless engine maps uid 1000 elsewhere
        folder.chmod(0o777)


def _pixels(model, path: Path) -> np.ndarray:
    return preprocess(path.read_bytes(), model.info.input_spec)


def _unseen_digit(label: str) -> bytes:
    """A digit outside the first 20 of its class, which the small jobs train on."""
    return sorted((DIGITS / label).glob("*.png"))[-1].read_bytes()


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- docker-compose.yml, for real ------------------------------------------------------------------


@dataclass
class ComposeProject:
    """A copy of docker-compose.yml in a folder of its own, with its ./image_dirs and ./models."""

    engine: Engine
    folder: Path
    name: str
    port: int

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        command = [*compose_command(self.engine), "--project-name", self.name, *args]
        env = {**self.engine.env, "SERVE_PUBLISHED_PORT": str(self.port)}
        result = subprocess.run(command, cwd=self.folder, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def container(self, service: str) -> Container:
        labels = [f"label=com.docker.compose.project={self.name}", f"label=com.docker.compose.service={service}"]
        names = self.engine("ps", "--all", "--filter", labels[0], "--filter", labels[1], "--format", "{{.Names}}")
        return Container(self.engine, names.stdout.split()[0], f"http://127.0.0.1:{self.port}")


# The compose project's ./image_dirs: two sets of folders, each trained by its own `retrain` run.
COMPOSE_IMAGE_DIRS = {"digits": ["0", "1", "7"], "odd_digits": ["3", "5", "9"]}


@pytest.fixture
def compose_project(engine: Engine, images, tmp_path: Path) -> Iterator[ComposeProject]:
    shutil.copy(REPO / "docker-compose.yml", tmp_path)
    for name, labels in COMPOSE_IMAGE_DIRS.items():
        copy_digits(tmp_path / "image_dirs" / name, labels, per_class=20)
    (tmp_path / "models").mkdir()
    _give_to_image_user(tmp_path / "models")
    project = ComposeProject(engine, tmp_path, f"retrain-test-{uuid.uuid4().hex[:8]}", _free_port())
    try:
        yield project
    finally:
        project("down", "--volumes")


def test_compose_serves_two_image_folders_by_name_from_one_serve_and_restarts_it(
    compose_project: ComposeProject,
) -> None:
    """The README's compose story: `up -d serve`, then `run --rm retrain --image_dir /data/digits` and
    `--image_dir /data/odd_digits`; the one serve container answers both by their folders' names,
    with serve's healthcheck and its restart policy observed."""
    compose_project("up", "--detach", "--no-build", "serve")
    serve = compose_project.container("serve")
    wait_until(serve.answers, f"the compose serve to answer\n{serve.logs()}")
    assert httpx.get(f"{serve.url}/readyz", timeout=TIMEOUT).status_code == 503
    assert serve.healthcheck() != 0

    def train(image_dir: str) -> None:
        compose_project("--profile", "job", "run", "--rm", "retrain", "--image_dir", f"/data/{image_dir}",
                        "--how_many_training_steps", "100")  # fmt: skip

    train("digits")
    wait_until(serve.ready, f"serve to load the job's model\n{serve.logs()}")
    assert serve.healthcheck() == 0
    assert serve.served() == {"digits": 1}
    answer = httpx.post(f"{serve.url}/predict", files={"file": _unseen_digit("7")}, timeout=TIMEOUT)
    assert answer.json()["predictions"][0]["label"] == "7"

    train("odd_digits")  # another set of folders: a second model, not a replacement
    both = dict.fromkeys(COMPOSE_IMAGE_DIRS, 1)
    wait_until(lambda: serve.served() == both, f"serve to load odd_digits beside digits\n{serve.logs()}")
    models = compose_project.folder / "models"
    for name, labels in COMPOSE_IMAGE_DIRS.items():
        assert (models / name / "1" / "model.json").is_file()
        answer = serve.predict(name, _unseen_digit(labels[-1]))
        assert answer["model_spec"] == {"name": name, "version": "1"}
        (row,) = answer["predictions"]
        assert row["classes"] == labels and row["classes"][int(np.argmax(row["scores"]))] == labels[-1]
    unnamed = httpx.post(f"{serve.url}/predict", files={"file": _unseen_digit("7")}, timeout=TIMEOUT)
    assert unnamed.status_code == 400 and all(name in unnamed.text for name in COMPOSE_IMAGE_DIRS)

    state = lambda: serve.engine.inspect(serve.name)  # noqa: E731
    assert state()["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    if serve.engine.kind == "podman":
        assert state()["State"]["Health"]["Status"] == "healthy"
    # serve exits cleanly on SIGTERM; `unless-stopped` must bring it back, both models and all.
    serve.engine("exec", serve.name, "python", "-c", "import os, signal; os.kill(1, signal.SIGTERM)")
    wait_until(lambda: state()["RestartCount"] >= 1 and state()["State"]["Running"], "the restart policy")
    wait_until(lambda: serve.served() == both, f"serve to come back\n{serve.logs()}")
