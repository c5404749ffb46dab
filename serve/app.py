"""The HTTP API: a plain upload endpoint plus TensorFlow Serving's REST shapes.

    POST /predict?model=&version=         multipart upload(s) -> ranked labels
    POST /v1/models/{name}[/versions/{v} | /labels/{label}]:predict
                                          {"instances": [{"b64": ...}]} -> {"predictions": [...]}
    POST /v1/models/{name}[...]:classify  {"examples": [{"b64": ...}]} -> {"result": [[[label, score], ...]]}
    GET  /v1/models/{name}[/versions/{v}] model_version_status
    GET  /v1/models/{name}[/versions/{v}]/metadata   signature and labels
    GET  /healthz, /readyz, /labels?model=&version=
    GET  /, /models, /model, /model/plots/{name}   the web page and what it shows (serve.page)

Errors are `{"error": "..."}`: 400 bad image or JSON, 404 unknown model, version or label, 413 too
large, 415 not an image or not a multipart upload, 503 (with Retry-After) while a model is still
loading or none is there yet (`--wait_for_model`). Then /healthz still answers 200 (the process is
alive) and /readyz, like every endpoint that needs a model, answers 503.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.api_schema import (
    CLASSIFY_REQUEST,
    PREDICT_REQUEST,
    UPLOAD_REQUEST,
    AnsweredBy,
    ClassifyResponse,
    TFPredictResponse,
    complete_openapi,
    errors,
)
from serve.budget import DecodeBudget
from serve.docs import docs_routes
from serve.jobs.routes import JobSettings, job_routes
from serve.jobs.runner import JobRunner
from serve.metrics import ServeMetrics
from serve.middleware import AccessLog, BodiesInFlightError, BodyLimit, HostAllowList, RequestTooLargeError
from serve.models.manager import ModelManager, ModelNotFoundError, NoModelError
from serve.models.servable import ServedModel
from serve.page import page_routes
from serve.preprocess import ImageDecodeError, ImageTooLargeError, NotAnImageError, preprocess
from serve.text import printable

log = logging.getLogger("serve")

MAX_TOP_K = 1000
# JSON punctuation a request of N images needs at most ({"instances": [{"b64": "..."}, ...]} and the
# columnar form): more is refused before parsing, since a 32 MiB body of `[],` holds 11 million lists.
JSON_TOKENS_PER_IMAGE = 8
JSON_TOKENS_SPARE = 64
INLINE_JSON_BYTES = 64 * 2**10


@dataclass(frozen=True)
class ServeSettings:
    """The server's limits; each is a `serve` flag of the same name (README, "Limits")."""

    max_request_bytes: int = 32 * 2**20
    max_image_pixels: int = 40_000_000
    max_images_per_request: int = 64
    decode_memory_bytes: int = 768 * 2**20  # decoding at once, across all requests (serve.budget)
    max_body_bytes_in_flight: int = 128 * 2**20  # request bodies being received at once
    allowed_hosts: tuple[str, ...] = ("*",)  # Host header values served; "*" any
    cors_origins: tuple[str, ...] = ()  # origins whose pages may read the answers; none by default
    retry_after_seconds: int = 5  # told to clients while no model is loaded yet
    max_job_upload_bytes: int = 1024 * 2**20  # a job's zip (spooled to disk, not held in memory)
    variant: str = "tflite"  # which TFLite file of each export runs (--variant), and goes to a browser


class ClientGoneError(Exception):
    """The client disconnected before its answer was ready: logged, answered 499 (nobody reads it)."""


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Prediction(BaseModel):
    label: str
    score: float


class PredictResponse(BaseModel):
    """One uploaded image's labels, best first."""

    filename: str | None = None
    predictions: list[Prediction]
    model_spec: AnsweredBy | None = None  # on a one-file answer; a several-file answer has it once, beside results


class MultiPredictResponse(BaseModel):
    """Several uploads: one entry per file, in upload order."""

    results: list[PredictResponse]
    model_spec: AnsweredBy


class Labels(BaseModel):
    labels: list[str]


class Health(BaseModel):
    status: str


class ServedVersion(BaseModel):
    """A model's version answering requests that name no version."""

    name: str
    version: int
    export: str  # the export folder's path, as loaded
    labels: int


class RefusedVersion(BaseModel):
    """A version that was refused; the model's other versions still serve."""

    name: str
    version: int
    export: str
    error: str


class Readiness(BaseModel):
    status: str
    models: list[ServedVersion]
    refused: list[RefusedVersion] = []


