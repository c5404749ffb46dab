"""The page's "Run in this browser": MediaPipe Tasks for Web classifies in the page, with the labels serve gives.

A real `serve --model_config_file` serving both versions of `digits`: version 1 a small model of
three digits (0, 1, 7) trained here, version 2 the digits export of the session. The page, in
Debian's Chromium (headless, as in tests/test_web.py, whose fixtures these are), turns the switch
on, and each chosen image (a digit of each class, and photo-like JPEGs, one turned by its EXIF) is
classified in the browser by @mediapipe/tasks-vision (vendored from npm by scripts/vendor_web.py,
run here when the folder is missing or stale) from the version's model.tflite:
its top label is /predict's, its three labels are /predict's where their scores are not near ties,
and each score is within SCORE_TOLERANCE of /predict's for that label. Meanwhile no image is POSTed
anywhere and nothing is requested from any host but 127.0.0.1 (MediaPipe Tasks for Web 1.x sends
usage logs to a Google host; the pinned 0.10.35 has no such code). Choosing another version loads
that version's model into the page.

Also the routes behind it: /v1/models/{name}[/versions/{v}]/model.tflite (the export's bytes, the
version /predict answers with, 404s in the error JSON, HEAD and 304) and the runtime's files
(their MIME types, gzip, and a 404 that says how to install them when they are missing).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser

from serve.device import RUNTIME

from . import test_web as web
from .conftest import REPO, Server, copy_digits, jpeg_bytes, start_serve
from .test_web import TEXT, Visit, add_version, get, load_without_running

# tests/test_web.py's fixtures, which pytest finds here by name: Debian's Chromium, the browser,
# a tab opener, and one test-split digit of each class.
chromium, browser, tabs, digits = web.chromium, web.browser, web.tabs, web.digits

SCORE_TOLERANCE = 0.02  # in the headless Chromium here, 300 digits measured at most 7.3e-7 from serve's scores
FEW = ["0", "1", "7"]  # the labels of version 1


# --- the runtime, the models and the server -------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime() -> None:
    """MediaPipe Tasks for Web in serve/web/vendor/tasks-vision/: scripts/vendor_web.py vendors it with
    npm when it is missing or not the locked version (a no-op otherwise). Skips where npm is missing,
    except under CI."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "vendor_web.py")], capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip()[-500:]
        if result.returncode == 2 and not os.environ.get("CI"):
            pytest.skip(reason)
        pytest.fail(reason)


