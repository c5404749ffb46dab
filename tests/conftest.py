"""Shared fixtures: small real image sets made from the bundled digits, helpers to make bad files, and
a real `serve` process on 127.0.0.1 with a `models/` folder whose `latest` link can move."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from PIL import Image

from serve.preprocess import InputSpec, preprocess

if TYPE_CHECKING:
    from retrain.pipeline import RunResult

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "image_dirs" / "digits"
SERVE = [sys.executable, "-m", "serve"]
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TIMEOUT = 60  # seconds for any one HTTP request; CI is slow, a hung server must still fail


def copy_digits(destination: Path, labels: list[str], per_class: int | None = None) -> Path:
    """A copy of some digit classes (the first `per_class` files of each) under `destination`."""
    for label in labels:
        files = sorted((DIGITS / label).glob("*.png"))[:per_class]
        (destination / label).mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copy(file, destination / label / file.name)
    return destination


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """A real JPEG of random smooth colour, for tests that need photo-like files."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def digits_and_photos(spec: InputSpec) -> np.ndarray:
    """Ten real digits (one per class) and two photo-like JPEGs, preprocessed as retrain does: the
    images on which runtimes and builders of the same network are compared."""
    digits = [sorted((DIGITS / str(label)).glob("*.png"))[0].read_bytes() for label in range(10)]
    photos = [jpeg_bytes(640, 480, seed=seed) for seed in (1, 2)]
    return np.stack([preprocess(data, spec) for data in digits + photos])


@pytest.fixture(scope="module")
def backbone():
    """The default backbone, described (built on first use of `.model`), one per test module."""
    from retrain.backbones import load_backbone

    return load_backbone()


@pytest.fixture(scope="module")
def pixels(backbone) -> np.ndarray:
    """`digits_and_photos` for the default backbone."""
    return digits_and_photos(backbone.input_spec)


def export_vectors(export: Path, paths: list[Path]) -> np.ndarray:
    """The bottlenecks of `paths` as the export at `export` reads them (its backbone and chosen
    feature set), all from the run's cache: the reference its head is checked against."""
    from retrain.backbones import load_backbone
    from retrain.backbones.taps import feature_sets, tap_caches, tapped
    from retrain.cache import bottleneck_cache
    from retrain.extract import compute_bottlenecks

    info = json.loads((export / "model.json").read_text())
    network = load_backbone(info["backbone"].split("@", 1)[0])
    backbone = tapped(network, feature_sets(network)[info["bottlenecks"]["features"]])
    assert backbone.cache_id == info["backbone"]
    cache = bottleneck_cache(info["flags"]["bottleneck_dir"], tap_caches(backbone))
    vectors, ok, stats = compute_bottlenecks(paths, backbone, cache)
    assert ok.all() and stats.computed == 0
    return vectors


@pytest.fixture
def tiny_digits(tmp_path: Path) -> Path:
    """Three digit classes, 12 images each: enough to train and export quickly."""
    return copy_digits(tmp_path / "digits", ["0", "1", "7"], per_class=12)


@pytest.fixture(scope="session", autouse=True)
def prebuilt_feature_models(tmp_path_factory: pytest.TempPathFactory):
    """The default backbone converted to TFLite once for the session, found through
    RETRAIN_FEATURE_MODELS_DIR as a container image finds its own: a conversion takes seconds, and
    the tests make dozens of fresh bottleneck caches. Tests of the conversion itself unset it."""
    from retrain.backbones import load_backbone
    from retrain.feature_models import save_prebuilt
    from retrain.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    folder = tmp_path_factory.mktemp("feature_models")
    save_prebuilt(load_backbone(), folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRAIN_FEATURE_MODELS_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, str, Path]:
    """The demo job: all 1,797 digits, default flags, a fresh bottleneck cache; shared by the session.
    It also exports the optional formats (SavedModel, model.keras), so that tests can check them.

    Returns (result, printed log, root folder with `models/` and `cache/`).
    """
    from retrain.pipeline import RetrainConfig, run

    root = tmp_path_factory.mktemp("digits_run")
    config = RetrainConfig(
        image_dir=str(DIGITS),
        models_dir=str(root / "models"),
        bottleneck_dir=str(root / "cache"),
        export=("tflite", "saved_model", "keras"),
    )
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        result = run(config)
    return result, log.getvalue(), root


