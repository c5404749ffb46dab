"""The web page on serve, in a real browser: Debian's Chromium, headless, driven by Playwright.

What a person using the page relies on: it loads nothing from the internet, it describes the model,
a chosen or dropped image gets the labels `POST /predict` gives for it, a bad file gets a plain
error in its own card while the others stay, a reloaded model shows up on the next query without
reloading the page, and it fits a phone-sized screen. The screenshot in the README comes from here.

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
]
# The README's picture; the test rewrites it only when asked (UPDATE_SCREENSHOT=1), since the page
# shows when the model was trained and every session trains anew.
README_SCREENSHOT = REPO / "docs" / "screenshots" / "serve-page.png"
PLOTS = ["confusion_matrix.png", "training_curves.png"]
TEXT = b"These are notes, not an image.\n"
WAIT_MS = 60_000  # for anything the page waits on the server for; CI is slow


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


class Visit:
    """One browser tab on the page, with every URL it requested."""

    def __init__(self, page: Page, url: str):
        self.page = page
        self.requests: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.set_default_timeout(WAIT_MS)
        page.goto(url)
        page.locator("#model-facts").wait_for(state="visible")

    def upload(self, *files: Path | tuple[str, bytes]) -> None:
        """Through the file input, as a person picking files in the dialog does."""
        named = [(f.name, f.read_bytes()) if isinstance(f, Path) else f for f in files]
        payloads = [{"name": name, "mimeType": "image/png", "buffer": data} for name, data in named]
        self.page.set_input_files("#files", payloads)

    def drop(self, name: str, data: bytes) -> None:
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
            self.page.dispatch_event("#dropzone", event, {"dataTransfer": transfer})

    def wait_answered(self, count: int) -> None:
        """Until `count` cards have an answer or an error."""
        self.page.wait_for_function(
            "n => document.querySelectorAll('#results .card:not([data-state=pending])').length >= n", arg=count
        )

    def card(self, name: str):
        """The newest card of that file name (new cards come first)."""
        return self.page.locator(f'#results .card[data-filename="{name}"]').first

    def ranks(self, name: str) -> list[tuple[str, str]]:
        """(label, score text) of a card, best first."""
        rows = self.card(name).locator(".ranks li")
        return [(row.locator(".label").inner_text(), row.locator(".score").inner_text()) for row in rows.all()]

    def shown_labels(self) -> list[str]:
        return self.page.locator("#labels li").all_inner_texts()

    def assert_only_loopback(self) -> None:
        """Every request went to the server on 127.0.0.1 (blob: URLs are the page's own thumbnails)."""
        assert self.requests
        fetched = [url.removeprefix("blob:") for url in self.requests if not url.startswith("data:")]
        outside = [url for url in fetched if urlsplit(url).hostname != "127.0.0.1"]
        assert outside == []


@pytest.fixture
def visit(browser: Browser, server: Server) -> Iterator[Callable[..., Visit]]:
    """Opens the page in a fresh browser context of the given size."""
    contexts = []

    def open_page(width: int = 1280, height: int = 800) -> Visit:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        return Visit(context.new_page(), server.url)

    yield open_page
    for context in contexts:
        context.close()


# --- what /predict says ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> list[Path]:
    """Test-split digits, one of each class, in label order."""
    from retrain.images import discover

    by_label: dict[str, Path] = {}
    for entry in discover(DIGITS).splits["testing"]:
        by_label.setdefault(entry.path.parent.name, entry.path)
    return [by_label[label] for label in sorted(by_label)]


def predicted(server: Server, name: str, data: bytes) -> list[tuple[str, str]]:
    """(label, score as the page prints it) from POST /predict, best first."""
    response = httpx.post(f"{server.url}/predict?top_k=3", files={"file": (name, data, "image/png")}, timeout=60)
    assert response.status_code == 200, response.text
    return [(p["label"], f"{p['score'] * 100:.1f}%") for p in response.json()["predictions"]]


def big_png() -> bytes:
    """500x500 pixels: over the server's 100k-pixel limit."""
    buffer = io.BytesIO()
    Image.new("L", (500, 500), 255).save(buffer, "PNG")
    return buffer.getvalue()


# --- the page's files and the model routes, without a browser --------------------------------------


def loaded(directory: Path, version: int):
    """A LoadedModel without interpreters: enough for the page's routes, which never run the model."""
    from serve.model_info import read_model_info
    from serve.runtime import LoadedModel

    return LoadedModel(directory, read_model_info(directory), runners=[], version=version)


@pytest.fixture
def in_process(export: Path, tmp_path: Path) -> SimpleNamespace:
    """The app on a copy of the export's model.json with one report plot, and the store it reads."""
    from serve.app import create_app

    directory = tmp_path / "export"
    directory.mkdir()
    shutil.copy(export / "model.json", directory)
    shutil.copy(export / "labels.txt", directory)
    Image.new("RGB", (40, 30), "white").save(directory / "confusion_matrix.png")
    (tmp_path / "secret.png").write_bytes(b"not for the web")
    store = SimpleNamespace(current=loaded(directory, 12345))
    return SimpleNamespace(app=create_app(store), directory=directory, store=store)


def get(app, path: str) -> httpx.Response:
    """GET through the ASGI app in-process, on a thread of its own: Playwright's sync API owns this thread's loop."""

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
            return await client.get(path)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, send()).result()


