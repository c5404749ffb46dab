"""What the page needs to classify on the device: the model file, and MediaPipe Tasks for Web.

    GET /v1/models/{name}/model.tflite                     the model.tflite of the version /predict
    GET /v1/models/{name}/versions/{version}/model.tflite  would answer with (or of that version)
    GET /web/vendor/tasks-vision/{file}                    the runtime: vision_bundle.mjs, wasm/...

The model file is the export's model.tflite as it is: it carries its preprocessing and labels as
TFLite metadata, so MediaPipe's ImageClassifier (in the browser, or in an app) answers as serve
does. The version is resolved by the same manager lease as predict's, and named in the headers
x-model-name and x-model-version; the file is opened while the lease is held, so a version removed
meanwhile still finishes sending. Its ETag changes with the version, and `no-cache` makes a
browser revalidate (a 304 costs nothing) rather than keep an old version.

The runtime is @mediapipe/tasks-vision from npm, vendored at install time by
scripts/vendor_web.py into serve/web/vendor/tasks-vision/ (not in git: 22 MB, 6.7 MB gzipped),
stored gzip-compressed and sent so to clients that accept gzip. Nothing is loaded from a CDN.
Without the folder these answer 404 and the page turns its switch off, saying why.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException

from serve.api_schema import errors
from serve.model_info import TFLITE_FILE
from serve.models.manager import ModelManager

RUNTIME = {
    "vision_bundle.mjs": "text/javascript; charset=utf-8",
    "wasm/vision_wasm_internal.js": "text/javascript; charset=utf-8",
    "wasm/vision_wasm_internal.wasm": "application/wasm",
    "wasm/vision_wasm_nosimd_internal.js": "text/javascript; charset=utf-8",
    "wasm/vision_wasm_nosimd_internal.wasm": "application/wasm",
}
CHUNK = 1 << 20
REVALIDATE = {"cache-control": "no-cache"}
MODEL_FILE = {
    200: {"content": {"application/octet-stream": {}}, "description": "The export's model.tflite."},
    **errors(404, 503),
}


def runtime_folder() -> Path:
    """Where scripts/vendor_web.py puts the runtime (inside the package, so an installed serve has it too)."""
    return Path(str(resources.files("serve").joinpath("web", "vendor", "tasks-vision")))


def device_routes(manager: ModelManager, variant: str = "tflite") -> APIRouter:
    """The model file routes, and the vendored runtime's files. The model file is the one the server
    runs (`serve --variant`: model.tflite or a quantized copy), so the browser answers as it does."""
    router = APIRouter()

    def model_file(request: Request, name: str, version: int | None) -> Response:
        with manager.lease(name, version) as served:
            model = served.model
            file_name = model.info.files.get(variant, TFLITE_FILE)
            try:
                file = (model.directory / file_name).open("rb")
            except FileNotFoundError as e:
                raise HTTPException(404, f"version {model.version} of model {name!r} has no {file_name}") from e
        request.state.model, request.state.version = name, model.version
        stats = os.fstat(file.fileno())
        headers = {
            **REVALIDATE,
            "etag": f'"{model.version}-{stats.st_size:x}-{stats.st_mtime_ns:x}"',
            "x-model-name": name,
            "x-model-version": str(model.version),
            "x-model-file": file_name,
        }
        return _send(request, file, stats.st_size, "application/octet-stream", headers)

    def model_tflite(request: Request, name: str) -> Response:
        """The model.tflite of the version that answers requests naming none (its TFLite metadata holds
        the preprocessing and the labels): for MediaPipe Tasks' ImageClassifier, in a browser or an app."""
        return model_file(request, name, None)

    def model_tflite_version(request: Request, name: str, version: int) -> Response:
        """The model.tflite of one version of a model."""
        return model_file(request, name, version)

    for path, handler in (
        ("/v1/models/{name}/model.tflite", model_tflite),
        ("/v1/models/{name}/versions/{version}/model.tflite", model_tflite_version),
    ):
        router.add_api_route(path, handler, methods=["GET"], response_class=Response, responses=MODEL_FILE)
        router.add_api_route(path, handler, methods=["HEAD"], include_in_schema=False)  # the page asks which version

    folder = runtime_folder()

    @router.api_route("/web/vendor/tasks-vision/{file:path}", methods=["GET", "HEAD"], include_in_schema=False)
    def runtime(file: str, request: Request) -> Response:
        if file not in RUNTIME:
            raise HTTPException(404, f"no in-browser runtime file {file!r}")
        packed = folder / f"{file}.gz"
        if not packed.is_file():
            raise HTTPException(404, f"the in-browser runtime is not installed: scripts/vendor_web.py installs {file}")
        headers = {**REVALIDATE, "vary": "accept-encoding"}
        if "gzip" not in request.headers.get("accept-encoding", ""):  # rare: a client that cannot take gzip
            return Response(gzip.decompress(packed.read_bytes()), media_type=RUNTIME[file], headers=headers)
        stats = packed.stat()
        headers.update({"content-encoding": "gzip", "etag": f'"{stats.st_size:x}-{stats.st_mtime_ns:x}"'})
        return _send(request, packed.open("rb"), stats.st_size, RUNTIME[file], headers)

    return router


def _send(request: Request, file: BinaryIO, size: int, media_type: str, headers: dict[str, str]) -> Response:
    """An open file: 304 when the client holds it already (If-None-Match names its ETag), only the
    headers for HEAD, else its bytes."""
    held = [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]
    if headers["etag"] in held:
        file.close()
        return Response(status_code=304, headers=headers)
    headers = {**headers, "content-length": str(size)}
    if request.method == "HEAD":
        file.close()
        return Response(media_type=media_type, headers=headers)
    return StreamingResponse(_chunks(file), media_type=media_type, headers=headers)


def _chunks(file: BinaryIO) -> Iterator[bytes]:
    """The file's bytes, read off the event loop (Starlette iterates a plain iterator in a thread), then closed."""
    with file:
        while chunk := file.read(CHUNK):
            yield chunk
