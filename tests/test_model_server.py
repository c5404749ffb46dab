"""The model server as issue 24 asks for it, end to end with the installed `serve` command.

Exports `low` (digits 0-4), `high` (5-9), then `low` again give models/low/1, models/high/1 and
models/low/2. One `serve --models_dir models` answers both by name with their own labels, reports
low's version 2 AVAILABLE, rolls back to 1 when models/low/2 is removed, refuses a broken version and
keeps the previous, serves a model folder added while it runs, 404s an unknown name, and labels
/metrics by model: every change made while clients keep asking, none of whose requests may fail.
Then the same folder through TF Serving's --model_config_file (policies, version labels, SIGHUP).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import DIGITS, Server, copy_digits, start_serve, wait_for

SERVE_SCRIPT = [str(Path(sys.executable).with_name("serve"))]  # the console script, as a user types it
LOW, HIGH = [str(d) for d in range(5)], [str(d) for d in range(5, 10)]


def digit(label: str) -> bytes:
    return sorted((DIGITS / label).glob("*.png"))[-1].read_bytes()  # the last file: never in a 20-image copy


@pytest.fixture(scope="module")
def models(digits_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/low/1, models/high/1, models/low/2: three retrain runs on the demo's cache, network and feature set."""
    from retrain.pipeline import RetrainConfig, run
    from retrain.train import HParams

    result, _, root = digits_run
    demo = json.loads((result.output_dir / "model.json").read_text())
    features, network = demo["bottlenecks"]["features"], demo["backbone"].split("@")[0]
    folder = tmp_path_factory.mktemp("model_server")
    for name, labels in (("low", LOW), ("high", HIGH), ("low", LOW)):
        images = folder / "images" / name
        if not images.exists():
            copy_digits(images, labels, per_class=20)
        config = RetrainConfig(
            image_dir=str(images),
            models_dir=str(folder / "models"),
            bottleneck_dir=str(root / "cache"),
            architecture=network,  # with 20 images a class auto would also score Lite2, and may pick it
            bottleneck_layers=features,
            hparams=HParams(how_many_training_steps=200),
        )
        with contextlib.redirect_stdout(io.StringIO()):
            run(config)
    return folder / "models"