def test_the_page_and_its_assets_have_their_content_types_and_no_external_urls(in_process) -> None:
    types = {"/": "text/html", "/web/app.js": "text/javascript", "/web/style.css": "text/css"}
    for path, kind in types.items():
        response = get(in_process.app, path)
        assert response.status_code == 200
        assert response.headers["content-type"] == f"{kind}; charset=utf-8"
        assert re.findall(r"https?://\S*", response.text) == [], path
    page = get(in_process.app, "/").text
    assert re.findall(r'(?:src|href)="([^"]+)"', page) == ["data:,", "/web/style.css", "/web/app.js", "/docs"]
    assert '<label for="files">' in page and '<input id="files" type="file" multiple accept="image/*">' in page
    assert 'name="viewport"' in page
    for missing in ("/web/index.html", "/web/nope.js", "/web/..%2Fpage.py"):
        response = get(in_process.app, missing)
        assert (response.status_code, set(response.json())) == (404, {"error"}), missing


def test_model_route_describes_the_model_and_lists_only_the_plots_it_has(in_process, export: Path) -> None:
    directory = in_process.directory
    info = json.loads((export / "model.json").read_text())
    summary = get(in_process.app, "/model").json()
    assert summary == {
        "name": "retrained",
        "export": "export",
        "version": 12345,
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
                "url": "/model/plots/confusion_matrix.png?v=export-12345",
            }
        ],
    }
    plot = get(in_process.app, summary["plots"][0]["url"])
    assert (plot.status_code, plot.headers["content-type"]) == (200, "image/png")
    assert plot.content == (directory / "confusion_matrix.png").read_bytes()
    for name in ("training_curves.png", "model.json", "..%2Fsecret.png", "%2E%2E%2Fsecret.png", "nope.png"):
        response = get(in_process.app, f"/model/plots/{name}")
        assert (response.status_code, set(response.json())) == (404, {"error"}), name


def test_model_route_gives_null_for_what_model_json_does_not_record(in_process) -> None:
    info = json.loads((in_process.directory / "model.json").read_text())
    del info["created"]
    info["metrics"] = {"test_accuracy": None, "test_count": "many"}
    (in_process.directory / "model.json").write_text(json.dumps(info))
    in_process.store.current = loaded(in_process.directory, 1)
    summary = get(in_process.app, "/model").json()
    assert (summary["created"], summary["test_accuracy"], summary["test_count"]) == (None, None, None)


def test_model_route_explains_a_cross_validated_estimate(in_process) -> None:
    info = json.loads((in_process.directory / "model.json").read_text())
    validation = {"method": "leave-one-out", "folds": 6, "images": 6, "accuracy": 0.5}
    info["metrics"] = {"test_accuracy": None, "test_count": 0, "cross_validation": validation}
    (in_process.directory / "model.json").write_text(json.dumps(info))
    in_process.store.current = loaded(in_process.directory, 1)
    summary = get(in_process.app, "/model").json()
    assert summary["test_accuracy"] is None
    assert summary["estimate"] == "50.0% by leave-one-out cross-validation over 6 images (too few for a test split)"


# --- the page in a browser ------------------------------------------------------------------------


def test_the_page_loads_only_from_the_server_and_describes_the_model(visit, export: Path) -> None:
    page = visit()
    info = json.loads((export / "model.json").read_text())
    metrics = info["metrics"]
    page.page.wait_for_load_state("networkidle")
    page.assert_only_loopback()
    assert page.page.locator("#backbone").inner_text() == info["backbone"]
    accuracy = f"{metrics['test_accuracy'] * 100:.1f}% of {metrics['test_count']} test images"
    assert page.page.locator("#accuracy").inner_text() == accuracy
    assert page.page.locator("#trained").inner_text() == f"{info['created'][:10]} {info['created'][11:16]} UTC"
    assert page.shown_labels() == info["labels"]
    assert page.page.locator("#plots figure").count() == 2  # retrain writes both report plots
    # The file input has a visible label and is the first stop of the keyboard.
    assert page.page.get_by_label("Drop images here, or choose them").get_attribute("id") == "files"
    page.page.keyboard.press("Tab")
    assert page.page.evaluate("document.activeElement.id") == "files"


def test_chosen_and_dropped_digits_show_the_labels_predict_gives(visit, server: Server, digits: list[Path]) -> None:
    page = visit()
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
    assert model["y"] > queries["y"]  # one column: the model's description below the images


def test_screenshot_of_the_page_after_a_few_digits(visit, digits: list[Path], tmp_path: Path) -> None:
    page = visit(1280, 800)
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
    page.page.evaluate("window.sameDocument = true")
    new = models.add("relabelled", with_plots)
    models.point_latest_at(new)
    try:
        wait_for(lambda: httpx.get(f"{server.url}/labels").json()["labels"] == NAMES, "the server to reload", 60)
        assert page.shown_labels() == labels_before  # nothing changes until the page asks something
        page.upload(digit)
        page.wait_answered(2)
        assert page.ranks(digit.name)[0][0] == "seven"
        page.page.wait_for_function("names => [...document.querySelectorAll('#labels li')].length === names", arg=10)
        page.page.wait_for_function("() => document.querySelector('#labels li').textContent === 'zero'")
        assert page.shown_labels() == NAMES
        assert page.page.locator("#export").inner_text() == "relabelled"
        assert "new model" in page.page.locator("#model-status").inner_text()
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