@pytest.fixture(scope="module")
def shelf(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/digits/1: a model of three digits, 200 steps on 30 images each; models/digits/2: the digits export."""
    from retrain.pipeline import RetrainConfig, run
    from retrain.train import HParams

    root = tmp_path_factory.mktemp("web_device")
    config = RetrainConfig(
        image_dir=str(copy_digits(root / "few", FEW, per_class=30)),
        output_dir=str(root / "models" / "digits" / "1"),
        bottleneck_dir=str(root / "cache"),
        architecture="efficientnet_lite0",
        hparams=HParams(how_many_training_steps=200),
    )
    with contextlib.redirect_stdout(io.StringIO()):
        run(config)
    add_version(export, root / "models" / "digits" / "2")
    return root / "models"


@pytest.fixture(scope="module")
def server(runtime: None, shelf: Path) -> Iterator[Server]:
    """Both versions served (TF Serving's `all` policy), the highest answering by default."""
    config = shelf.parent / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "digits" base_path: "{shelf / "digits"}" '
        "model_platform: 'tflite' model_version_policy { all {} } } }\n"
    )
    running = start_serve(["--model_config_file", str(config), "--poll_seconds", "0"], shelf.parent / "server.log")
    yield running
    running.stop()


def photos() -> list[tuple[str, bytes]]:
    """Photo-like JPEGs: landscape, portrait, and one the camera held sideways (EXIF orientation 6)."""
    sideways = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to show
    Image.open(io.BytesIO(jpeg_bytes(320, 200, seed=7))).save(sideways, "JPEG", exif=exif.tobytes(), quality=90)
    return [("landscape.jpg", jpeg_bytes(640, 480, seed=1)), ("portrait.jpg", jpeg_bytes(300, 400, seed=2)),
            ("sideways.jpg", sideways.getvalue())]  # fmt: skip


def server_scores(server: Server, name: str, data: bytes, version: int | None = None) -> tuple[str, list]:
    """(version that answered, every (label, score) best first) from POST /predict."""
    where = "" if version is None else f"&version={version}"
    files = {"file": (name, data)}
    response = httpx.post(f"{server.url}/predict?model=digits&top_k=10{where}", files=files, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    return answer["model_spec"]["version"], [(p["label"], p["score"]) for p in answer["predictions"]]


# --- the page ------------------------------------------------------------------------------------------


class Device:
    """The page with its "Run in this browser" switch, and every request it made, with its method."""

    def __init__(self, visit: Visit):
        self.visit = visit
        self.page = visit.page
        self.requests: list[tuple[str, str]] = []
        self.page.on("request", lambda request: self.requests.append((request.method, request.url)))
        self.wait_state("off", "unavailable")

    def state(self) -> str:
        return self.page.locator("#device").get_attribute("data-state")

    def wait_state(self, *states: str, text: str = "") -> None:
        """Until #device is in one of `states` and its status says `text`."""
        self.page.wait_for_function(
            """([states, text]) => states.includes(document.querySelector('#device').dataset.state)
                && document.querySelector('#device-status').textContent.includes(text)""",
            arg=[list(states), text],
        )

    def switch(self, on: bool) -> None:
        self.page.set_checked("#device-switch", on)

    def ranks(self, name: str) -> list[tuple[str, float]]:
        """(label, score) of a card as the page holds them, best first."""
        rows = self.visit.card(name).locator(".ranks li").all()
        return [(row.get_attribute("data-label"), float(row.get_attribute("data-score"))) for row in rows]

    def posts(self, since: int = 0) -> list[str]:
        return [url for method, url in self.requests[since:] if method == "POST"]


@pytest.fixture
def device(tabs, server: Server) -> Device:
    return Device(tabs(server.url))


def assert_like_the_server(shown: list[tuple[str, float]], served: list[tuple[str, float]], what: str) -> None:
    """The same top label; each shown label's score within SCORE_TOLERANCE of the server's for it; and
    at each rank the server's label, where the server's next score is more than SCORE_TOLERANCE below."""
    assert len(shown) == 3, what
    assert shown[0][0] == served[0][0], (what, shown, served[:3])
    scores = dict(served)
    for label, score in shown:
        assert abs(score - scores[label]) <= SCORE_TOLERANCE, (what, label, score, scores[label])
    for rank in range(3):
        if served[rank][1] - served[rank + 1][1] > SCORE_TOLERANCE:
            assert shown[rank][0] == served[rank][0], (what, rank, shown, served[:4])


def test_digits_classified_in_the_browser_get_the_labels_predict_gives(
    device: Device, server: Server, digits: list[Path]
) -> None:
    """Version 2 by default; one digit of each class from the test split, three photo-like JPEGs, and a
    file that is no image."""
    assert device.state() == "off" and device.page.is_enabled("#device-switch")
    device.switch(True)
    device.wait_state("ready", text="digits, version 2")
    assert "nothing is uploaded" in device.page.locator("#files-hint").inner_text()
    since = len(device.requests)
    images = [(path.name, path.read_bytes()) for path in digits] + photos()
    device.visit.upload(*images, ("notes.png", TEXT))
    device.visit.wait_answered(len(images) + 1)
    for name, data in images:
        card = device.visit.card(name)
        assert (card.get_attribute("data-state"), card.get_attribute("data-answered-in")) == ("done", "browser")
        assert device.visit.answered_by(name) == "Answered in this browser by digits, version 2"
        version, served = server_scores(server, name, data)
        assert version == "2"
        assert_like_the_server(device.ranks(name), served, name)
    notes = device.visit.card("notes.png")
    assert notes.get_attribute("data-state") == "error"
    assert notes.locator(".status.error").inner_text() == "Not an image this browser can read."
    # Nothing was uploaded; the model file was fetched once, by its version.
    assert device.posts(since) == []
    fetched = [url for method, url in device.requests if method == "GET" and url.endswith("model.tflite")]
    assert fetched == [f"{server.url}/v1/models/digits/versions/2/model.tflite"]
    # Off again: the classifier is closed (MediaPipe 1.x would send its usage log now), images go to the server.
    device.switch(False)
    device.wait_state("off")
    device.page.wait_for_selector("#device:not([data-loaded])", state="attached")
    device.visit.upload(digits[3])
    device.visit.wait_answered(len(images) + 2)
    assert device.visit.card(digits[3].name).get_attribute("data-answered-in") == "server"
    assert device.visit.answered_by(digits[3].name) == "Answered by digits, version 2"
    assert [urlsplit(url).path for url in device.posts(since)] == ["/predict"]
    device.visit.assert_only_loopback()


def test_choosing_another_version_loads_its_model_into_the_page(
    device: Device, server: Server, digits: list[Path]
) -> None:
    device.switch(True)
    device.wait_state("ready", text="digits, version 2")
    device.visit.choose("digits", "1")
    device.wait_state("ready", text="digits, version 1")
    chosen = [digits[int(label)] for label in FEW] + [digits[4]]  # and a 4, which version 1 cannot know
    device.visit.upload(*chosen)
    device.visit.wait_answered(len(chosen))
    for path in chosen:
        assert device.visit.answered_by(path.name) == "Answered in this browser by digits, version 1"
        shown = device.ranks(path.name)
        assert {label for label, _ in shown} == set(FEW)
        version, served = server_scores(server, path.name, path.read_bytes(), version=1)
        assert version == "1"
        assert_like_the_server(shown, [*served, ("", 0.0)], path.name)
    device.visit.choose("digits", "")  # the default again: version 2
    device.wait_state("ready", text="digits, version 2")
    device.visit.upload(digits[8])
    device.visit.wait_answered(len(chosen) + 1)
    assert device.ranks(digits[8].name)[0][0] == "8"
    assert device.visit.answered_by(digits[8].name) == "Answered in this browser by digits, version 2"
    assert device.posts() == []
    device.visit.assert_only_loopback()


def test_without_the_runtime_the_switch_is_off_and_says_why(browser: Browser, server: Server, digits: list[Path]):
    """As on a server where scripts/vendor_web.py never ran: its runtime files answer 404."""
    context = browser.new_context()
    try:
        context.route("**/web/vendor/tasks-vision/**", lambda route: route.fulfill(status=404, body="{}"))
        page = Device(Visit(context.new_page(), server.url))
        assert page.state() == "unavailable"
        assert not page.page.is_enabled("#device-switch")
        status = page.page.locator("#device-status").inner_text()
        assert "not installed on this server" in status and "scripts/vendor_web.py" in status
        page.visit.upload(digits[5])
        page.visit.wait_answered(1)
        assert page.visit.answered_by(digits[5].name) == "Answered by digits, version 2"
    finally:
        context.close()


# --- the routes ------------------------------------------------------------------------------------------


def test_model_file_is_the_exports_and_of_the_version_predict_answers_with(
    server: Server, shelf: Path, digits: list[Path]
) -> None:
    digit = digits[3]
    with server.client() as client:
        newest = client.get("/v1/models/digits/model.tflite")
        assert newest.status_code == 200
        assert newest.headers["content-type"] == "application/octet-stream"
        assert newest.content == (shelf / "digits" / "2" / "model.tflite").read_bytes()
        answered = client.post("/predict?model=digits", files={"file": (digit.name, digit.read_bytes())}).json()
        assert (newest.headers["x-model-name"], newest.headers["x-model-version"]) == ("digits", "2")
        assert answered["model_spec"] == {"name": "digits", "version": "2"}
        first = client.get("/v1/models/digits/versions/1/model.tflite")
        assert first.status_code == 200 and first.headers["x-model-version"] == "1"
        assert first.content == (shelf / "digits" / "1" / "model.tflite").read_bytes()
        # The ETag names the version: a client holding it gets 304, a client holding another gets the file.
        assert first.headers["etag"] != newest.headers["etag"]
        assert first.headers["cache-control"] == "no-cache"
        again = client.get("/v1/models/digits/model.tflite", headers={"if-none-match": newest.headers["etag"]})
        assert (again.status_code, again.content, again.headers["x-model-version"]) == (304, b"", "2")
        other = client.get("/v1/models/digits/model.tflite", headers={"if-none-match": first.headers["etag"]})
        assert other.status_code == 200 and other.content == newest.content
        head = client.head("/v1/models/digits/model.tflite")
        assert (head.status_code, head.content, head.headers["x-model-version"]) == (200, b"", "2")
        assert head.headers["content-length"] == str(len(newest.content))
        for path in ("/v1/models/nope/model.tflite", "/v1/models/digits/versions/3/model.tflite"):
            missing = client.get(path)
            assert (missing.status_code, set(missing.json())) == (404, {"error"}), path
        assert client.get("/v1/models/digits/versions/two/model.tflite").status_code == 400
        operations = client.get("/openapi.json").json()["paths"]
        assert "/v1/models/{name}/model.tflite" in operations
        assert "/v1/models/{name}/versions/{version}/model.tflite" in operations


def test_runtime_files_are_served_compressed_with_their_types(server: Server) -> None:
    folder = REPO / "serve" / "web" / "vendor" / "tasks-vision"
    with server.client() as client:
        for name, kind in RUNTIME.items():
            response = client.get(f"/web/vendor/tasks-vision/{name}", headers={"accept-encoding": "gzip"})
            assert response.status_code == 200, name
            assert response.headers["content-type"] == kind and response.headers["content-encoding"] == "gzip"
            assert response.content == gzip.decompress((folder / f"{name}.gz").read_bytes())  # httpx decoded it
            assert response.content.startswith(b"\0asm") == name.endswith(".wasm")
            cached = client.get(f"/web/vendor/tasks-vision/{name}", headers={"if-none-match": response.headers["etag"]})
            assert cached.status_code == 304, name
        plain = client.get("/web/vendor/tasks-vision/vision_bundle.mjs", headers={"accept-encoding": "identity"})
        assert "content-encoding" not in plain.headers and b"ImageClassifier" in plain.content
        for name in ("package.json", "wasm/vision_wasm_module_internal.js", "../device/package.json", "nope.js"):
            missing = client.get(f"/web/vendor/tasks-vision/{name}")
            assert missing.status_code == 404, name
    script = (REPO / "serve" / "web" / "device.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert re.findall(r"https?://", script) == []  # the runtime comes from this server: no CDN


def test_without_the_runtime_its_files_answer_404_saying_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serve import device
    from serve.app import create_app
    from serve.models.manager import ModelManager
    from serve.models.repository import ModelsDir

    monkeypatch.setattr(device, "runtime_folder", lambda: tmp_path / "not-vendored")
    (tmp_path / "models").mkdir()
    app = create_app(ModelManager(ModelsDir(tmp_path / "models"), load_without_running))
    response = get(app, "/web/vendor/tasks-vision/vision_bundle.mjs")
    assert response.status_code == 404
    assert "scripts/vendor_web.py" in response.json()["error"]
    page = get(app, "/web/device.js")
    assert (page.status_code, page.headers["content-type"]) == (200, "text/javascript; charset=utf-8")