def test_exports_are_numbered_versions_under_their_folder_names(models: Path) -> None:
    assert sorted(p.name for p in (models / "low").iterdir()) == ["1", "2"]
    assert sorted(p.name for p in (models / "high").iterdir()) == ["1"]
    digests = {json.loads((models / v / "model.json").read_text())["shared_backbone"]["digest"]
               for v in ("low/1", "low/2", "high/1")}  # fmt: skip
    assert len(digests) == 1  # one backbone, three heads


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The installed `serve`, run in a folder holding a copy of models/, with no model flag at all."""
    here = tmp_path_factory.mktemp("served")
    shutil.copytree(models, here / "models", symlinks=True)
    running = start_serve(["--poll_seconds", "0.3"], here / "serve.log", command=SERVE_SCRIPT, cwd=here)
    yield running
    running.stop()


def models_dir(server: Server) -> Path:
    return server.log_path.parent / "models"


def status(client: httpx.Client, name: str) -> dict[int, tuple[str, str]]:
    answer = client.get(f"/v1/models/{name}")
    assert answer.status_code == 200, answer.text
    return {int(v["version"]): (v["state"], v["status"]["error_code"]) for v in answer.json()["model_version_status"]}


def predict(client: httpx.Client, path: str, label: str) -> httpx.Response:
    return client.post(
        f"/v1/models/{path}:predict", json={"instances": [{"b64": base64.b64encode(digit(label)).decode()}]}
    )


class Clients:
    """Threads asking `low` and `high` without pause while a test changes the models folder; every
    answer is kept: (model, status, version that answered, top-1 label, thread)."""

    def __init__(self, server: Server, threads: int = 4):
        self.answers: list[tuple[str, int | str, str | None, str | None, int]] = []
        self._server, self._stop, self._lock = server, threading.Event(), threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        wait_for(lambda: len(self.answers) >= 8, "the first answers")
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _loop(self, worker: int) -> None:
        name, label = ("low", "3") if worker % 2 == 0 else ("high", "8")
        with self._server.client() as client:
            while not self._stop.is_set():
                try:
                    response = predict(client, name, label)
                    body = response.json()
                    top = body["predictions"][0] if response.status_code == 200 else None
                    version = body["model_spec"]["version"] if top else None
                    top1 = (
                        top["classes"][max(range(len(top["scores"])), key=top["scores"].__getitem__)] if top else None
                    )
                    answer = (name, response.status_code, version, top1, worker)
                except Exception as e:
                    answer = (name, f"{type(e).__name__}: {e}", None, None, worker)
                with self._lock:
                    self.answers.append(answer)

    def more(self, count: int = 8) -> None:
        """Returns once `count` more answers came in."""
        seen = len(self.answers)
        wait_for(lambda: len(self.answers) >= seen + count, f"{count} more answers")

    def failures(self) -> list[tuple]:
        return [a for a in self.answers if a[1] != 200]

    def versions(self, name: str) -> set[tuple[str, ...]]:
        """The versions of `name` that answered each thread asking it, in order, repeats collapsed
        (one thread's requests follow one another; different threads' answers interleave)."""
        seen: dict[int, list[str]] = {}
        for model, _, version, _, worker in self.answers:
            order = seen.setdefault(worker, [])
            if model == name and version and (not order or order[-1] != version):
                order.append(version)
        return {tuple(order) for order in seen.values() if order}


def put_version(source: Path, target: Path) -> None:
    """A version folder appearing atomically, as retrain writes one: a hidden copy renamed into place."""
    staging = target.with_name(f".{target.name}.partial")
    shutil.copytree(source, staging)
    os.rename(staging, target)


def test_one_server_answers_both_models_by_name_with_their_own_labels(server: Server) -> None:
    with server.client() as client:
        low, high = predict(client, "low", "3").json(), predict(client, "high", "8").json()
        assert status(client, "low") == {2: ("AVAILABLE", "OK")}  # version 1 was never chosen, so never loaded
        assert status(client, "high") == {1: ("AVAILABLE", "OK")}
        unknown = client.get("/v1/models/nope")
        unknown_predict = predict(client, "nope", "3")
        several = client.post("/predict", files={"file": ("3.png", digit("3"))})
        chosen = client.post("/predict?model=high", files={"file": ("8.png", digit("8"))})
        ready = client.get("/readyz").json()
    assert set(low["predictions"][0]["classes"]) == set(LOW) and low["model_spec"] == {"name": "low", "version": "2"}
    assert set(high["predictions"][0]["classes"]) == set(HIGH) and high["model_spec"] == {
        "name": "high",
        "version": "1",
    }
    assert (unknown.status_code, unknown_predict.status_code) == (404, 404)
    assert "'nope' not found" in unknown.json()["error"] and set(unknown_predict.json()) == {"error"}
    assert several.status_code == 400 and "name one with ?model=" in several.json()["error"]
    assert chosen.json()["predictions"][0]["label"] == "8" and chosen.json()["model_spec"]["name"] == "high"
    assert [(m["name"], m["version"]) for m in ready["models"]] == [("high", 1), ("low", 2)]


def test_rollback_when_the_served_version_folder_is_removed(server: Server) -> None:
    root = models_dir(server)
    with server.client() as client, Clients(server) as clients:
        shutil.rmtree(root / "low" / "2")
        wait_for(lambda: status(client, "low").get(1) == ("AVAILABLE", "OK"), "low to roll back to version 1")
        clients.more()
        assert 2 not in [v for v, (state, _) in status(client, "low").items() if state == "AVAILABLE"]
    assert clients.failures() == []
    assert clients.versions("low") == {("2", "1")} and clients.versions("high") == {("1",)}
    assert {top1 for name, _, _, top1, _ in clients.answers if name == "low"} == {"3"}


def test_a_new_version_is_served_and_a_broken_one_refused_under_load(server: Server) -> None:
    root = models_dir(server)
    with server.client() as client, Clients(server) as clients:
        put_version(root / "low" / "1", root / "low" / "3")
        wait_for(lambda: status(client, "low").get(3) == ("AVAILABLE", "OK"), "low version 3")
        clients.more()
        broken = root / "high" / ".2.partial"
        shutil.copytree(root / "high" / "1", broken)
        (broken / "model.tflite").write_bytes((broken / "model.tflite").read_bytes()[:4096])
        os.rename(broken, root / "high" / "2")
        wait_for(lambda: status(client, "high").get(2, ("",))[0] == "END", "high version 2 to be refused")
        clients.more()
    assert clients.failures() == []
    assert {order[-1] for order in clients.versions("low")} == {"3"} and clients.versions("high") == {("1",)}
    with server.client() as client:
        assert status(client, "high") == {2: ("END", "INVALID_ARGUMENT"), 1: ("AVAILABLE", "OK")}
        (refused,) = client.get("/readyz").json()["refused"]
    assert refused["name"] == "high" and refused["version"] == 2 and "model.tflite cannot be run" in refused["error"]
    assert "model high version 2 refused, still serving 1" in server.log()


def test_a_model_folder_added_while_running_is_served(server: Server) -> None:
    root = models_dir(server)
    with server.client() as client, Clients(server) as clients:
        staging = root / ".upper"
        (staging / "1").parent.mkdir()
        shutil.copytree(root / "high" / "1", staging / "1")
        os.rename(staging, root / "upper")
        wait_for(lambda: client.get("/v1/models/upper").status_code == 200, "the new model")
        wait_for(lambda: status(client, "upper") == {1: ("AVAILABLE", "OK")}, "upper version 1")
        answer = predict(client, "upper", "6").json()
        clients.more()
    assert clients.failures() == []
    assert answer["model_spec"] == {"name": "upper", "version": "1"}
    assert set(answer["predictions"][0]["classes"]) == set(HIGH)


def test_metrics_are_labelled_by_model_and_the_backbone_is_shared(server: Server) -> None:
    with server.client() as client:
        predict(client, "low", "2")
        predict(client, "high", "7")
        text = client.get("/metrics").text
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    for name in ("low", "high"):
        assert any(line.startswith("serve_requests_total{") and f'model="{name}"' in line for line in samples), name
        assert any(line.startswith("serve_model_versions_available{") and f'model="{name}"' in line for line in samples)
    runners = {line.split('runner="')[1].split('"')[0] for line in samples if line.startswith("serve_batch_size_count")}
    assert len(runners) == 1 and runners.pop().startswith("backbone-")  # one backbone runs for every model


def test_cli_predict_names_a_model_and_version(models: Path) -> None:
    def ask(*args: str) -> subprocess.CompletedProcess:
        command = [*SERVE_SCRIPT, "--models_dir", str(models), "predict", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    image = models.parent / "three.png"
    image.write_bytes(digit("3"))
    several = ask(str(image))
    low = ask("--model_name", "low", "--json", str(image))
    first = ask("--model_name", "low", "--version", "1", "--json", str(image))
    missing = ask("--model_name", "low", "--version", "9", str(image))
    assert several.returncode == 2 and "name one with --model_name: high, low" in several.stderr
    assert json.loads(low.stdout)["model_spec"] == {"name": "low", "version": "2"}
    assert json.loads(first.stdout)["model_spec"] == {"name": "low", "version": "1"}
    assert json.loads(first.stdout)["predictions"][0]["label"] == "3"
    assert missing.returncode == 2 and "has no version 9 (versions: 1, 2)" in missing.stderr


CONFIG = """
# TF Serving's model_config_list, as its documentation writes one
model_config_list {
  config {
    name: 'low'
    base_path: 'models/low'
    model_platform: 'tensorflow'
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: 'stable' value: 1 }
    version_labels { key: 'canary' value: 2 }
  }
  config {
    name: 'high'
    base_path: 'models/high'
    model_platform: 'tensorflow'
  }
}
"""


def test_a_tf_serving_model_config_file_with_policies_labels_and_sighup(models: Path, tmp_path: Path) -> None:
    shutil.copytree(models, tmp_path / "models", symlinks=True)
    config = tmp_path / "models.config"
    config.write_text(CONFIG)
    server = start_serve(
        ["--model_config_file", str(config), "--poll_seconds", "0"], tmp_path / "serve.log", SERVE_SCRIPT
    )
    try:
        with server.client() as client:
            assert status(client, "low") == {2: ("AVAILABLE", "OK"), 1: ("AVAILABLE", "OK")}
            stable, canary = predict(client, "low/labels/stable", "3"), predict(client, "low/labels/canary", "3")
            by_number = predict(client, "low/versions/1", "3")
            assert stable.json()["model_spec"]["version"] == by_number.json()["model_spec"]["version"] == "1"
            assert canary.json()["model_spec"]["version"] == "2"
            assert predict(client, "low/labels/nope", "3").status_code == 404
            assert predict(client, "low", "3").json()["model_spec"]["version"] == "2"  # the highest available

            config.write_text(
                CONFIG.replace("versions: 1 versions: 2", "versions: 1").split("config {\n    name: 'high'")[0] + "}\n"
            )
            assert client.get("/v1/models/high").status_code == 200  # --poll_seconds 0: nothing until SIGHUP
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: client.get("/v1/models/high").status_code == 404, "high to be unloaded after SIGHUP")
            wait_for(lambda: status(client, "low").get(2, ("",))[0] == "END", "low version 2 to be unloaded")
            assert status(client, "low")[1] == ("AVAILABLE", "OK")

            config.write_text("model_config_list { config { name: 'low' }")  # broken: the models stay
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "cannot read the models to serve, keeping those served" in server.log(), "the error")
            assert status(client, "low")[1] == ("AVAILABLE", "OK")
    finally:
        server.stop()


def test_the_modes_and_their_precedence(models: Path, tmp_path: Path) -> None:
    """TF Serving's --model_name/--model_base_path, --model_dir, and the command line over the environment."""
    image = tmp_path / "eight.png"
    image.write_bytes(digit("8"))

    def ask(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        command = [*SERVE_SCRIPT, *args, "predict", "--json", str(image)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})

    base_path = ask("--model_name", "upper", "--model_base_path", str(models / "high"))
    named_by_folder = ask("--model_base_path", str(models / "high"))
    one_export = ask("--model_dir", str(models / "low" / "1"))
    environment_loses = ask("--models_dir", str(models), "--model_name", "high", env={"SERVE_MODEL_DIR": "/nowhere"})
    two_modes = ask("--models_dir", str(models), "--model_dir", str(models / "low" / "1"))
    assert json.loads(base_path.stdout)["model_spec"] == {"name": "upper", "version": "1"}
    assert json.loads(named_by_folder.stdout)["model_spec"] == {"name": "high", "version": "1"}
    assert json.loads(one_export.stdout)["model_spec"] == {"name": "retrained", "version": "1"}
    assert json.loads(environment_loses.stdout)["predictions"][0]["label"] == "8"
    assert two_modes.returncode == 2 and "give one of --model_dir and --models_dir, not both" in two_modes.stderr


def test_without_sharing_every_model_runs_its_own_model_tflite(models: Path, tmp_path: Path) -> None:
    flags = ["--models_dir", str(models), "--no_share_backbones"]
    server = start_serve(flags, tmp_path / "serve.log", SERVE_SCRIPT)
    try:
        with server.client() as client:
            low, high = predict(client, "low", "3").json(), predict(client, "high", "8").json()
            text = client.get("/metrics").text
    finally:
        server.stop()
    assert low["model_spec"] == {"name": "low", "version": "2"} and high["model_spec"] == {
        "name": "high",
        "version": "1",
    }
    runners = {
        line.split('runner="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("serve_batch_size_count")
    }
    assert runners == {"low", "high"}
