"""The web page on serve, in a real browser: Debian's Chromium, headless, driven by Playwright.

What a person using the page relies on: it loads nothing from the internet, it describes the chosen
model version, a chosen or dropped image gets the labels `POST /predict` gives for it from the model
and version picked (and says which answered), a bad file gets a plain error in its own card while
the others stay, a new model or version shows up after the next query without reloading the page,
a chosen version that goes away is reported and replaced by the default, labels are shown as text
and never as markup, and it fits a phone-sized screen. The screenshot in the README comes from here.

Its Train view: the admin token is asked for once and kept in the tab's sessionStorage only (asked
again when the server refuses it); classes get images from files, drops and Chromium's fake camera;
the page zips them itself and trains a model through the job API, shows the job's progress, and
"Try it" asks the new version in Predict. Without --admin_token_file the view says how to turn it on.

Real servers: `serve --model_dir <latest link>` (one model, "retrained", that a moving link
reloads), `serve --models_dir` with three models (the second `shelf`), and `serve --models_dir
--admin_token_file` that starts empty and trains (`trainer`).

The browser is Debian's /usr/bin/chromium, installed with apt-get by the `chromium` fixture when
missing; Playwright's own browser download is never used.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from .conftest import (
    DIGITS,
    NAMES,
    REPO,
    Models,
    Server,
    debian_tool,
    jpeg_bytes,
    relabel,
    start_serve,
    start_server,
    wait_for,
)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",  # a camera that films a test pattern: for the Train view's photos
    "--use-fake-ui-for-media-stream",  # and no permission prompt for it
]
# The README's picture; the test rewrites it only when asked (UPDATE_SCREENSHOT=1), since the page
# shows when the model was trained and every session trains anew.
README_SCREENSHOT = REPO / "docs" / "screenshots" / "serve-page.png"
PLOTS = ["confusion_matrix.png", "training_curves.png"]
TEXT = b"These are notes, not an image.\n"
WAIT_MS = 60_000  # for anything the page waits on the server for; CI is slow
SHOUTED = [name.upper() for name in NAMES]
# Labels are strangers' strings: markup in them must show as text, never run.
MARKUP = [f'<img src=x onerror="window.pwned={digit}">{digit}' for digit in range(10)]
TOKEN = "web-test-token-0123456789abcdef"
TOKEN_KEY = "retrain-serve.admin-token"  # the page's sessionStorage key
TRAIN_MS = 600_000  # a job: unpack, features of ~30 images, 200 steps, export, load


# --- the browser ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing (skips, naming the package, where it cannot be)."""
    return Path(debian_tool("chromium", "chromium"))


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def models(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models.copy_of(export, tmp_path_factory.mktemp("web") / "models")


@pytest.fixture(scope="module")
def server(models: Models) -> Iterator[Server]:
    """Watches `latest` every 0.5 s; images over 100k pixels are refused (413), the 8x8 digits are not."""
    flags = ["--poll_seconds", "0.5", "--max_image_pixels", "100000"]
    running = start_server(models.root / "latest", models.root.parent / "server.log", *flags)
    yield running
    running.stop()


def labelled(labels: list[str]) -> Callable[[Path], None]:
    """An edit of a digits export: label '0'..'9' becomes labels[0]..labels[9] (model.json and labels.txt)."""

    def edit(export: Path) -> None:
        info = json.loads((export / "model.json").read_text())
        info["labels"] = [labels[int(label)] for label in info["labels"]]
        (export / "model.json").write_text(json.dumps(info, indent=2) + "\n")
        (export / "labels.txt").write_text("".join(f"{label}\n" for label in info["labels"]))

    return edit


def add_version(export: Path, folder: Path, edit: Callable[[Path], None] | None = None) -> Path:
    """A copy of `export` as version `folder` (models/<name>/<version>), written as retrain writes
    one: in a hidden folder first, then renamed into place, so serve never sees it half-written."""
    staging = folder.parent / f".{folder.name}.tmp"
    shutil.copytree(export, staging, ignore=shutil.ignore_patterns("saved_model"))
    if edit:
        edit(staging)
    staging.rename(folder)
    return folder


def remove_version(folder: Path) -> None:
    """Takes a version away at once (a rename to a hidden name, which serve does not read), then deletes it."""
    if folder.exists():
        hidden = folder.parent / f".{folder.name}.removed"
        folder.rename(hidden)
        shutil.rmtree(hidden)


def start_models_server(models_dir: Path, log_path: Path, *flags: str, ready: str = "/readyz") -> Server:
    """`serve --models_dir ... --host 127.0.0.1 --port <free>`, returned once `ready` answers 200."""
    return start_serve(["--models_dir", str(models_dir), *flags], log_path, ready=ready)


@pytest.fixture(scope="module")
def shelf(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ with three models of one version each, all the digits export: `digits` (answers '3'),
    `names` (relabelled: 'three') and `markup` (labels that are HTML)."""
    root = tmp_path_factory.mktemp("web_shelf") / "models"
    for name, edit in (("digits", None), ("names", relabel), ("markup", labelled(MARKUP))):
        (root / name).mkdir(parents=True)
        add_version(export, root / name / "1", edit)
    return root


@pytest.fixture(scope="module")
def shelf_server(shelf: Path) -> Iterator[Server]:
    """`serve --models_dir` of the shelf, looking for new and removed versions every 0.5 s."""
    running = start_models_server(shelf, shelf.parent / "server.log", "--poll_seconds", "0.5")
    yield running
    running.stop()


def served_versions(server: Server, name: str) -> list[tuple[int, str]]:
    """(version, state) of a model as GET /models lists them, the newest first."""
    listed = httpx.get(f"{server.url}/models", timeout=30).json()["models"]
    return next(([(v["version"], v["state"]) for v in m["versions"]] for m in listed if m["name"] == name), [])


class Visit:
    """One browser tab on the page, with every URL it requested."""

    def __init__(self, page: Page, url: str, described: bool = True):
        self.page = page
        self.requests: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.set_default_timeout(WAIT_MS)
        page.goto(url)
        if described:
            page.locator("#model-facts").wait_for(state="visible")
            self.wait_idle()

    def upload(self, *files: Path | tuple[str, bytes]) -> None:
        """Through the file input, as a person picking files in the dialog does."""
        named = [(f.name, f.read_bytes()) if isinstance(f, Path) else f for f in files]
        payloads = [{"name": name, "mimeType": "image/png", "buffer": data} for name, data in named]
        self.page.set_input_files("#files", payloads)

    def drop(self, name: str, data: bytes, target: str = "#dropzone") -> None:
        """A file dropped on the drop zone, as a drag from the desktop delivers it."""
        transfer = self.page.evaluate_handle(
            """([name, bytes]) => {
                const transfer = new DataTransfer();
                transfer.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
                return transfer;
            }""",
            [name, list(data)],
        )
        for event in ("dragenter", "dragover", "drop"):
            self.page.dispatch_event(target, event, {"dataTransfer": transfer})

    def wait_answered(self, count: int) -> None:
        """Until `count` cards have an answer or an error, and the page has asked for the lists again."""
        self.page.wait_for_function(
            "n => document.querySelectorAll('#results .card:not([data-state=pending])').length >= n", arg=count
        )
        self.wait_idle()

    def wait_idle(self) -> None:
        """Until the picker and the card are not being refreshed (aria-busy, set while /models and /model are asked)."""
        self.page.wait_for_function("() => document.querySelector('#picker').getAttribute('aria-busy') === 'false'")

    def choose(self, model: str, version: str | None = None) -> None:
        """Picks a model (and a version; else the default) as a person does, then waits for its card."""
        self.page.select_option("#model-choice", model)
        if version is not None:
            self.page.select_option("#version-choice", version)
        self.wait_idle()

    def options(self, select: str) -> list[tuple[str, str, bool]]:
        """(value, text, disabled) of a select's options."""
        return self.page.eval_on_selector_all(
            f"{select} option", "options => options.map(o => [o.value, o.textContent, o.disabled])"
        )

    def card(self, name: str):
        """The newest card of that file name (new cards come first)."""
        return self.page.locator(f'#results .card[data-filename="{name}"]').first

    def ranks(self, name: str) -> list[tuple[str, str]]:
        """(label, score text) of a card, best first."""
        rows = self.card(name).locator(".ranks li")
        return [(row.locator(".label").inner_text(), row.locator(".score").inner_text()) for row in rows.all()]

    def answered_by(self, name: str) -> str:
        return self.card(name).locator(".answered-by").inner_text()

    def shown_labels(self) -> list[str]:
        return self.page.locator("#labels li").all_inner_texts()

    def open_train(self) -> None:
        """The Train tab, once the page has asked the server whether it trains."""
        self.page.get_by_role("tab", name="Train").click()
        self.wait_train_idle()

    def wait_train_idle(self) -> None:
        self.page.wait_for_function("() => document.querySelector('#train').getAttribute('aria-busy') === 'false'")

    def enter_token(self, token: str) -> None:
        self.page.get_by_label("Admin token").fill(token)
        self.page.get_by_role("button", name="Use the token").click()
        self.wait_train_idle()

    def kept_tokens(self) -> tuple[str | None, int]:
        """The token in sessionStorage, and how many entries localStorage holds (none, ever)."""
        return self.page.evaluate(f"() => [sessionStorage.getItem('{TOKEN_KEY}'), localStorage.length]")

    def add_class(self, label: str) -> None:
        self.page.get_by_label("New class").fill(label)
        self.page.get_by_label("New class").press("Enter")

    def class_card(self, label: str):
        return self.page.locator(".class-card").filter(has=self.page.get_by_role("heading", name=label, exact=True))

    def add_to_class(self, label: str, *files: Path) -> None:
        payloads = [{"name": f.name, "mimeType": "image/png", "buffer": f.read_bytes()} for f in files]
        self.class_card(label).locator("input[type=file]").set_input_files(payloads)

    def class_count(self, label: str) -> int:
        return int(self.class_card(label).get_attribute("data-count"))

    def assert_only_loopback(self) -> None:
        """Every request went to the server on 127.0.0.1 (blob: URLs are the page's own thumbnails)."""
        assert self.requests
        fetched = [url.removeprefix("blob:") for url in self.requests if not url.startswith("data:")]
        outside = [url for url in fetched if urlsplit(url).hostname != "127.0.0.1"]
        assert outside == []


@pytest.fixture
def tabs(browser: Browser) -> Iterator[Callable[..., Visit]]:
    """Opens a page in a fresh browser context of the given size."""
    contexts = []

    def open_page(url: str, width: int = 1280, height: int = 800, described: bool = True, **options) -> Visit:
        context = browser.new_context(viewport={"width": width, "height": height}, **options)
        contexts.append(context)
        return Visit(context.new_page(), url, described)

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def visit(tabs, server: Server) -> Callable[..., Visit]:
    """The page of the one-model server."""
    return lambda width=1280, height=800: tabs(server.url, width, height)


@pytest.fixture
def shelf_visit(tabs, shelf_server: Server) -> Callable[..., Visit]:
    """The page of the three-model server."""
    return lambda width=1280, height=800: tabs(shelf_server.url, width, height)


# --- what /predict says ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> list[Path]:
    """Test-split digits, one of each class, in label order."""
    from retrain.images import discover

    by_label: dict[str, Path] = {}
    for entry in discover(DIGITS).splits["testing"]:
        by_label.setdefault(entry.path.parent.name, entry.path)
    return [by_label[label] for label in sorted(by_label)]


def predicted(server: Server, name: str, data: bytes, model: str | None = None) -> list[tuple[str, str]]:
    """(label, score as the page prints it) from POST /predict, best first."""
    where = f"&model={model}" if model else ""
    files = {"file": (name, data, "image/png")}
    response = httpx.post(f"{server.url}/predict?top_k=3{where}", files=files, timeout=60)
    assert response.status_code == 200, response.text
    return [(p["label"], f"{p['score'] * 100:.1f}%") for p in response.json()["predictions"]]


def big_png() -> bytes:
    """500x500 pixels: over the server's 100k-pixel limit."""
    buffer = io.BytesIO()
    Image.new("L", (500, 500), 255).save(buffer, "PNG")
    return buffer.getvalue()


# --- the page's files and the model routes, without a browser --------------------------------------


class NoBatcher:
    """Stands in for the batcher of a version that is never run."""

    def close(self) -> None:
        pass


def loaded(directory: Path, version: int):
    """A LoadedModel without interpreters: enough for the page's routes, which never run the model."""
    from serve.model_info import read_model_info
    from serve.runtime import LoadedModel

    return LoadedModel(directory, read_model_info(directory), runners=[], version=version)


def load_without_running(name: str, version: int, folder: Path):
    """The manager's load function, minus interpreters: ModelDirError for a folder that does not describe a model."""
    from serve.models.servable import ServedModel

    return ServedModel(loaded(folder, version), NoBatcher())


def broken(folder: Path) -> None:
    """labels.txt disagrees with model.json: a version serve refuses."""
    (folder / "labels.txt").write_text("not\nthese\n")


@pytest.fixture
def in_process(export: Path, tmp_path: Path) -> SimpleNamespace:
    """The app over a real ModelManager of tmp folders (model.json and labels.txt of the export):
    digits versions 2 (with a confusion matrix) and 3 (refused, so 2 serves), and names version 1."""
    from serve.app import create_app
    from serve.models.manager import ModelManager
    from serve.models.repository import ModelsDir

    root = tmp_path / "models"

    def add(name: str, version: int, edit: Callable[[Path], None] | None = None, plots: tuple[str, ...] = ()) -> Path:
        folder = root / name / str(version)
        folder.mkdir(parents=True)
        shutil.copy(export / "model.json", folder)
        shutil.copy(export / "labels.txt", folder)
        for plot in plots:
            Image.new("RGB", (40, 30), "white").save(folder / plot)
        if edit:
            edit(folder)
        return folder

    add("digits", 2, plots=("confusion_matrix.png",))
    add("digits", 3, broken)
    add("names", 1, relabel)
    (tmp_path / "secret.png").write_bytes(b"not for the web")
    manager = ModelManager(ModelsDir(root), load_without_running)
    manager.reconcile()
    return SimpleNamespace(app=create_app(manager), manager=manager, root=root, add=add)


def get(app, path: str) -> httpx.Response:
    """GET through the ASGI app in-process, on a thread of its own: Playwright's sync API owns this thread's loop."""

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
            return await client.get(path)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, send()).result()


def test_the_page_and_its_assets_have_their_content_types_and_no_external_urls(in_process) -> None:
    types = {"/": "text/html", "/web/app.js": "text/javascript", "/web/train.js": "text/javascript",
             "/web/style.css": "text/css"}  # fmt: skip
    for path, kind in types.items():
        response = get(in_process.app, path)
        assert response.status_code == 200
        assert response.headers["content-type"] == f"{kind}; charset=utf-8"
        assert re.findall(r"https?://\S*", response.text) == [], path
    page = get(in_process.app, "/").text
    assert re.findall(r'(?:src|href)="([^"]+)"', page) == [
        "data:,", "/web/style.css", "/web/app.js", "/web/train.js", "/web/device.js", "/docs"
    ]  # fmt: skip
    for view in ("predict", "train"):
        assert f'role="tab" id="tab-{view}" aria-controls="view-{view}"' in page
        assert f'id="view-{view}" class="layout" role="tabpanel" aria-labelledby="tab-{view}"' in page
    assert '<label for="files">' in page and '<input id="files" type="file" multiple accept="image/*">' in page
    for picker in ("model-choice", "version-choice"):
        assert f'<label for="{picker}">' in page and f'<select id="{picker}"' in page
    assert 'name="viewport"' in page
    for missing in ("/web/index.html", "/web/nope.js", "/web/..%2Fpage.py"):
        response = get(in_process.app, missing)
        assert (response.status_code, set(response.json())) == (404, {"error"}), missing


def test_the_script_puts_text_on_the_page_and_never_markup(in_process) -> None:
    """Model names, labels and class names come from strangers: the scripts write them with
    textContent (or new Option(text)), never through an HTML parser; the admin token is never put
    in localStorage (it outlives the tab)."""
    for name in ("app.js", "train.js"):
        script = get(in_process.app, f"/web/{name}").text
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in script, (name, sink)
        assert "localStorage" not in script, name


def test_models_route_lists_every_model_and_version_with_its_state(in_process) -> None:
    listed = get(in_process.app, "/models").json()
    assert [model["name"] for model in listed["models"]] == ["digits", "names"]
    digits, names = listed["models"]
    assert [(v["version"], v["state"]) for v in digits["versions"]] == [(3, "END"), (2, "AVAILABLE")]
    assert "disagrees with model.json" in digits["versions"][0]["error"]
    assert names["versions"] == [{"version": 1, "state": "AVAILABLE", "error": ""}]
    # A new version replaces the old one (TF Serving's default policy: the latest one).
    in_process.add("names", 4, relabel)
    in_process.manager.reconcile()
    names = get(in_process.app, "/models").json()["models"][1]
    assert [(v["version"], v["state"]) for v in names["versions"]] == [(4, "AVAILABLE"), (1, "END")]


def test_model_route_describes_the_chosen_version_and_lists_only_the_plots_it_has(in_process, export: Path) -> None:
    info = json.loads((export / "model.json").read_text())
    summary = get(in_process.app, "/model").json()  # the first model, its highest available version
    assert summary == {
        "name": "digits",
        "export": "2",
        "version": 2,
        "labels": info["labels"],
        "backbone": info["backbone"],
        "created": info["created"],
        "test_accuracy": info["metrics"]["test_accuracy"],
        "test_count": info["metrics"]["test_count"],
        "estimate": None,
        "plots": [
            {
                "name": "confusion_matrix.png",
                "title": "Confusion matrix of the held-out images",
                "url": "/model/plots/confusion_matrix.png?model=digits&version=2",
            }
        ],
    }
    assert get(in_process.app, "/model?model=digits&version=2").json() == summary
    names = get(in_process.app, "/model?model=names").json()
    assert (names["name"], names["version"], names["labels"], names["plots"]) == ("names", 1, NAMES, [])
    plot = get(in_process.app, summary["plots"][0]["url"])
    assert (plot.status_code, plot.headers["content-type"]) == (200, "image/png")
    assert plot.content == (in_process.root / "digits" / "2" / "confusion_matrix.png").read_bytes()
    for name in ("training_curves.png", "model.json", "..%2Fsecret.png", "%2E%2E%2Fsecret.png", "nope.png"):
        response = get(in_process.app, f"/model/plots/{name}?model=digits")
        assert (response.status_code, set(response.json())) == (404, {"error"}), name
    response = get(in_process.app, "/model/plots/confusion_matrix.png?model=names")
    assert (response.status_code, set(response.json())) == (404, {"error"})
    for query in ("model=nope", "model=digits&version=3", "model=digits&version=1", "model=names&version=2"):
        response = get(in_process.app, f"/model?{query}")
        assert (response.status_code, set(response.json())) == (404, {"error"}), query


def test_model_route_gives_null_for_what_model_json_does_not_record(in_process) -> None:
    def unrecorded(folder: Path) -> None:
        info = json.loads((folder / "model.json").read_text())
        del info["created"]
        info["metrics"] = {"test_accuracy": None, "test_count": "many"}
        (folder / "model.json").write_text(json.dumps(info))

    in_process.add("names", 2, lambda folder: (relabel(folder), unrecorded(folder)))
    in_process.manager.reconcile()
    summary = get(in_process.app, "/model?model=names").json()
    assert summary["version"] == 2
    assert (summary["created"], summary["test_accuracy"], summary["test_count"]) == (None, None, None)


def test_model_route_explains_a_cross_validated_estimate(in_process) -> None:
    folder = in_process.root / "names" / "1"
    info = json.loads((folder / "model.json").read_text())
    validation = {"method": "leave-one-out", "folds": 6, "images": 6, "accuracy": 0.5}
    info["metrics"] = {"test_accuracy": None, "test_count": 0, "cross_validation": validation}
    (folder / "model.json").write_text(json.dumps(info))
    in_process.manager.reconcile()  # the same version with new files: loaded again
    summary = get(in_process.app, "/model?model=names&version=1").json()
    assert summary["test_accuracy"] is None
    assert summary["estimate"] == "50.0% by leave-one-out cross-validation over 6 images (too few for a test split)"


def test_model_route_answers_503_with_retry_after_until_a_model_is_loaded(in_process, tmp_path: Path) -> None:
    from serve.app import create_app
    from serve.models.manager import ModelManager
    from serve.models.repository import ModelsDir

    manager = ModelManager(ModelsDir(tmp_path / "empty"), load_without_running)
    manager.reconcile()
    app = create_app(manager)
    assert get(app, "/models").json() == {"models": []}
    for path in ("/model", "/model/plots/confusion_matrix.png"):
        response = get(app, path)
        assert (response.status_code, set(response.json())) == (503, {"error"}), path
        assert response.headers["retry-after"] == "5"
    # A model whose only version was refused is listed, and has nothing to describe yet.
    in_process.add("untrained", 1, broken)
    in_process.manager.reconcile()
    untrained = get(in_process.app, "/models").json()["models"][-1]
    assert (untrained["name"], [v["state"] for v in untrained["versions"]]) == ("untrained", ["END"])
    response = get(in_process.app, "/model?model=untrained")
    assert response.status_code == 503 and "refused" in response.json()["error"]


# --- the page in a browser, one model -------------------------------------------------------------


def test_the_page_loads_only_from_the_server_and_describes_the_model(visit, export: Path) -> None:
    page = visit()
    info = json.loads((export / "model.json").read_text())
    metrics = info["metrics"]
    page.page.wait_for_load_state("networkidle")
    page.assert_only_loopback()
    assert page.page.locator("#model-name").inner_text() == "retrained"
    assert page.page.locator("#backbone").inner_text() == info["backbone"]
    accuracy = f"{metrics['test_accuracy'] * 100:.1f}% of {metrics['test_count']} test images"
    assert page.page.locator("#accuracy").inner_text() == accuracy
    assert page.page.locator("#trained").inner_text() == f"{info['created'][:10]} {info['created'][11:16]} UTC"
    assert page.shown_labels() == info["labels"]
    assert page.page.locator("#plots figure").count() == 2  # retrain writes both report plots
    # The one model is chosen, its version by default; each select has a visible label.
    version = page.page.locator("#model-version").inner_text()
    assert page.options("#model-choice") == [["retrained", "retrained", False]]
    default = ["", f"Default: newest available ({version})", False]
    assert page.options("#version-choice") == [default, [version, version, False]]
    assert page.page.get_by_label("Model", exact=True).get_attribute("id") == "model-choice"
    assert page.page.get_by_label("Version", exact=True).get_attribute("id") == "version-choice"
    # The file input has a visible label; the keyboard reaches the chosen tab, the picker, then the file input.
    assert page.page.get_by_label("Drop images here, or choose them").get_attribute("id") == "files"
    for expected in ("tab-predict", "model-choice", "version-choice", "files"):
        page.page.keyboard.press("Tab")
        assert page.page.evaluate("document.activeElement.id") == expected


def test_chosen_and_dropped_digits_show_the_labels_predict_gives(visit, server: Server, digits: list[Path]) -> None:
    page = visit()
    version = page.page.locator("#model-version").inner_text()
    chosen = digits[:3]
    page.upload(*chosen)
    page.wait_answered(3)
    dropped = digits[7]
    page.drop(dropped.name, dropped.read_bytes())
    page.wait_answered(4)
    for path in [*chosen, dropped]:
        shown = page.ranks(path.name)
        assert shown == predicted(server, path.name, path.read_bytes()), path.name
        card = page.card(path.name)
        assert card.get_attribute("data-state") == "done"
        assert card.locator(".status").inner_text() == f"Most likely: {shown[0][0]}"
        assert page.answered_by(path.name) == f"Answered by retrained, version {version}"
        thumb = card.locator("img.thumb")
        assert thumb.get_attribute("alt") == f"Your image {path.name}"
        page.page.wait_for_function("img => img.complete && img.naturalWidth === 8", arg=thumb.element_handle())
        bars = card.locator("[role=meter]")
        assert bars.first.get_attribute("aria-label") == shown[0][0]
        assert bars.first.get_attribute("aria-valuetext") == shown[0][1]
    assert page.page.locator("#results .card").count() == 4
    assert page.page.locator("#progress").inner_text() == "4 images answered."
    page.assert_only_loopback()


def test_a_bad_file_gets_a_plain_error_in_its_card_and_the_others_stay(
    visit, server: Server, digits: list[Path]
) -> None:
    page = visit()
    first, last = digits[2], digits[5]
    page.upload(first, ("notes.png", TEXT), ("poster.png", big_png()), ("scan.jpg", jpeg_bytes(64, 48)[:300]), last)
    page.wait_answered(5)
    errors = {
        "notes.png": "Not an image this server can read.",
        "poster.png": "Too large for this server. Try a smaller image.",
        "scan.jpg": "The server could not use this image: corrupt or truncated JPEG image (its header is incomplete).",
    }
    for name, message in errors.items():
        card = page.card(name)
        assert card.get_attribute("data-state") == "error"
        assert card.locator(".status.error").inner_text() == message
        assert card.locator(".ranks").count() == 0
    assert page.card("poster.png").locator(".detail").inner_text() == "image is 500x500 pixels, more than 100,000"
    assert page.card("notes.png").locator("[role=img]").get_attribute("aria-label") == "No preview of notes.png"
    for path in (first, last):
        assert page.ranks(path.name) == predicted(server, path.name, path.read_bytes())
    # The page keeps working after the errors.
    page.upload(digits[9])
    page.wait_answered(6)
    assert page.ranks(digits[9].name) == predicted(server, digits[9].name, digits[9].read_bytes())
    assert page.page.locator("#results .card").count() == 6


def test_a_phone_sized_screen_needs_no_sideways_scrolling(visit, digits: list[Path]) -> None:
    page = visit(375, 740)
    long_name = "IMG_20261122_101502_HDR_portrait_from_the_camera_roll_of_a_phone_0001.png"
    page.upload(digits[1], (long_name, digits[4].read_bytes()), ("notes.png", TEXT))
    page.wait_answered(3)
    assert page.page.evaluate("document.documentElement.scrollWidth") <= 375
    queries = page.page.locator(".queries").bounding_box()
    model = page.page.locator(".model").bounding_box()
    assert queries["x"] >= 0 and queries["x"] + queries["width"] <= 375
    for picker in ("#model-choice", "#version-choice"):
        box = page.page.locator(picker).bounding_box()
        assert box["x"] >= queries["x"] and box["x"] + box["width"] <= queries["x"] + queries["width"], picker
    assert model["y"] > queries["y"]  # one column: the model's description below the images


def with_plots(export: Path) -> None:
    """Relabels the export and adds both report plots."""
    relabel(export)
    for index, name in enumerate(PLOTS):
        Image.new("RGB", (320, 240), ("#d0e0ff", "#ffe0d0")[index]).save(export / name)


def test_a_reloaded_model_shows_on_the_next_query_without_reloading_the_page(
    visit, server: Server, models: Models, digits: list[Path]
) -> None:
    page = visit()
    digit = digits[7]
    page.upload(digit)
    page.wait_answered(1)
    assert page.ranks(digit.name)[0][0] == "7"
    labels_before = page.shown_labels()
    version_before = page.page.locator("#model-version").inner_text()
    page.page.evaluate("window.sameDocument = true")
    new = models.add("relabelled", with_plots)
    models.point_latest_at(new)
    try:
        wait_for(lambda: httpx.get(f"{server.url}/labels").json()["labels"] == NAMES, "the server to reload", 60)
        assert page.shown_labels() == labels_before  # nothing changes until the page asks something
        page.upload(digit)
        page.wait_answered(2)
        assert page.ranks(digit.name)[0][0] == "seven"
        version = page.card(digit.name).get_attribute("data-version")
        assert version != version_before
        assert page.answered_by(digit.name) == f"Answered by retrained, version {version}"
        assert page.shown_labels() == NAMES
        assert page.page.locator("#export").inner_text() == "relabelled"
        assert page.page.locator("#model-version").inner_text() == version
        status = page.page.locator("#model-status").inner_text()
        news = f"The server now answers with version {version} of retrained (export relabelled); it was version"
        assert status == f"{news} {version_before}."
        assert page.options("#version-choice")[:2] == [
            ["", f"Default: newest available ({version})", False],
            [version, version, False],
        ]
        figures = page.page.locator("#plots figure")
        assert figures.count() == 2
        for index, name in enumerate(PLOTS):
            image = figures.nth(index).locator("img")
            assert name in image.get_attribute("src")
            assert image.get_attribute("alt") == figures.nth(index).locator("figcaption").inner_text()
            image.scroll_into_view_if_needed()
            page.page.wait_for_function("img => img.complete && img.naturalWidth === 320", arg=image.element_handle())
        assert page.page.evaluate("window.sameDocument") is True  # the same page, never reloaded
        assert page.ranks(digit.name) != []  # the card from before the reload is still there
        assert page.page.locator("#results .card").count() == 2
        page.assert_only_loopback()
    finally:
        models.point_latest_at(models.original)
        wait_for(lambda: httpx.get(f"{server.url}/labels").json()["labels"] != NAMES, "the server to reload back", 60)


# --- the page in a browser, several models ----------------------------------------------------------


def test_the_picker_lists_every_model_and_each_answers_from_the_one_chosen(
    shelf_visit, shelf_server: Server, digits: list[Path]
) -> None:
    page = shelf_visit()
    digit = digits[3]
    assert page.options("#model-choice") == [[name, name, False] for name in ("digits", "markup", "names")]
    assert page.page.locator("#model-choice").input_value() == "digits"  # the first by name
    assert page.options("#version-choice") == [["", "Default: newest available (1)", False], ["1", "1", False]]
    assert page.page.locator("#model-name").inner_text() == "digits"
    assert page.page.locator("#model-version").inner_text() == "1"
    page.upload(digit)
    page.wait_answered(1)
    assert page.ranks(digit.name) == predicted(shelf_server, digit.name, digit.read_bytes(), "digits")
    assert page.ranks(digit.name)[0][0] == "3"
    assert page.answered_by(digit.name) == "Answered by digits, version 1"

    page.choose("names")
    assert (page.page.locator("#model-name").inner_text(), page.shown_labels()) == ("names", NAMES)
    page.upload(digit)
    page.wait_answered(2)
    assert page.ranks(digit.name) == predicted(shelf_server, digit.name, digit.read_bytes(), "names")
    assert page.ranks(digit.name)[0][0] == "three"
    assert page.answered_by(digit.name) == "Answered by names, version 1"

    # Labels that are markup show as text, in the model's card and in the answers.
    page.choose("markup", "1")
    assert page.shown_labels() == MARKUP
    page.upload(digit)
    page.wait_answered(3)
    assert page.ranks(digit.name)[0][0] == MARKUP[3]
    assert page.card(digit.name).locator(".status").inner_text() == f"Most likely: {MARKUP[3]}"
    assert page.answered_by(digit.name) == "Answered by markup, version 1"
    assert page.page.locator("#labels img, #model-facts img, .ranks img, .status img").count() == 0
    assert page.page.evaluate("typeof window.pwned") == "undefined"

    # Each card keeps the answer of the model it was asked of, newest first.
    cards = page.page.locator("#results .card .answered-by").all_inner_texts()
    assert [text.split(",")[0] for text in cards] == ["Answered by markup", "Answered by names", "Answered by digits"]
    page.assert_only_loopback()


def test_a_version_added_while_the_page_is_open_shows_after_the_next_answer(
    shelf_visit, shelf_server: Server, shelf: Path, export: Path, digits: list[Path]
) -> None:
    page = shelf_visit()
    digit = digits[3]
    page.choose("names")
    assert page.options("#version-choice") == [["", "Default: newest available (1)", False], ["1", "1", False]]
    page.page.evaluate("window.sameDocument = true")
    add_version(export, shelf / "names" / "2", labelled(SHOUTED))
    try:
        wait_for(
            lambda: served_versions(shelf_server, "names") == [(2, "AVAILABLE"), (1, "END")],
            "names version 2 to replace version 1",
        )
        assert page.options("#version-choice")[0][1] == "Default: newest available (1)"  # until the page asks
        page.upload(digit)
        page.wait_answered(1)
        assert page.ranks(digit.name)[0][0] == "THREE"
        assert page.answered_by(digit.name) == "Answered by names, version 2"
        assert page.options("#version-choice") == [
            ["", "Default: newest available (2)", False],
            ["2", "2", False],
            ["1", "1 (no longer served)", True],
        ]
        assert page.page.locator("#model-version").inner_text() == "2"
        assert page.shown_labels() == SHOUTED
        status = page.page.locator("#model-status").inner_text()
        assert status == "The server now answers with version 2 of names (export 2); it was version 1."

        # A version chosen by number that goes away: the page says so and asks the default instead.
        page.choose("names", "2")
        remove_version(shelf / "names" / "2")
        wait_for(
            lambda: served_versions(shelf_server, "names") == [(2, "END"), (1, "AVAILABLE")],
            "names version 1 to serve again",
        )
        page.upload(digit)
        page.wait_answered(2)
        assert page.ranks(digit.name)[0][0] == "three"
        assert page.answered_by(digit.name) == "Answered by names, version 1 (version 2 was no longer served)"
        assert page.page.locator("#version-choice").input_value() == ""
        notice = "Version 2 of names is no longer served; images now go to its default version."
        assert page.page.locator("#picker-status").inner_text() == notice
        assert page.page.locator("#model-status").is_hidden()  # the notice says why; no news of a "new" version
        assert page.page.locator("#model-version").inner_text() == "1"
        assert page.shown_labels() == NAMES

        # Opening the picker (here from the keyboard) asks for the lists again, with no query needed.
        add_version(export, shelf / "names" / "3", relabel)
        wait_for(lambda: (3, "AVAILABLE") in served_versions(shelf_server, "names"), "names version 3 to serve")
        assert page.options("#version-choice")[0][1] == "Default: newest available (1)"
        page.page.locator("#files").focus()  # so that the picker's focus below is a new one
        page.page.locator("#version-choice").focus()
        page.page.wait_for_function(
            "() => document.querySelector('#version-choice option').textContent === 'Default: newest available (3)'"
        )
        page.wait_idle()
        assert page.page.locator("#model-version").inner_text() == "3"
        assert page.page.evaluate("window.sameDocument") is True  # the same page, never reloaded
        page.assert_only_loopback()
    finally:
        for version in ("3", "2"):
            remove_version(shelf / "names" / version)
        wait_for(lambda: (1, "AVAILABLE") in served_versions(shelf_server, "names"), "names version 1 to serve")


def test_the_page_waits_for_a_first_model_and_shows_it_when_it_loads(
    tabs, export: Path, digits: list[Path], tmp_path: Path
) -> None:
    """serve --wait_for_model before any export: the page says it waits, and shows the model once it
    loads (it asks again after the server's Retry-After), without reloading."""
    root = tmp_path / "models"
    root.mkdir()
    flags = ["--poll_seconds", "0.5", "--wait_for_model"]
    waiting = start_models_server(root, tmp_path / "server.log", *flags, ready="/healthz")
    try:
        page = tabs(waiting.url, described=False)
        status = page.page.locator("#model-status")
        page.page.wait_for_function(
            "() => document.querySelector('#model-status').textContent.startsWith('No model is loaded yet')"
        )
        assert status.inner_text() == "No model is loaded yet: the server is waiting for one to be trained."
        assert page.page.locator("#model-choice").is_disabled()
        assert page.page.locator("#model-facts").is_hidden()
        page.page.evaluate("window.sameDocument = true")
        (root / "digits").mkdir()
        add_version(export, root / "digits" / "1")
        page.page.locator("#model-facts").wait_for(state="visible")
        page.wait_idle()
        assert status.is_hidden()
        assert page.page.locator("#model-choice").input_value() == "digits"
        assert page.page.locator("#model-choice").is_enabled()
        page.upload(digits[5])
        page.wait_answered(1)
        assert page.ranks(digits[5].name)[0][0] == "5"
        assert page.answered_by(digits[5].name) == "Answered by digits, version 1"
        assert page.page.evaluate("window.sameDocument") is True
    finally:
        waiting.stop()


def test_screenshot_of_the_page_after_a_few_digits(shelf_visit, digits: list[Path], tmp_path: Path) -> None:
    page = shelf_visit(1280, 800)
    page.choose("digits")
    page.upload(*(digits[i] for i in (3, 7, 0, 9)), ("notes.png", TEXT))
    page.wait_answered(5)
    page.page.wait_for_load_state("networkidle")
    screenshot = README_SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / "serve-page.png"
    page.page.screenshot(path=str(screenshot), full_page=True)
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.width == 1280 and image.height >= 800
        assert len(image.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 50  # not a blank page
    page.assert_only_loopback()


def test_the_api_docs_render_offline_with_every_operation(browser: Browser, server: Server) -> None:
    """/docs is Swagger UI served by serve itself: it renders the schema's operations, loading
    nothing from any other host (FastAPI's default loads it from a CDN: a blank page offline)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{server.url}/docs")
        page.locator(".opblock").first.wait_for(state="visible")
        shown = set(page.locator(".opblock-summary-path").all_inner_texts())
        schema = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
        assert {path.replace("\u200b", "") for path in shown} >= set(schema["paths"])
        outside = [url for url in requests if not url.startswith("data:") and urlsplit(url).hostname != "127.0.0.1"]
        assert requests and outside == []
    finally:
        context.close()


# --- the Train view ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`serve --models_dir <empty> --admin_token_file`: the job API on, no model yet."""
    root = tmp_path_factory.mktemp("web_train")
    (root / "models").mkdir()
    (root / "token").write_text(TOKEN + "\n")
    flags = ["--admin_token_file", str(root / "token"), "--wait_for_model", "--poll_seconds", "0.5"]
    running = start_models_server(root / "models", root / "server.log", *flags, ready="/healthz")
    yield running
    running.stop()


def bundled(label: str) -> list[Path]:
    return sorted((DIGITS / label).glob("*.png"))


def test_a_model_trained_in_the_page_from_files_and_a_photo_answers_in_predict(tabs, trainer: Server) -> None:
    page = tabs(trainer.url, described=False, permissions=["camera"])
    page.open_train()
    # The token is asked for first; a wrong one is refused and not kept.
    assert page.page.locator("#train-fields").is_hidden()
    page.enter_token("not-the-token-0123456789")
    assert "not the admin token" in page.page.locator("#token-error").inner_text()
    assert page.kept_tokens() == [None, 0]
    page.enter_token(TOKEN)
    page.page.locator("#train-fields").wait_for(state="visible")
    assert page.page.locator("#token-form").is_hidden()
    assert page.kept_tokens() == [TOKEN, 0]  # this tab's sessionStorage only

    # The model's name is checked as the server checks it.
    page.page.get_by_label("Model name").fill("-pair")
    page.page.get_by_role("button", name="Train", exact=True).click()
    assert page.page.locator("#train-problem").inner_text().startswith("A model name is letters, digits")
    assert page.page.get_by_label("Model name").get_attribute("aria-invalid") == "true"
    page.page.get_by_label("Model name").fill("pair")

    # Two classes: digits chosen as files, one dropped on its class, one photo from the (fake) camera.
    for label in ("zero", "one"):
        page.add_class(label)
    page.add_to_class("zero", *bundled("0")[:15])
    page.add_to_class("one", *bundled("1")[:14])
    extra = bundled("1")[14]
    page.drop(extra.name, extra.read_bytes(), target='.class-card[data-label="one"]')
    assert (page.class_count("zero"), page.class_count("one")) == (15, 15)
    zero = page.class_card("zero")
    assert zero.locator(".count").inner_text() == "15 images"
    assert zero.locator(".class-thumbs img").count() == 15
    zero.get_by_role("button", name="Take photos of zero").click()
    page.page.locator("#capture:enabled").wait_for()
    assert page.page.locator("#camera-title").inner_text() == "Camera: photos of zero"
    page.page.get_by_role("button", name="Take the photo").click()
    page.page.wait_for_function("() => document.querySelector('.class-card[data-label=zero]').dataset.count === '16'")
    photo = zero.locator(".class-thumbs img").last
    assert photo.get_attribute("alt") == "photo-1.jpg"
    page.page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=photo.element_handle())
    page.page.get_by_role("button", name="Done with the camera").click()
    assert page.page.locator("#camera").is_hidden()
    assert page.page.evaluate("document.querySelector('#camera-video').srcObject") is None  # the camera is off

    page.page.get_by_label("Training steps").fill("200")
    page.page.get_by_role("button", name="Train", exact=True).click()
    job = page.page.locator("#job")
    job.wait_for(state="visible")
    page.page.wait_for_function(
        "() => document.querySelector('#job').getAttribute('aria-busy') === 'false'", timeout=TRAIN_MS
    )
    assert page.page.locator("#job-error").inner_text() == ""
    assert page.page.locator("#job-state").inner_text() == "Trained: version 1 of pair is served."
    assert page.page.locator("#job-model").inner_text() == "pair"
    assert page.page.locator("#job-step").inner_text() == "200 of 200"
    assert page.page.locator("#job-images").inner_text().startswith("31 images in 2 classes: ")
    assert page.page.locator("#job-train-accuracy").inner_text().endswith("%")
    assert page.page.evaluate("document.querySelector('#job-bar').value") == 1

    # "Try it": the Predict view, the new version chosen; a digit 1 the model never saw is "one".
    page.page.get_by_role("button", name="Try it").click()
    assert page.page.get_by_role("tab", name="Predict").get_attribute("aria-selected") == "true"
    assert page.page.locator("#view-train").is_hidden()
    page.wait_idle()
    assert page.page.locator("#model-choice").input_value() == "pair"
    assert page.page.locator("#version-choice").input_value() == "1"
    assert page.page.locator("#picker-status").inner_text() == "Just trained: your images now go to version 1 of pair."
    unseen = bundled("1")[-1]
    page.upload(unseen)
    page.wait_answered(1)
    assert page.ranks(unseen.name)[0][0] == "one"
    assert page.answered_by(unseen.name) == "Answered by pair, version 1"
    assert page.card(unseen.name).get_attribute("data-model") == "pair"
    page.assert_only_loopback()
    assert not [url for url in page.requests if TOKEN in url]  # the token never goes into a URL


def test_a_refused_job_shows_the_servers_reason_and_a_running_one_can_be_cancelled(tabs, trainer: Server) -> None:
    page = tabs(trainer.url, described=False)
    page.open_train()
    page.enter_token(TOKEN)
    page.page.get_by_label("Model name").fill("slow")
    for label, digit in (("nought", "0"), ("unit", "1")):  # images whose features the cache may hold already
        page.add_class(label)
        page.add_to_class(label, *bundled(digit)[:10])
    train = page.page.get_by_role("button", name="Train", exact=True)
    idle = "() => document.querySelector('#job').getAttribute('aria-busy') === 'false'"
    page.page.get_by_label("Training steps").fill("999999")  # over the server's --max_job_steps
    train.click()
    page.page.wait_for_function(idle)
    assert page.page.locator("#job-error").inner_text() == (
        "The server refused the job: how_many_training_steps must be 1 to 20000 (--max_job_steps), not '999999'"
    )
    assert page.page.locator("#try-it").is_hidden() and train.is_enabled()

    page.page.get_by_label("Training steps").fill("20000")
    train.click()
    assert train.is_disabled()  # one job at a time from the page
    page.page.wait_for_function("() => document.querySelector('#job-phase').textContent === 'Training'")
    page.page.get_by_role("button", name="Cancel the job").click()
    page.page.wait_for_function(idle)
    assert page.page.locator("#job-state").inner_text() == "Cancelled: nothing was exported."
    assert page.page.locator("#job-error").inner_text() == ""
    assert page.page.locator("#try-it").is_hidden() and train.is_enabled()
    assert served_versions(trainer, "slow") == []


def test_the_token_is_asked_once_per_tab_and_again_when_refused(tabs, trainer: Server) -> None:
    page = tabs(trainer.url, described=False)
    page.open_train()
    assert page.page.url.endswith("#train")
    page.enter_token(TOKEN)
    page.page.locator("#train-fields").wait_for(state="visible")
    # A reload keeps the view and the token: not asked again.
    page.page.reload()
    page.wait_train_idle()
    page.page.locator("#train-fields").wait_for(state="visible")
    assert page.page.locator("#token-form").is_hidden() and page.kept_tokens() == [TOKEN, 0]
    # Another tab (here a new browser context) has its own session: asked there.
    other = tabs(trainer.url, described=False)
    other.open_train()
    assert other.page.locator("#token-form").is_visible() and other.kept_tokens() == [None, 0]
    # A token the server refuses (say, after a restart with a new token file) is forgotten and asked for.
    page.page.evaluate(f"sessionStorage.setItem('{TOKEN_KEY}', 'an-old-token-0123456789')")
    page.page.reload()
    page.wait_train_idle()
    page.page.locator("#token-form").wait_for(state="visible")
    assert (
        page.page.locator("#token-error").inner_text()
        == "The server refused the admin token (wrong admin token). Enter it again."
    )
    assert page.kept_tokens() == [None, 0]
    page.enter_token(TOKEN)
    page.page.get_by_role("button", name="Forget it").click()
    assert page.page.locator("#token-form").is_visible() and page.kept_tokens() == [None, 0]


def test_class_names_are_text_and_the_train_view_fits_a_phone(tabs, trainer: Server) -> None:
    page = tabs(trainer.url, 375, 740, described=False)
    page.open_train()
    page.enter_token(TOKEN)
    problem = page.page.locator("#train-problem")
    for bad, message in (
        ("a/b", "A class name cannot hold /, \\ or :."),
        (".hidden", "A class name cannot start with a dot."),
        ("", "Give the class a name."),
    ):
        page.add_class(bad)
        assert problem.inner_text() == message, bad
    markup = MARKUP[1]
    page.add_class(markup)
    page.add_class(markup)
    assert problem.inner_text() == f"There is a class {markup} already."
    page.add_class("IMG_20261122_101502_HDR_portrait_from_the_camera_roll_of_a_phone")
    card = page.class_card(markup)
    assert card.locator("h3").inner_text() == markup and card.locator("h3 img").count() == 0
    page.add_to_class(markup, *bundled("7")[:3])
    assert card.locator(".class-thumbs img").count() == 3
    assert page.page.evaluate("typeof window.pwned") == "undefined"
    page.page.get_by_label("Model name").fill("phone")
    page.page.get_by_role("button", name="Train", exact=True).click()
    long = "IMG_20261122_101502_HDR_portrait_from_the_camera_roll_of_a_phone"
    assert problem.inner_text() == f"Class {long} has no images: add some, or remove it."
    assert page.page.evaluate("document.documentElement.scrollWidth") <= 375
    card.get_by_role("button", name=f"Remove {bundled('7')[0].name}", exact=True).click()  # one of its images
    assert page.class_count(markup) == 2
    page.class_card(long).get_by_role("button", name=f"Remove class {long}").click()
    page.page.get_by_role("button", name="Train", exact=True).click()
    assert problem.inner_text() == "Add at least two classes, each with images: a model tells classes apart."
    assert page.page.locator("#job").is_hidden()  # nothing was sent


def test_the_train_view_says_how_to_turn_training_on(tabs, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    server = start_models_server(tmp_path / "models", tmp_path / "server.log", "--wait_for_model", ready="/healthz")
    try:
        page = tabs(server.url, described=False)
        # The tabs from the keyboard: the chosen one is in the Tab order, arrows choose the other.
        page.page.keyboard.press("Tab")
        assert page.page.evaluate("document.activeElement.id") == "tab-predict"
        page.page.keyboard.press("ArrowRight")
        assert page.page.evaluate("document.activeElement.id") == "tab-train"
        assert page.page.locator("#tab-train").get_attribute("aria-selected") == "true"
        assert page.page.locator("#view-predict").is_hidden()
        page.wait_train_idle()
        status = page.page.locator("#train-status").inner_text()
        assert status.startswith("Training is off on this server (it says: the job API is off:")
        assert "--admin_token_file FILE" in status
        assert page.page.locator("#token-form").is_hidden() and page.page.locator("#train-fields").is_hidden()
        page.page.keyboard.press("ArrowLeft")
        assert page.page.locator("#view-predict").is_visible() and page.page.locator("#view-train").is_hidden()
        page.assert_only_loopback()
    finally:
        server.stop()


def test_the_pages_zip_is_read_by_zipfile_and_unpacked_by_serve(tabs, trainer: Server, tmp_path: Path) -> None:
    """train.js's own zip writer (stored members, CRC-32, UTF-8 names), checked against zipfile and
    the job API's unpacker."""
    page = tabs(trainer.url, described=False)
    members = {"zero/a.png": bytes(range(256)) * 3, "café/ü.jpg": b"\xff\xd8 not much", "café/empty.png": b""}
    data = page.page.evaluate(
        """async (members) => {
            const entries = Object.entries(members).map(
                ([name, bytes]) => ({ name, blob: new Blob([new Uint8Array(bytes)]) }),
            );
            const zip = await storedZip(entries, new Date(2026, 10, 22, 10, 15, 30));
            return Array.from(new Uint8Array(await zip.arrayBuffer()));
        }""",
        {name: list(value) for name, value in members.items()},
    )
    archive = tmp_path / "page.zip"
    archive.write_bytes(bytes(data))
    with zipfile.ZipFile(archive) as zipped:
        assert zipped.testzip() is None  # every CRC-32 right
        assert [info.filename for info in zipped.infolist()] == list(members)
        assert {name: zipped.read(name) for name in members} == members
        assert {info.compress_type for info in zipped.infolist()} == {zipfile.ZIP_STORED}
        assert zipped.infolist()[0].date_time == (2026, 11, 22, 10, 15, 30)
    from serve.jobs.archive import unpack

    (tmp_path / "out").mkdir()
    unpacked = unpack(archive, tmp_path / "out")
    assert (unpacked / "café" / "ü.jpg").read_bytes() == members["café/ü.jpg"]
