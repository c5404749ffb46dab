"""The web page for label queries, and the model description it shows.

    GET /                        the page (serve/web/index.html)
    GET /web/{app.js,style.css}  its script and style; the page loads nothing from any other host
    GET /model                   labels, backbone, when it was trained, test accuracy, report plots
    GET /model/plots/{name}      a report plot of the current export: only the names in REPORT_PLOTS

The page asks `POST /predict` like any API client and fetches `/model` again after each answer,
so a reloaded model's labels show up on the next query without reloading the page. While serve
waits for its first model, /model answers 503 and the page says so and asks again.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from serve.api_schema import errors
from serve.model_info import REPORT_PLOTS
from serve.store import ModelStore

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
NO_CACHE = {"cache-control": "no-cache"}  # a browser revalidates, so an upgraded serve shows its new page


class Plot(BaseModel):
    name: str
    title: str
    url: str


class ModelSummary(BaseModel):
    """What a person wants to know about the model before trusting its answers."""

    name: str
    export: str  # the export folder's name, e.g. 20261122-001912
    version: int
    labels: list[str]
    backbone: str
    created: str | None  # UTC, ISO 8601, from model.json
    test_accuracy: float | None  # 0..1 on `test_count` held-out images
    test_count: int | None
    estimate: str | None = None  # how accuracy was estimated without test images (cross-validation)
    plots: list[Plot]


def page_routes(store: ModelStore, model_name: str) -> APIRouter:
    """Routes for the page and its model panel; the assets are read once, so a broken install fails at start."""
    web = resources.files("serve").joinpath("web")
    assets = {name: web.joinpath(name).read_bytes() for name in ASSETS}
    router = APIRouter()

    @router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> Response:
        return Response(assets["index.html"], media_type=ASSETS["index.html"], headers=NO_CACHE)

    @router.get("/web/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in assets or name == "index.html":
            raise HTTPException(404, f"no page asset {name!r}")
        return Response(assets[name], media_type=ASSETS[name], headers=NO_CACHE)

    @router.get("/model", response_model=ModelSummary, responses=errors(503))
    async def model_summary() -> ModelSummary:
        """The current model: labels, backbone, training time, test accuracy and the report plots it has."""
        model = store.current
        details = model.info.details
        metrics = details.get("metrics") if isinstance(details.get("metrics"), dict) else {}
        created = details.get("created")
        count = _number(metrics.get("test_count"))
        validation = metrics.get("cross_validation")
        estimate = None
        if isinstance(validation, dict) and _number(validation.get("accuracy")) is not None:
            estimate = (
                f"{validation['accuracy'] * 100:.1f}% by {validation.get('method', '')} cross-validation "
                f"over {validation.get('images', '?')} images (too few for a test split)"
            )
        tag = quote(f"{model.directory.name}-{model.version}")  # a new export gets new plot URLs
        plots = [
            Plot(name=name, title=title, url=f"/model/plots/{name}?v={tag}")
            for name, title in REPORT_PLOTS.items()
            if (model.directory / name).is_file()
        ]
        return ModelSummary(
            name=model_name,
            export=model.directory.name,
            version=model.version,
            labels=model.labels,
            backbone=model.info.backbone,
            created=created if isinstance(created, str) else None,
            test_accuracy=_number(metrics.get("test_accuracy")),
            test_count=None if count is None else int(count),
            estimate=estimate,
            plots=plots,
        )

    @router.get("/model/plots/{name}", response_class=FileResponse, responses=errors(404, 503))
    async def report_plot(name: str) -> FileResponse:
        """A report plot next to the current model.json (confusion_matrix.png, training_curves.png); 404 otherwise."""
        path = store.current.directory / name
        if name not in REPORT_PLOTS or not path.is_file():
            raise HTTPException(404, f"this model has no report plot {name!r}")
        return FileResponse(path, media_type="image/png", headers=NO_CACHE)

    return router


def _number(value) -> float | None:
    """A number model.json holds, or None for a missing or malformed one."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
