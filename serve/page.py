"""The web page for label queries, and the model description it shows.

    GET /                        the page (serve/web/index.html)
    GET /web/{name}              its scripts (app.js; train.js, the Train view) and style.css; the page
                                 loads nothing from any other host
    GET /models                  every model served: its versions and their states
    GET /model?model=&version=   one version's card: labels, backbone, when it was trained, test
                                 accuracy, report plots (the only model's highest version by default)
    GET /model/plots/{name}      a report plot of that version: only the names in REPORT_PLOTS
    GET /v1/models/{name}[/versions/{v}]/model.tflite, /web/vendor/tasks-vision/...
                                 for its "Run in this browser" switch (serve.device)

The page asks `POST /predict?model=&version=` like any API client (the version left out for the
default) and fetches `/models` and `/model` again after each answer and when its picker is opened,
so a new model or version shows up without reloading the page. While serve waits for its first
model, /model answers 503 and the page says so and asks again.
With "Run in this browser" on, device.js classifies the images in the page instead, with MediaPipe
Tasks for Web and the chosen version's model.tflite: nothing is uploaded.
Its Train view is a client of the job API (serve/jobs/routes.py) like curl: it zips the images in the
browser, sends the admin token it keeps in the tab's sessionStorage, and follows the job's events.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from serve.api_schema import errors
from serve.device import device_routes
from serve.model_info import REPORT_PLOTS
from serve.models.manager import ModelManager, ModelNotFoundError, NoModelError
from serve.text import printable

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "train.js": "text/javascript; charset=utf-8",
    "device.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
NO_CACHE = {"cache-control": "no-cache"}  # a browser revalidates, so an upgraded serve shows its new page


class Plot(BaseModel):
    name: str
    title: str
    url: str


class VersionState(BaseModel):
    version: int
    state: str  # TF Serving's: LOADING, AVAILABLE, UNLOADING, END
    error: str = ""


class ModelVersions(BaseModel):
    name: str
    versions: list[VersionState]  # the newest first


class ModelList(BaseModel):
    models: list[ModelVersions]


class ModelSummary(BaseModel):
    """What a person wants to know about a model version before trusting its answers."""

    name: str
    export: str  # the export folder's name: its version number in retrain's layout
    version: int
    labels: list[str]
    backbone: str
    created: str | None  # UTC, ISO 8601, from model.json
    test_accuracy: float | None  # 0..1 on `test_count` held-out images
    test_count: int | None
    estimate: str | None = None  # how accuracy was estimated without test images (cross-validation)
    plots: list[Plot]


def page_routes(manager: ModelManager, variant: str = "tflite") -> APIRouter:
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

    def chosen(name: str | None) -> str:
        if name is not None:
            return name
        answering = list(manager.available()) or manager.names()  # the first that can answer, if any can
        if not answering:
            raise NoModelError(f"no model loaded yet: waiting for one in {printable(manager.catalog.describe())}")
        return answering[0]

    @router.get("/models", response_model=ModelList)
    async def models() -> ModelList:
        """Every model served, with its versions and their states (the page's model and version picker)."""
        listed = []
        for name in manager.names():
            try:
                versions = [VersionState(**status.__dict__) for status in manager.status(name)]
            except ModelNotFoundError:  # unloaded between the two calls
                continue
            listed.append(ModelVersions(name=name, versions=versions))
        return ModelList(models=listed)

    @router.get("/model", response_model=ModelSummary, responses=errors(404, 503))
    async def model_summary(model: str | None = None, version: int | None = None) -> ModelSummary:
        """A model version's card: labels, backbone, training time, test accuracy and the report plots it
        has. By default the first model's highest available version."""
        name = chosen(model)
        with manager.lease(name, version) as served:
            model = served.model
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
        where = f"model={quote(name)}&version={model.version}"  # a new version gets new plot URLs
        plots = [
            Plot(name=plot, title=title, url=f"/model/plots/{plot}?{where}")
            for plot, title in REPORT_PLOTS.items()
            if (model.directory / plot).is_file()
        ]
        return ModelSummary(
            name=name,
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
    async def report_plot(name: str, model: str | None = None, version: int | None = None) -> FileResponse:
        """A report plot next to a version's model.json (confusion_matrix.png, training_curves.png); 404 otherwise."""
        with manager.lease(chosen(model), version) as served:
            path = served.model.directory / name
        if name not in REPORT_PLOTS or not path.is_file():
            raise HTTPException(404, f"this model has no report plot {name!r}")
        return FileResponse(path, media_type="image/png", headers=NO_CACHE)

    router.include_router(device_routes(manager, variant))
    return router


def _number(value) -> float | None:
    """A number model.json holds, or None for a missing or malformed one."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