@pytest.fixture(scope="module")
def export(digits_run) -> Path:
    """The digits export of `digits_run`."""
    return digits_run[0].output_dir


# --- a real server in a subprocess ---------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log_path: Path

    def client(self, **options) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=TIMEOUT, **options)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def raw(self, method: str, path: str, body: bytes = b"", content_type: str = "application/json") -> Answer:
        """A request whose path goes out byte for byte (httpx would normalise `..` segments away)."""
        host, port = self.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
        try:
            connection.request(method, path, body=body, headers={"content-type": content_type})
            response = connection.getresponse()
            return Answer(response.status, response.getheader("content-type", ""), response.read())
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def start_server(model_dir: Path, log_path: Path, *flags: str) -> Server:
    """`serve --model_dir ... --host 127.0.0.1 --port <free>`, returned once /readyz answers 200."""
    return start_serve(["--model_dir", str(model_dir), *flags], log_path)


def start_serve(
    flags: list[str], log_path: Path, command: list[str] = SERVE, cwd: Path = REPO, ready: str = "/readyz"
) -> Server:
    """`<command> <flags> --host 127.0.0.1 --port <free>`, returned once `ready` answers 200."""
    for _attempt in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        args = [*flags, "--host", "127.0.0.1", "--port", str(port)]
        with log_path.open("wb") as log:
            process = subprocess.Popen([*command, *args], cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        server = Server(process, f"http://127.0.0.1:{port}", log_path)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{server.url}{ready}", timeout=5).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        server.stop()
        if "address already in use" not in server.log().lower():  # else another process took the port: retry
            break
    pytest.fail(f"serve did not become ready (exit code {process.returncode}):\n{server.log()}")


@pytest.fixture(scope="module")
def server(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real `serve` of the digits export, default limits and text logs, one per test module (a module
    that needs other flags defines its own `server`)."""
    running = start_server(export, tmp_path_factory.mktemp("serve") / "server.log", "--poll_seconds", "0")
    yield running
    running.stop()


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


# --- exports behind a moving `latest` link -------------------------------------------------------


@dataclass
class Models:
    """A models/ folder with a `latest` link that a reloading server watches."""

    root: Path
    original: Path  # a copy of the digits export

    @classmethod
    def copy_of(cls, export: Path, root: Path) -> Models:
        """`root/v1`, a copy of `export` without its SavedModel (serve needs none), with `latest` pointing at it."""
        root.mkdir(parents=True)
        original = root / "v1"
        shutil.copytree(export, original, ignore=shutil.ignore_patterns("saved_model"))
        catalogue = cls(root, original)
        catalogue.point_latest_at(original)
        return catalogue

    def add(self, name: str, edit: Callable[[Path], None] | None = None) -> Path:
        """A new export copied from the original, optionally changed by `edit`."""
        target = self.root / name
        shutil.copytree(self.original, target)
        os.utime(target / "model.json")  # written now, as retrain writes a new export: a new version number
        if edit:
            edit(target)
        return target

    def point_latest_at(self, export: Path) -> None:
        """Moves `latest` atomically, as retrain does: a new link renamed over the old one."""
        staging = self.root / ".latest.tmp"
        staging.unlink(missing_ok=True)
        staging.symlink_to(export.name)
        os.replace(staging, self.root / "latest")


def relabel(export: Path) -> None:
    """'0'..'9' -> 'zero'..'nine' in model.json and labels.txt: a new valid model without retraining."""
    info = json.loads((export / "model.json").read_text())
    info["labels"] = [NAMES[int(label)] for label in info["labels"]]
    (export / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    (export / "labels.txt").write_text("".join(f"{label}\n" for label in info["labels"]))


# --- programs from Debian packages ----------------------------------------------------------------


def debian_tool(program: str, package: str, *companions: str) -> str:
    """The path of `program`, installing Debian's `package` (and `companions`) with apt-get when it is
    missing (CI runs as root on a fresh machine). Skips, naming the package, where that install
    cannot run; a failed install fails the test under CI."""
    found = shutil.which(program)
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip(f"{program} is missing and cannot be installed here: needs `apt-get install {package}` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package, *companions]
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    found = shutil.which(program)
    if not found:
        reason = f"{program}: `apt-get install {package}` failed: {result.stderr.strip()[-300:]}"
        if os.environ.get("CI"):  # in CI the check is required: a skip would hide it
            pytest.fail(reason)
        pytest.skip(reason)
    return found