def create_app(
    manager: ModelManager,
    settings: ServeSettings = ServeSettings(),
    metrics: ServeMetrics | None = None,
    jobs: JobRunner | None = None,
    job_settings: JobSettings | None = None,
) -> FastAPI:
    """The FastAPI app serving the models `manager` holds (their versions come and go while it runs),
    and, with `jobs`, training them through the job API (serve.jobs.routes)."""
    app = FastAPI(
        title="retrain serve",
        description="Label queries for an image classifier exported by retrain.",
        version="1",
        docs_url=None,  # served from this package by serve.docs, not from a CDN
        redoc_url=None,
        responses=errors(500),
    )
    app.openapi = lambda: complete_openapi(app)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_request_bytes,
        max_in_flight=settings.max_body_bytes_in_flight,
        uploads=("/jobs", settings.max_job_upload_bytes),
    )
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"])
    app.add_middleware(HostAllowList, hosts=list(settings.allowed_hosts))
    metrics = metrics or ServeMetrics()
    app.add_middleware(AccessLog, metrics=metrics)
    budget = DecodeBudget(settings.decode_memory_bytes)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(RequestTooLargeError)
    async def too_large(_: Request, error: RequestTooLargeError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=413)

    @app.exception_handler(ClientGoneError)
    async def client_gone(request: Request, error: ClientGoneError) -> JSONResponse:
        log.warning("%s %s: %s", request.method, printable(request.url.path), error)
        return JSONResponse({"error": str(error)}, status_code=499)

    @app.exception_handler(BodiesInFlightError)
    async def busy(_: Request, error: BodiesInFlightError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=503, headers={"retry-after": "1"})

    @app.exception_handler(ModelNotFoundError)
    async def not_found(_: Request, error: ModelNotFoundError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=404)

    @app.exception_handler(NoModelError)
    async def no_model(_: Request, error: NoModelError) -> JSONResponse:
        headers = {"retry-after": str(settings.retry_after_seconds)}
        return JSONResponse({"error": str(error)}, status_code=503, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return JSONResponse({"error": problems}, status_code=400)

    async def scores_for(
        request: Request, name: str, served: ServedModel, images: list[bytes], names: list[str] | None = None
    ) -> list[np.ndarray]:
        """Preprocesses off the event loop, then waits for the batcher; order is kept. A client that
        has gone is noticed between images, and the rest of its work is not done."""
        request.state.model, request.state.version = name, served.model.version
        spec = served.model.info.input_spec
        pixels = []
        for index, data in enumerate(images):
            if index and await request.is_disconnected():
                raise ClientGoneError(f"client gone: stopped after decoding {index} of {len(images)} images")
            try:
                pixels.append(await run_in_threadpool(preprocess, data, spec, settings.max_image_pixels, budget))
            except ImageDecodeError as e:
                raise _image_error(e, names[index] if names else f"image {index}") from e
        futures = [served.submit(p) for p in pixels]
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def chosen(name: str | None) -> str:
        """The model a request names, or the only one served when it names none."""
        if name is not None:
            return name
        names = manager.names()
        if len(names) == 1:
            return names[0]
        if not names:
            raise NoModelError(f"no model loaded yet: waiting for one in {printable(manager.catalog.describe())}")
        listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise ApiError(400, f"this server serves {len(names)} models: name one with ?model= ({listed})")

    def model_spec(name: str, served: ServedModel) -> dict[str, str]:
        return {"name": name, "version": str(served.model.version)}

    @app.post(
        "/predict",
        response_model=PredictResponse | MultiPredictResponse,
        response_model_exclude_none=True,
        responses=errors(400, 413, 415, 503),
        openapi_extra=UPLOAD_REQUEST,
    )
    async def predict_upload(
        request: Request,
        top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = 5,
        model: Annotated[str | None, Query(description="The model; may be left out when only one is served.")] = None,
        version: Annotated[int | None, Query(description="Its version; by default the highest available.")] = None,
    ) -> dict[str, Any]:
        """Upload one or more images (multipart, any field name); get each one's top_k labels."""
        name = chosen(model)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(415, "send images as multipart/form-data, e.g. curl -F file=@photo.jpg")
        limit = settings.max_images_per_request
        async with request.form(max_files=limit, max_fields=limit) as form:
            uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
            if not uploads:
                raise ApiError(400, "no file in the upload; use e.g. curl -F file=@photo.jpg")
            images = [await upload.read() for upload in uploads]
            names = [upload.filename for upload in uploads]
        with manager.lease(name, version) as served:
            files = [file or f"file {i}" for i, file in enumerate(names)]
            rows = await scores_for(request, name, served, images, files)
            results = [
                {"filename": file, "predictions": [r.__dict__ for r in served.model.rank(row, top_k)]}
                for file, row in zip(names, rows, strict=True)
            ]
            spec = model_spec(name, served)
        return {**results[0], "model_spec": spec} if len(results) == 1 else {"results": results, "model_spec": spec}

    async def tf_serving_predict(
        name: str, request: Request, version: int | None = None, label: str | None = None
    ) -> dict[str, Any]:
        """TensorFlow Serving's predict: row (`instances`) or columnar (`inputs`) format, images as {"b64": ...}."""
        with manager.lease(name, version, label):  # a 404 before the body is read
            pass
        body = await _json_body(request, settings.max_images_per_request)
        columnar = "inputs" in body
        images = _images_from(body, ("inputs",) if columnar else ("instances",), settings.max_images_per_request)
        with manager.lease(name, version, label) as served:
            rows = await scores_for(request, name, served, images)
            labels, spec = served.model.labels, model_spec(name, served)
        if columnar:
            outputs = {"scores": [row.tolist() for row in rows], "classes": [labels for _ in rows]}
            return {"outputs": outputs, "model_spec": spec}
        return {"predictions": [{"scores": row.tolist(), "classes": labels} for row in rows], "model_spec": spec}

    async def tf_serving_classify(
        name: str, request: Request, version: int | None = None, label: str | None = None
    ) -> dict[str, Any]:
        """TensorFlow Serving's classify: {"examples": [...]} -> {"result": [[[label, score], ...]]}, best first."""
        with manager.lease(name, version, label):  # a 404 before the body is read
            pass
        body = await _json_body(request, settings.max_images_per_request)
        images = _images_from(body, ("examples", "instances"), settings.max_images_per_request)
        with manager.lease(name, version, label) as served:
            rows = await scores_for(request, name, served, images)
            ranked = [served.model.rank(row, len(row)) for row in rows]
            spec = model_spec(name, served)
        return {"result": [[[r.label, r.score] for r in ranking] for ranking in ranked], "model_spec": spec}

    # TF Serving's paths: the available version, a version by number, or by label.
    for suffix, where in (("", ""), ("/versions/{version}", "_version"), ("/labels/{label}", "_label")):
        for verb, handler, response, body in (
            ("predict", tf_serving_predict, TFPredictResponse, PREDICT_REQUEST),
            ("classify", tf_serving_classify, ClassifyResponse, CLASSIFY_REQUEST),
        ):
            app.add_api_route(
                f"/v1/models/{{name}}{suffix}:{verb}",
                handler,
                methods=["POST"],
                operation_id=f"tf_serving_{verb}{where}",
                response_model=response,
                response_model_exclude_none=True,
                responses=errors(400, 404, 413, 415, 503),
                openapi_extra=body,
            )

    @app.get("/v1/models/{name}", responses=errors(404, 503))
    async def tf_serving_status(name: str, version: int | None = None) -> dict[str, Any]:
        """TensorFlow Serving's model status: every version's state (a version asked for: its own)."""
        statuses = manager.status(name)
        if not statuses:  # a model whose first version has not appeared yet
            raise NoModelError(f"no model loaded yet: model {name!r} has no version yet")
        if version is not None:
            statuses = [status for status in statuses if status.version == version]
            if not statuses:
                raise ApiError(404, f"model {name!r} has no version {version}")
        return {
            "model_version_status": [
                {
                    "version": str(status.version),
                    "state": status.state,
                    # TF Serving's status of a version that failed to load: END with its error
                    "status": {
                        "error_code": "INVALID_ARGUMENT" if status.error else "OK",
                        "error_message": status.error,
                    },
                }
                for status in statuses
            ]
        }

    @app.get("/v1/models/{name}/metadata", responses=errors(404, 503))
    async def tf_serving_metadata(name: str, version: int | None = None) -> dict[str, Any]:
        """TensorFlow Serving's metadata: the signature, plus the labels and the export's model.json."""
        with manager.lease(name, version) as served:
            model = served.model
        count = len(model.labels)
        signature = {
            "inputs": {"image_bytes": {"dtype": "DT_STRING", "tensor_shape": {"dim": [{"size": "-1"}]}}},
            "outputs": {
                "scores": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}, {"size": str(count)}]}},
                "classes": {"dtype": "DT_STRING", "tensor_shape": {"dim": [{"size": "-1"}, {"size": str(count)}]}},
            },
            "method_name": "tensorflow/serving/predict",
        }
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
            "labels": model.labels,
            "model": model.info.to_json(),
        }

    for path, handler in (("", tf_serving_status), ("/metadata", tf_serving_metadata)):  # one version's
        operation = f"{handler.__name__}_version"
        route = f"/v1/models/{{name}}/versions/{{version}}{path}"
        app.add_api_route(route, handler, methods=["GET"], operation_id=operation, responses=errors(404, 503))

    @app.get("/labels", response_model=Labels, responses=errors(400, 404, 503))
    async def labels(model: str | None = None, version: int | None = None) -> dict[str, Any]:
        """The labels a model answers with, in score order (the only model's when none is named)."""
        with manager.lease(chosen(model), version) as served:
            return {"labels": served.model.labels}

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, response_model_exclude_none=True, responses=errors(503))
    async def readyz() -> dict[str, Any]:
        """Readiness: a model is loaded and has passed its start-up inference (503 while none has).
        Lists the version of each model that answers requests naming none, and refused versions."""
        if not manager.ready:
            raise NoModelError(f"no model loaded yet: waiting for one in {printable(manager.catalog.describe())}")
        models = [
            {"name": name, "version": versions[0].model.version, "export": str(versions[0].model.directory),
             "labels": len(versions[0].model.labels)}
            for name, versions in manager.available().items()
        ]  # fmt: skip
        refused = [
            {"name": r.model, "version": r.version, "export": str(r.directory), "error": r.error}
            for r in manager.refusals()
        ]
        return {"status": "ready", "models": models, "refused": refused}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {metrics.content_type: {}}}})
    async def prometheus_metrics() -> Response:
        """Prometheus metrics: requests and latency by model, version, endpoint and status; batch sizes;
        model loads; the versions available."""
        return Response(metrics.render(), media_type=metrics.content_type)

    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):  # monitors that probe with HEAD
        app.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)
    app.include_router(page_routes(manager, settings.variant))
    app.include_router(job_routes(jobs, job_settings))
    app.include_router(docs_routes(app.title))
    return app


async def _json_body(request: Request, max_images: int) -> dict:
    """The body as a JSON object, refused before parsing when it holds more arrays, objects, members
    or items than `max_images` images need (parsing such a body is what costs memory)."""
    raw = await request.body()
    tokens = sum(raw.count(mark) for mark in (b"[", b"{", b",", b":"))
    if tokens > JSON_TOKENS_PER_IMAGE * max_images + JSON_TOKENS_SPARE:
        raise ApiError(413, f"the JSON body has more items than {max_images} images need (--max_images_per_request)")
    try:  # a large body is parsed off the event loop; a small one costs less than the thread hop
        body = await run_in_threadpool(json.loads, raw) if len(raw) > INLINE_JSON_BYTES else json.loads(raw)
    except RecursionError as e:
        raise ApiError(400, "malformed JSON: nested too deeply") from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer too long to convert
        raise ApiError(400, f"malformed JSON: {e}") from e
    if not isinstance(body, dict):
        raise ApiError(400, 'the JSON body must be an object, e.g. {"instances": [{"b64": "..."}]}')
    return body


def _images_from(body: dict, keys: tuple[str, ...], max_images: int) -> list[bytes]:
    """Image bytes from TF Serving's JSON: a list of {"b64": ...} or of {"<input>": {"b64": ...}},
    or, in columnar form, {"<input>": [{"b64": ...}, ...]}; more than `max_images` is a 413."""
    key = next((k for k in keys if k in body), None)
    if key is None:
        raise ApiError(400, f"the JSON body needs {' or '.join(repr(k) for k in keys)}")
    items = body[key]
    if isinstance(items, dict) and len(items) == 1:
        (items,) = items.values()
    if not isinstance(items, list) or not items:
        raise ApiError(400, f'{key!r} must be a non-empty list of {{"b64": ...}} images')
    if len(items) > max_images:
        raise ApiError(413, f"{len(items)} images in one request; at most {max_images} (--max_images_per_request)")
    return [_decode_b64(item, index) for index, item in enumerate(items)]


def _decode_b64(item: Any, index: int) -> bytes:
    if isinstance(item, dict) and len(item) == 1 and "b64" not in item:
        (item,) = item.values()  # {"image_bytes": {"b64": ...}}
    if not isinstance(item, dict) or not isinstance(item.get("b64"), str):
        raise ApiError(400, f'image {index}: expected {{"b64": "<base64 of the image file>"}}')
    try:
        return base64.b64decode(item["b64"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, f"image {index}: invalid base64 ({e})") from e


def _image_error(error: ImageDecodeError, name: str) -> ApiError:
    """413 for too many pixels, 415 for what is no image at all, 400 for a corrupt one."""
    if isinstance(error, ImageTooLargeError):
        return ApiError(413, f"{name}: {error}")
    if isinstance(error, NotAnImageError):
        return ApiError(415, f"{name}: {error}")
    return ApiError(400, f"{name}: {error}")
