"""serve end to end: the real server as a subprocess on 127.0.0.1, fed the exported digits model.

What a user of `serve` relies on: no TensorFlow in the runtime, every endpoint in its documented
shape, the same answers as the model retrain trained, a 4xx JSON error for every bad request (and
the server still fine afterwards), micro-batching under concurrency, hot reload without dropping a
request, one-line start-up failures (or, with `--wait_for_model`, 503s until the first export
lands), the `predict` command, and one access-log line per request.
Servers are module-scoped: starting one costs a few seconds of LiteRT loading on CI's two cores.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import (
    DIGITS,
    NAMES,
    REPO,
    SERVE,
    TIMEOUT,
    Answer,
    Models,
    Server,
    export_vectors,
    jpeg_bytes,
    relabel,
    start_server,
    wait_for,
)

MODEL = "retrained"

# --- the in-process model's answers ------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """The digits' test split and what the in-process model (head on cached bottlenecks) says."""

    paths: list[Path]
    probabilities: np.ndarray  # (N, labels), in model.json's label order
    labels: list[str]

    def expected(self, index: int) -> str:
        return self.labels[int(np.argmax(self.probabilities[index]))]

    def image(self, index: int) -> bytes:
        return self.paths[index].read_bytes()


@pytest.fixture(scope="module")
def split(digits_run) -> Split:
    """As test_retrain's `_test_images`, keeping the probabilities: the reference every answer is checked against."""
    from retrain.images import discover

    result = digits_run[0]
    paths = [e.path for e in discover(DIGITS).splits["testing"]]
    info = json.loads((result.output_dir / "model.json").read_text())
    vectors = export_vectors(result.output_dir, paths)
    return Split(paths, np.asarray(result.head.probabilities(vectors)), info["labels"])


# --- a real server in a subprocess ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Low limits (100 kB bodies, 100k-pixel images) and JSON logs."""
    flags = ["--poll_seconds", "0", "--max_request_bytes", "100000", "--max_image_pixels", "100000"]
    log = tmp_path_factory.mktemp("serve-small") / "server.log"
    running = start_server(export, log, *flags, "--log_format", "json")
    yield running
    running.stop()


# --- small helpers -----------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def upload(client: httpx.Client, *images: bytes, query: str = "") -> httpx.Response:
    """POST /predict with each image as a multipart file, named img<i>.png."""
    files = [("file", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return client.post(f"/predict{query}", files=files)


def scores_by_label(predictions: list[dict], labels: list[str]) -> np.ndarray:
    """/predict's ranked [{"label", "score"}] back into a score vector in label order."""
    by_label = {p["label"]: p["score"] for p in predictions}
    return np.array([by_label[label] for label in labels])


def tag_counts(log: str, prefix: str) -> collections.Counter:
    """How many access-log lines name each `?tag=<prefix>...` request (a JSON line names it twice)."""
    pattern = re.compile(rf"[?&]tag=({re.escape(prefix)}[\w-]+)")
    return collections.Counter(tag for line in log.splitlines() for tag in set(pattern.findall(line)))


def assert_one_log_line_each(server: Server, tags: list[str], prefix: str) -> None:
    """Every tagged request got exactly one access-log line (lines are written just after the response)."""
    deadline = time.monotonic() + 10
    while not set(tag_counts(server.log(), prefix)) >= set(tags) and time.monotonic() < deadline:
        time.sleep(0.1)
    counts = tag_counts(server.log(), prefix)
    assert sorted(tag for tag in tags if counts[tag] == 0) == [], "requests without an access-log line"
    assert {tag: counts[tag] for tag in tags if counts[tag] > 1} == {}, "requests logged more than once"
    assert set(counts) == set(tags)


def assert_serves_normally(server: Server, split: Split) -> None:
    """After whatever came before, a plain request still gets the right answer."""
    with server.client() as client:
        response = upload(client, split.image(0))
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == split.expected(0)


# --- 1. no TensorFlow ----------------------------------------------------------------------------

NO_TENSORFLOW = """
import asyncio, json, sys
from pathlib import Path

import httpx

import serve.app, serve.batcher, serve.cli, serve.runtime, serve.models.manager, serve.models.loader
from serve.app import create_app
from serve.models.loader import Batching, Loader
from serve.models.manager import ModelManager
from serve.models.repository import SingleExport


async def ask(app, image):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
        return (await client.post("/predict", files={"file": ("x.png", image)})).json()


manager = ModelManager(SingleExport(Path(sys.argv[1]), "retrained"), Loader(Batching()))
manager.reconcile()
body = asyncio.run(ask(create_app(manager), Path(sys.argv[2]).read_bytes()))
manager.close()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "torch"))
print(json.dumps({"top1": body["predictions"][0]["label"], "heavy": heavy}))
"""


def test_serve_runs_a_prediction_without_importing_tensorflow(export: Path, split: Split) -> None:
    """The serve image has no TensorFlow: loading, the app and a prediction must not import it."""
    completed = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW, str(export), str(split.paths[0])],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout.splitlines()[-1])
    assert answer == {"top1": split.expected(0), "heavy": []}


def test_serve_extra_and_base_dependencies_have_no_tensorflow() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    serve_needs = [*project["dependencies"], *project["optional-dependencies"]["serve"]]
    names = [re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower() for requirement in serve_needs]
    assert "ai-edge-litert" in names
    assert [n for n in names if n.startswith(("tensorflow", "tf-", "keras", "torch"))] == []


def test_the_running_server_maps_nothing_from_tensorflow(server: Server) -> None:
    """The real server process: no file of the tensorflow package is loaded (Linux /proc)."""
    maps = Path(f"/proc/{server.process.pid}/maps")
    if not maps.exists():
        pytest.skip("no /proc on this platform")
    packages = set(re.findall(r"site-packages/([^/\s]+)/", maps.read_text()))
    assert "ai_edge_litert" in packages
    assert {p for p in packages if p.startswith(("tensorflow", "keras", "torch"))} == set()


# --- 2. every endpoint ------------------------------------------------------------------------------


def test_predict_one_file_is_ranked_and_honours_top_k(server: Server, split: Split) -> None:
    with server.client() as client:
        default = upload(client, split.image(0))
        three = upload(client, split.image(0), query="?top_k=3")
        everything = upload(client, split.image(0), query="?top_k=10")
    assert default.status_code == three.status_code == everything.status_code == 200
    assert set(three.json()) == {"filename", "predictions", "model_spec"} and three.json()["filename"] == "img0.png"
    assert three.json()["model_spec"] == {"name": MODEL, "version": str(client_version(server))}
    assert len(default.json()["predictions"]) == 5 and len(three.json()["predictions"]) == 3
    ranked = everything.json()["predictions"]
    assert sorted(p["label"] for p in ranked) == sorted(split.labels)
    scores = [p["score"] for p in ranked]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-4
    assert three.json()["predictions"] == ranked[:3] and ranked[0]["label"] == split.expected(0)


def test_predict_several_files_answers_each_in_upload_order(server: Server, split: Split) -> None:
    indices = [3, 1, 4, 1, 5]
    with server.client() as client:
        response = upload(client, *(split.image(i) for i in indices), query="?top_k=2")
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [f"img{i}.png" for i in range(len(indices))]
    assert [len(r["predictions"]) for r in results] == [2] * len(indices)
    assert [r["predictions"][0]["label"] for r in results] == [split.expected(i) for i in indices]
    assert results[1] == {**results[3], "filename": "img1.png"}  # the same image twice, the same answer
    assert response.json()["model_spec"] == {"name": MODEL, "version": str(client_version(server))}


@pytest.mark.parametrize(
    "body",
    [
        lambda images: {"instances": [{"b64": b64(i)} for i in images]},
        lambda images: {"instances": [{"image_bytes": {"b64": b64(i)}} for i in images]},
        lambda images: {"inputs": {"image_bytes": [{"b64": b64(i)} for i in images]}},
    ],
    ids=["instances-b64", "instances-image_bytes", "columnar-inputs"],
)
def test_tf_serving_predict_formats_give_the_upload_scores(server: Server, split: Split, body) -> None:
    indices = [0, 7]
    images = [split.image(i) for i in indices]
    with server.client() as client:
        response = client.post(f"/v1/models/{MODEL}:predict", json=body(images))
        uploads = [upload(client, image, query="?top_k=10").json()["predictions"] for image in images]
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_spec"] == {"name": MODEL, "version": str(client_version(server))}
    if "outputs" in answer:  # columnar in, columnar out
        assert set(answer) == {"outputs", "model_spec"}
        scores, classes = answer["outputs"]["scores"], answer["outputs"]["classes"]
    else:
        rows = answer["predictions"]
        scores, classes = [r["scores"] for r in rows], [r["classes"] for r in rows]
    assert classes == [split.labels] * len(indices)
    expected = [scores_by_label(predictions, split.labels) for predictions in uploads]
    np.testing.assert_allclose(np.array(scores), np.array(expected), atol=1e-6)


def client_version(server: Server) -> int:
    with server.client() as client:
        return client.get("/readyz").json()["models"][0]["version"]


def test_versions_and_labels_in_the_path_reach_the_available_version_or_404(server: Server, split: Split) -> None:
    """TF Serving's /versions/{v} and /labels/{label} paths: the served version answers as the plain path
    does; another version, an unknown label or a version that is no number is a 4xx with the error JSON."""
    version = client_version(server)
    body = {"instances": [{"b64": b64(split.image(0))}]}
    with server.client() as client:
        plain = client.post(f"/v1/models/{MODEL}:predict", json=body).json()
        by_number = client.post(f"/v1/models/{MODEL}/versions/{version}:predict", json=body)
        classify = client.post(f"/v1/models/{MODEL}/versions/{version}:classify", json={"examples": body["instances"]})
        status = client.get(f"/v1/models/{MODEL}/versions/{version}")
        metadata = client.get(f"/v1/models/{MODEL}/versions/{version}/metadata")
        missing = [
            client.post(f"/v1/models/{MODEL}/versions/{version + 1}:predict", json=body),
            client.post(f"/v1/models/{MODEL}/labels/stable:predict", json=body),
            client.get(f"/v1/models/{MODEL}/versions/{version + 1}"),
            client.get(f"/v1/models/{MODEL}/versions/{version + 1}/metadata"),
            client.post(f"/v1/models/nope/versions/{version}:classify", json={"examples": body["instances"]}),
        ]
        not_a_number = client.post(f"/v1/models/{MODEL}/versions/latest:predict", json=body)
    assert by_number.status_code == 200 and by_number.json() == plain
    assert classify.status_code == 200 and classify.json()["model_spec"]["version"] == str(version)
    assert status.json()["model_version_status"][0]["version"] == str(version)
    assert metadata.json()["model_spec"]["version"] == str(version)
    assert [answer.status_code for answer in missing] == [404] * 5
    assert all(set(answer.json()) == {"error"} for answer in missing)
    assert not_a_number.status_code == 400 and "version" in not_a_number.json()["error"]


def test_tf_serving_classify_ranks_every_label(server: Server, split: Split) -> None:
    with server.client() as client:
        response = client.post(f"/v1/models/{MODEL}:classify", json={"examples": [{"b64": b64(split.image(2))}]})
    assert response.status_code == 200, response.text
    (ranking,) = response.json()["result"]
    assert sorted(label for label, _ in ranking) == sorted(split.labels)
    scores = [score for _, score in ranking]
    assert scores == sorted(scores, reverse=True) and ranking[0][0] == split.expected(2)
    np.testing.assert_allclose(dict(ranking)[split.expected(2)], split.probabilities[2].max(), atol=1e-3)


def test_model_status_and_metadata(server: Server, export: Path, split: Split) -> None:
    with server.client() as client:
        status = client.get(f"/v1/models/{MODEL}").json()
        metadata = client.get(f"/v1/models/{MODEL}/metadata").json()
        version = client.get("/readyz").json()["models"][0]["version"]
    (model_status,) = status["model_version_status"]
    assert model_status["state"] == "AVAILABLE" and model_status["version"] == str(version)
    assert model_status["status"]["error_code"] == "OK"
    assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": str(version)}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert set(signature["inputs"]) == {"image_bytes"} and set(signature["outputs"]) == {"scores", "classes"}
    assert metadata["labels"] == split.labels
    written = json.loads((export / "model.json").read_text())
    assert metadata["model"]["backbone"] == written["backbone"] and metadata["model"]["input"] == written["input"]


def test_health_readiness_and_labels(server: Server, export: Path) -> None:
    with server.client() as client:
        health, ready, labels = client.get("/healthz"), client.get("/readyz"), client.get("/labels")
    assert health.status_code == ready.status_code == labels.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.json() == {
        "status": "ready",
        "models": [
            {
                "name": MODEL,
                "version": int(export.name),  # <models_dir>/digits/1: TF Serving's version number
                "export": str(export.resolve()),  # the export's folder, not a link to it
                "labels": 10,
            }
        ],
        "refused": [],
    }
    assert labels.json() == {"labels": (export / "labels.txt").read_text().split()}


def test_openapi_and_docs(server: Server) -> None:
    with server.client() as client:
        schema, docs = client.get("/openapi.json"), client.get("/docs")
    assert schema.status_code == 200 and docs.status_code == 200
    paths = schema.json()["paths"]
    for path in ("/predict", "/v1/models/{name}:predict", "/v1/models/{name}:classify", "/v1/models/{name}/metadata"):
        assert path in paths
    assert "top_k" in json.dumps(paths["/predict"]["post"]["parameters"])
    assert "swagger-ui" in docs.text and "/openapi.json" in docs.text


# --- 3. the same answers as the in-process model --------------------------------------------------


def test_every_test_image_gets_the_in_process_models_answer(server: Server, split: Split) -> None:
    """All test-split digits through /predict: the same top-1, and scores within 1e-3 of the head's."""

    def ask(index: int) -> np.ndarray:
        response = upload(client, split.image(index), query="?top_k=10")
        assert response.status_code == 200, response.text
        return scores_by_label(response.json()["predictions"], split.labels)

    with server.client() as client, ThreadPoolExecutor(4) as pool:
        scores = np.array(list(pool.map(ask, range(len(split.paths)))))
    assert len(scores) == len(split.paths) > 100
    disagree = [
        str(p) for p, s, q in zip(split.paths, scores, split.probabilities, strict=True) if s.argmax() != q.argmax()
    ]
    assert disagree == []
    assert np.abs(scores - split.probabilities).max() < 1e-3


# --- 4. errors ----------------------------------------------------------------------------------------


DIGIT = (DIGITS / "3" / "digit_0003.png").read_bytes()
PHOTO = jpeg_bytes(320, 240, seed=5)
TEXT = b"these are notes, not a picture\n"
TF_PREDICT = f"/v1/models/{MODEL}:predict"


def image_bytes(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format)
    return buffer.getvalue()


@functools.cache
def png_bomb(side: int) -> bytes:
    """A real decompression bomb: a side x side black PNG, every row present, in a few hundred kB.

    Written by hand, row by row, so making it needs no side x side image in memory.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit greyscale
    packer, row = zlib.compressobj(9), bytes(side + 1)  # each row: filter byte 0, then black pixels
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _answer(response: httpx.Response) -> Answer:
    return Answer(response.status_code, response.headers.get("content-type", ""), response.content)


def _post_file(data: bytes, query: str = "") -> Callable[[Server], Answer]:
    def send(server: Server) -> Answer:
        with server.client() as client:
            return _answer(upload(client, data, query=query))

    return send


def _post(path: str, **request) -> Callable[[Server], Answer]:
    def send(server: Server) -> Answer:
        with server.client() as client:
            return _answer(client.post(path, **request))

    return send


def _get(path: str) -> Callable[[Server], Answer]:
    def send(server: Server) -> Answer:
        with server.client() as client:
            return _answer(client.get(path))

    return send


def _post_bomb(side: int) -> Callable[[Server], Answer]:
    return lambda server: _post_file(png_bomb(side))(server)


def _raw(method: str, path: str) -> Callable[[Server], Answer]:
    return lambda server: server.raw(method, path, json.dumps({"instances": [{"b64": b64(DIGIT)}]}).encode())


def _streamed(chunks: int, chunk: bytes) -> Callable[[Server], Answer]:
    """A chunked body (no Content-Length): the limit must hold while the body streams in."""
    return _post(f"/v1/models/{MODEL}:predict", content=(chunk for _ in range(chunks)))


# case -> (which server, acceptable statuses, the request)
ERRORS: dict[str, tuple[str, set[int], Callable[[Server], Answer]]] = {
    "truncated-png": ("server", {400}, _post_file(DIGIT[: len(DIGIT) // 2])),
    "truncated-jpeg": ("server", {400}, _post_file(PHOTO[: len(PHOTO) // 2])),
    "jpeg-cut-in-its-header": ("server", {400}, _post_file(PHOTO[:300])),
    "empty-file": ("server", {400, 415}, _post_file(b"")),
    "text-file": ("server", {415}, _post_file(TEXT)),
    "bomb-over-pillows-limit": ("server", {413}, _post_bomb(20_000)),
    "bomb-over-max_image_pixels": ("server", {413}, _post_bomb(7_000)),
    "top_k-0": ("server", {400}, _post_file(DIGIT, "?top_k=0")),
    "top_k-1000000": ("server", {400}, _post_file(DIGIT, "?top_k=1000000")),
    "top_k-not-a-number": ("server", {400}, _post_file(DIGIT, "?top_k=many")),
    "predict-raw-bytes": ("server", {415}, _post("/predict", content=DIGIT, headers={"content-type": "image/png"})),
    "predict-json": ("server", {415}, _post("/predict", json={"instances": [{"b64": b64(DIGIT)}]})),
    "predict-form-without-file": ("server", {400}, _post("/predict", files={"note": (None, b"no file here")})),
    "malformed-json": ("server", {400}, _post(TF_PREDICT, content=b'{"instances": [{"b64": ')),
    "json-not-an-object": ("server", {400}, _post(TF_PREDICT, json=[{"b64": b64(DIGIT)}])),
    "json-without-instances": ("server", {400}, _post(TF_PREDICT, json={"images": [{"b64": b64(DIGIT)}]})),
    "empty-instances": ("server", {400}, _post(TF_PREDICT, json={"instances": []})),
    "bad-base64": ("server", {400}, _post(TF_PREDICT, json={"instances": [{"b64": "not*base64!"}]})),
    "b64-of-text": ("server", {415}, _post(TF_PREDICT, json={"instances": [{"b64": b64(TEXT)}]})),
    "b64-of-corrupt-png": ("server", {400}, _post(TF_PREDICT, json={"instances": [{"b64": b64(DIGIT[:60])}]})),
    "classify-bad-base64": ("server", {400}, _post(f"/v1/models/{MODEL}:classify", json={"examples": [{"b64": "%"}]})),
    "unknown-model-predict": ("server", {404}, _post("/v1/models/nope:predict", json={"instances": []})),
    "unknown-model-classify": ("server", {404}, _post("/v1/models/nope:classify", json={"examples": []})),
    "unknown-model-status": ("server", {404}, _get("/v1/models/nope")),
    "unknown-model-metadata": ("server", {404}, _get("/v1/models/nope/metadata")),
    "name-with-encoded-dotdot": ("server", {400, 404}, _raw("POST", "/v1/models/..%2F..%2Fetc:predict")),
    "name-with-dotdot-segment": ("server", {400, 404}, _raw("POST", "/v1/models/../x:predict")),
    "name-dotdot": ("server", {400, 404}, _raw("POST", "/v1/models/..:predict")),
    "status-dotdot-passwd": ("server", {400, 404}, _raw("GET", "/v1/models/../../../etc/passwd")),
    "metadata-encoded-dotdot": ("server", {400, 404}, _raw("GET", "/v1/models/%2e%2e%2f%2e%2e/metadata")),
    "unknown-path": ("server", {404}, _get("/v2/nothing")),
    "wrong-method": ("server", {405}, _get("/predict")),
    "body-over-limit": ("small_server", {413}, _post_file(b"\0" * 300_000)),
    "streamed-body-over-limit": ("small_server", {413}, _streamed(20, b"x" * 20_000)),
    "b64-body-over-limit": ("small_server", {413}, _post(TF_PREDICT, json={"instances": [{"b64": b64(PHOTO * 60)}]})),
    "image-over-max_image_pixels": ("small_server", {413}, _post_file(png(Image.new("L", (400, 400), 255)))),
    # Hostile JSON: each once escaped the error handler as a 500, or took gigabytes (issue 23).
    "json-nested-100000-deep": ("server", {400, 413}, _post(TF_PREDICT, content=b"[" * 100_000)),
    "json-object-nested-deep": ("server", {400, 413}, _post(TF_PREDICT, content=b'{"a":' * 50_000)),
    "json-integer-of-5000-digits": ("server", {400}, _post(TF_PREDICT, content=b'{"instances": ' + b"7" * 5000 + b"}")),
    "json-invalid-utf8": ("server", {400}, _post(TF_PREDICT, content=b'{"instances": "\xff\xfe"}')),
    "json-too-many-instances": ("server", {413}, _post(TF_PREDICT, json={"instances": [{"b64": b64(DIGIT)}] * 65})),
    "json-columnar-too-many": ("server", {413}, _post(TF_PREDICT, json={"inputs": {"x": [{"b64": b64(DIGIT)}] * 65}})),
    "classify-too-many": ("server", {413}, _post(f"/v1/models/{MODEL}:classify", json={"examples": [{}] * 65})),
    "json-million-empty-lists": ("server", {413}, _post(TF_PREDICT, content=b'{"x": [' + b"[]," * 1_000_000 + b"[]]}")),
    "upload-too-many-files": ("server", {400, 413}, _post("/predict", files=[("f", DIGIT)] * 65)),
    "tiff-is-not-a-served-format": ("server", {415}, _post_file(image_bytes(Image.new("RGB", (8, 8)), "TIFF"))),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_request_is_4xx_json_and_the_next_one_is_served(case: str, request: pytest.FixtureRequest) -> None:
    which, statuses, send = ERRORS[case]
    server: Server = request.getfixturevalue(which)
    answer = send(server)
    assert answer.status in statuses, answer.body[:300]
    assert answer.content_type.startswith("application/json")
    body = json.loads(answer.body)
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"].strip()
    assert "Traceback" not in body["error"]
    assert_serves_normally(server, request.getfixturevalue("split"))


def test_the_413_images_are_small_files_with_many_pixels() -> None:
    """Keeps the 413 cases honest: small files that really decode to (or claim) too many pixels."""
    with pytest.raises(Image.DecompressionBombError):  # 400 Mpx: past Pillow's own hard limit
        Image.open(io.BytesIO(png_bomb(20_000)))
    seven = Image.open(io.BytesIO(png_bomb(7_000)))  # 49 Mpx: under Pillow's limit, over serve's 40 Mpx default
    seven.load()
    assert seven.size == (7_000, 7_000) and seven.getextrema() == (0, 0)
    assert len(png_bomb(20_000)) < 1_000_000 and len(png_bomb(7_000)) < 100_000
    assert len(png(Image.new("L", (400, 400), 255))) < 100_000 and 400 * 400 > 100_000


# --- 5. micro-batching --------------------------------------------------------------------------------


class ConcurrencyProbe:
    """Wraps runners' `scores` to count calls and how many threads are inside each interpreter at once."""

    def __init__(self, runners: list, hold_seconds: float = 0.01):
        self.calls = 0
        self.max_inside = 0  # per runner
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()
        for runner in runners:
            runner.scores = self._wrap(runner.scores, hold_seconds)

    def _wrap(self, scores: Callable[[np.ndarray], np.ndarray], hold: float) -> Callable[[np.ndarray], np.ndarray]:
        inside = [0]

        def probed(pixels: np.ndarray) -> np.ndarray:
            with self._lock:
                inside[0] += 1
                self.calls += 1
                self.max_inside = max(self.max_inside, inside[0])
                self.batch_sizes.append(len(pixels))
            try:
                time.sleep(hold)  # widens the window in which a second thread could wrongly enter
                return scores(pixels)
            finally:
                with self._lock:
                    inside[0] -= 1

        return probed


def test_micro_batcher_batches_simultaneous_images_and_never_shares_an_interpreter(export: Path, split: Split) -> None:
    from serve.batcher import MicroBatcher
    from serve.preprocess import preprocess
    from serve.runtime import load_model

    model = load_model(export, workers=2, threads_per_worker=1)
    pixels = [preprocess(split.image(i), model.info.input_spec) for i in range(16)]
    alone = [model.runners[0].scores(p[np.newaxis])[0] for p in pixels]
    probe = ConcurrencyProbe(model.runners)
    batcher = MicroBatcher(model.runners, max_batch_size=16, max_wait=0.05)
    start = threading.Barrier(16)

    def submit(p: np.ndarray) -> np.ndarray:
        start.wait(timeout=30)
        return batcher.submit(p).result(timeout=TIMEOUT)

    try:
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(submit, pixels))
    finally:
        batcher.close()
    assert probe.calls == batcher.batches < 16 and sum(probe.batch_sizes) == 16
    assert probe.max_inside == 1
    np.testing.assert_allclose(np.array(together), np.array(alone), atol=1e-5)


def test_concurrent_http_requests_share_interpreter_calls(export: Path, split: Split) -> None:
    """32 requests at once through the app (middlewares, preprocessing, batcher): fewer than 32 calls."""
    from serve.app import create_app
    from serve.batcher import MicroBatcher
    from serve.models.manager import ModelManager
    from serve.models.repository import SingleExport
    from serve.models.servable import ServedModel
    from serve.runtime import load_model

    probes = []

    def load(name: str, version: int, directory: Path) -> ServedModel:
        model = load_model(directory, workers=1)
        probes.append(ConcurrencyProbe(model.runners, hold_seconds=0))
        return ServedModel(model, MicroBatcher(model.runners, max_batch_size=16, max_wait=0.005))

    manager = ModelManager(SingleExport(export, MODEL), load)
    manager.reconcile()
    indices = [i % len(split.paths) for i in range(32)]

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(manager))
        async with httpx.AsyncClient(transport=transport, base_url="http://serve", timeout=TIMEOUT) as client:
            body = [{"instances": [{"b64": b64(split.image(i))}]} for i in indices]
            return await asyncio.gather(*(client.post(TF_PREDICT, json=b) for b in body))

    try:
        responses = asyncio.run(send_all())
        with manager.lease(MODEL) as served:
            batches = served.batcher.batches
    finally:
        manager.close()
    assert [r.status_code for r in responses] == [200] * 32
    top1 = [split.labels[int(np.argmax(r.json()["predictions"][0]["scores"]))] for r in responses]
    assert top1 == [split.expected(i) for i in indices]
    assert batches == probes[0].calls < 32 and sum(probes[0].batch_sizes) == 32


# --- 6. load ----------------------------------------------------------------------------------------------


def test_load_500_requests_from_16_clients(server: Server, split: Split) -> None:
    """Zero errors, every top-1 right, and exactly one access-log line per request."""
    count = 500

    def one(i: int) -> str | None:
        index = i % len(split.paths)
        try:
            if i % 2:
                response = upload(client, split.image(index), query=f"?top_k=3&tag=load-{i}")
            else:
                body = {"instances": [{"b64": b64(split.image(index))}]}
                response = client.post(f"{TF_PREDICT}?tag=load-{i}", json=body)
            if response.status_code != 200:
                return f"request {i}: {response.status_code} {response.text[:200]}"
            answer = response.json()
            if i % 2:
                got = answer["predictions"][0]["label"]
            else:
                got = split.labels[int(np.argmax(answer["predictions"][0]["scores"]))]
        except Exception as e:
            return f"request {i}: {type(e).__name__}: {e}"
        return None if got == split.expected(index) else f"request {i}: {got!r} != {split.expected(index)!r}"

    started = time.monotonic()
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    with server.client(limits=limits) as client, ThreadPoolExecutor(16) as pool:
        problems = [p for p in pool.map(one, range(count)) if p]
    elapsed = time.monotonic() - started
    assert problems == []
    assert elapsed < 240, f"{count} requests took {elapsed:.0f} s"
    assert_one_log_line_each(server, [f"load-{i}" for i in range(count)], "load-")


# --- 7. reload ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models.copy_of(export, tmp_path_factory.mktemp("reload") / "models")


@pytest.fixture(scope="module")
def reload_server(models: Models) -> Iterator[Server]:
    running = start_server(models.root / "latest", models.root.parent / "server.log", "--poll_seconds", "0.5")
    yield running
    running.stop()


class Traffic:
    """Requests in a loop from a few threads, for as long as the block lasts: what a reload runs into."""

    def __init__(self, server: Server, image: bytes, name: str, threads: int = 4):
        self.prefix = f"{name}-"  # of every request's ?tag=, so the access log can be checked
        self.answers: list[tuple[str, int | str, str | None, frozenset[str]]] = []  # tag, status, top-1, labels
        self._server, self._image = server, image
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        wait_for(lambda: len(self.answers) >= 3, "the first answers")
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=TIMEOUT + 10)

    def _loop(self, worker: int) -> None:
        with self._server.client() as client:
            n = 0
            while not self._stop.is_set():
                tag, n = f"{self.prefix}{worker}-{n}", n + 1
                self._record(tag, client, n % 2 == 0)

    def _ask(self, client: httpx.Client, tag: str, upload_it: bool) -> tuple[int, str | None, frozenset[str]]:
        if upload_it:
            response = upload(client, self._image, query=f"?top_k=10&tag={tag}")
            if response.status_code != 200:
                return response.status_code, None, frozenset()
            ranked = response.json()["predictions"]
            return 200, ranked[0]["label"], frozenset(p["label"] for p in ranked)
        response = client.post(f"{TF_PREDICT}?tag={tag}", json={"instances": [{"b64": b64(self._image)}]})
        if response.status_code != 200:
            return response.status_code, None, frozenset()
        (row,) = response.json()["predictions"]
        return 200, row["classes"][int(np.argmax(row["scores"]))], frozenset(row["classes"])

    def _record(self, tag: str, client: httpx.Client, upload_it: bool) -> None:
        try:
            status, top1, labels = self._ask(client, tag, upload_it)
        except Exception as e:
            status, top1, labels = f"{type(e).__name__}: {e}", None, frozenset()
        with self._lock:
            self.answers.append((tag, status, top1, labels))

    def failures(self) -> list[tuple]:
        return [a for a in self.answers if a[1] != 200]

    def digits(self) -> set[str]:
        """The top-1 answers as digits, whether they came from the original or the relabelled model."""
        return {str(NAMES.index(top1)) if top1 in NAMES else top1 for _, _, top1, _ in self.answers}

    def assert_one_log_line_each(self) -> None:
        assert_one_log_line_each(self._server, [a[0] for a in self.answers], self.prefix)


@pytest.fixture(scope="module")
def big_digit(export: Path, split: Split) -> tuple[bytes, str]:
    """A test digit blown up to 1600x1600 px, and its label from an in-process LiteRT run.

    Its ~40 ms of preprocessing happens after a request has taken the current model and before it
    reaches that model's interpreter, so a reload under this traffic finds requests in that gap.
    """
    from serve.preprocess import preprocess
    from serve.runtime import load_model

    data = png(Image.open(split.paths[0]).resize((1600, 1600), Image.Resampling.NEAREST))
    model = load_model(export)
    scores = model.runners[0].scores(preprocess(data, model.info.input_spec)[np.newaxis])[0]
    return data, model.labels[int(np.argmax(scores))]


def _ready(server: Server) -> dict:
    """/readyz of a one-model server, flat: the export folder's name, version, labels, and the first refusal."""
    with server.client() as client:
        ready = client.get("/readyz").json()
    (model,) = ready["models"]
    flat = {"model": Path(model["export"]).name, "version": model["version"], "labels": model["labels"]}
    if ready["refused"]:
        refused = ready["refused"][0]
        export = Path(refused["export"]).name
        flat["refused"] = {"export": export, "version": refused["version"], "error": refused["error"]}
    return flat


def _sighup_and_wait(server: Server, traffic: Traffic) -> None:
    """One SIGHUP; returns once the log says it looked again and a few requests were answered after it."""
    passes = server.log().count("SIGHUP: looking for models")
    server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: server.log().count("SIGHUP: looking for models") > passes, "the SIGHUP pass")
    seen = len(traffic.answers)
    wait_for(lambda: len(traffic.answers) >= seen + 4, "answers after the pass")


def test_sighup_reloads_and_keeps_serving(reload_server: Server, big_digit: tuple[bytes, str]) -> None:
    """Three SIGHUPs under traffic: each looks again, no request fails, the same export keeps serving."""
    image, digit = big_digit
    before = _ready(reload_server)
    with Traffic(reload_server, image, "sighup") as traffic:
        for _ in range(3):
            _sighup_and_wait(reload_server, traffic)
    assert traffic.failures() == []
    assert traffic.digits() == {digit}
    assert _ready(reload_server) == before  # the same export again: same directory, same version
    assert reload_server.process.poll() is None
    traffic.assert_one_log_line_each()


def test_a_new_export_behind_latest_is_served_without_restart(
    reload_server: Server, models: Models, split: Split, big_digit: tuple[bytes, str]
) -> None:
    """Relabelled copy behind `latest`: new labels within seconds, and no request fails during the swap."""
    before = _ready(reload_server)
    renamed = models.add(f"relabelled-{time.monotonic_ns()}", relabel)
    old_labels, new_labels = frozenset(split.labels), frozenset(NAMES)
    digit = int(split.expected(0))

    with reload_server.client() as client, Traffic(reload_server, big_digit[0], "relabel") as traffic:
        models.point_latest_at(renamed)
        wait_for(lambda: client.get("/labels").json()["labels"] == NAMES, "/labels to show the new labels", 60)
        seen = len(traffic.answers)
        wait_for(lambda: len(traffic.answers) >= seen + 6, "answers after the swap")
        answer = upload(client, split.image(0)).json()
        status = client.get(f"/v1/models/{MODEL}").json()["model_version_status"][0]

    assert traffic.failures() == []
    label_sets = [labels for _, _, _, labels in traffic.answers]
    assert set(label_sets) == {old_labels, new_labels}  # the swap happened while requests were running
    assert label_sets.index(new_labels) > 0 and label_sets[-1] == new_labels
    assert traffic.digits() == {big_digit[1]}
    assert answer["predictions"][0]["label"] == NAMES[digit]
    after = _ready(reload_server)
    assert after["model"] == renamed.resolve().name != before["model"]
    assert after["version"] != before["version"] and status["version"] == str(after["version"])
    assert reload_server.process.poll() is None and reload_server.log().count("Started server process") == 1
    traffic.assert_one_log_line_each()


def _truncate_tflite(export: Path) -> None:
    tflite = export / "model.tflite"
    tflite.write_bytes(tflite.read_bytes()[:4096])


def _remove_model_json(export: Path) -> None:
    (export / "model.json").unlink()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [(_truncate_tflite, "model.tflite cannot be run"), (_remove_model_json, "no model.json")],
    ids=["truncated-tflite", "missing-model-json"],
)
def test_a_broken_export_behind_latest_is_refused(
    reload_server: Server, models: Models, split: Split, big_digit: tuple[bytes, str], breakage, message: str
) -> None:
    """The old model keeps serving, the refusal is logged, and a good export after it still loads."""
    before = _ready(reload_server)
    with reload_server.client() as client:
        labels_before = client.get("/labels").json()["labels"]
    broken = models.add(f"broken-{time.monotonic_ns()}", breakage)
    with Traffic(reload_server, big_digit[0], broken.name) as traffic:
        models.point_latest_at(broken)
        serving = before["version"]
        refusal = re.compile(rf"model {MODEL} version \d+ refused, still serving {serving}: .*{re.escape(message)}")
        wait_for(lambda: refusal.search(reload_server.log()), "the refusal in the log", 60)
        seen = len(traffic.answers)
        wait_for(lambda: len(traffic.answers) >= seen + 6, "answers after the refusal")
    assert traffic.failures() == []
    assert len({labels for _, _, _, labels in traffic.answers}) == 1 and traffic.digits() == {big_digit[1]}
    ready = _ready(reload_server)
    refused = ready.pop("refused")
    assert ready == before  # still ready, on the same model, and says what it refused
    assert refused["export"] == broken.name and message in refused["error"]
    with reload_server.client() as client:
        assert client.get("/labels").json()["labels"] == labels_before
        status = client.get(f"/v1/models/{MODEL}").json()["model_version_status"]
    states = {v["version"]: (v["state"], v["status"]["error_code"]) for v in status}
    assert states[str(refused["version"])] == ("END", "INVALID_ARGUMENT")
    assert [v for v, state in states.items() if state[0] != "END"] == [str(before["version"])]
    assert states[str(before["version"])] == ("AVAILABLE", "OK")  # earlier exports: END, OK (unloaded)
    (failed,) = [v for v in status if v["status"]["error_code"] != "OK"]
    assert message in failed["status"]["error_message"]
    assert str(broken.resolve()) in reload_server.log()
    traffic.assert_one_log_line_each()

    good = models.add(f"good-{time.monotonic_ns()}")
    models.point_latest_at(good)
    wait_for(lambda: _ready(reload_server)["model"] == good.name, "a good export after the broken one")
    assert "refused" not in _ready(reload_server)
    assert_serves_normally(reload_server, split)


def test_mending_a_refused_exports_model_file_in_place_is_noticed(reload_server: Server, models: Models) -> None:
    """A refused export whose model.tflite alone is then fixed is loaded by polling (no SIGHUP)."""
    broken = models.add(f"mend-{time.monotonic_ns()}", _truncate_tflite)
    models.point_latest_at(broken)
    wait_for(lambda: _ready(reload_server).get("refused", {}).get("export") == broken.name, "the refusal")
    shutil.copy(models.original / "model.tflite", broken / "model.tflite")
    wait_for(lambda: _ready(reload_server)["model"] == broken.name, "the mended export to load")
    assert "refused" not in _ready(reload_server)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda export: (export / "labels.txt").unlink(), "has no labels.txt"),
        (lambda export: (export / "labels.txt").write_text("0\n1\n"), "disagrees with model.json at line 3"),
        (lambda export: _set_labels(export, ["a\nb", *map(str, range(1, 10))]), "not printable"),
        (lambda export: _set_labels(export, ["1", *map(str, range(1, 10))]), "a label twice"),
    ],
    ids=["no-labels-txt", "labels-txt-disagrees", "label-with-newline", "duplicate-label"],
)
def test_exports_whose_labels_are_wrong_are_refused(export: Path, tmp_path: Path, edit, message: str) -> None:
    from serve.model_info import ModelDirError
    from serve.runtime import load_model

    copy = Models.copy_of(export, tmp_path / "models").add("edited", edit)
    with pytest.raises(ModelDirError, match=re.escape(message)):
        load_model(copy)


def _set_labels(export: Path, labels: list[str]) -> None:
    """model.json and labels.txt both given `labels` (labels.txt as written, one a line)."""
    info = json.loads((export / "model.json").read_text())
    info["labels"] = labels
    (export / "model.json").write_text(json.dumps(info))
    (export / "labels.txt").write_text("".join(f"{label}\n" for label in labels))


# --- 8. start-up failures, and waiting for the first export --------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _startup_case(case: str, export: Path, tmp_path: Path) -> tuple[list[str], str]:
    if case == "no-such-dir":
        return ["--model_dir", str(tmp_path / "nope")], "is not a directory"
    if case == "no-flag-and-no-models":
        return [], "no model in --models_dir models: train one first"
    if case == "no-model-json":
        (tmp_path / "half").mkdir()
        shutil.copy(export / "model.tflite", tmp_path / "half" / "model.tflite")
        return ["--model_dir", str(tmp_path / "half")], "no model.json"
    if case == "corrupt-model-tflite":
        broken = tmp_path / "broken"
        shutil.copytree(export, broken, ignore=shutil.ignore_patterns("saved_model"))
        _truncate_tflite(broken)
        return ["--model_dir", str(broken)], "model.tflite cannot be run"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no-such-dir", "no-flag-and-no-models", "no-model-json", "corrupt-model-tflite"])
def test_start_up_failure_is_one_line_and_exit_2(case: str, export: Path, tmp_path: Path) -> None:
    args, message = _startup_case(case, export, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [*SERVE, *args, "--host", "127.0.0.1", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # no models/latest here
        env=env,
    )
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.count("\n") == 1 and completed.stderr.startswith("serve: error: ")
    assert message in completed.stderr


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Starts `serve --host 127.0.0.1 <args>` and returns it once /healthz answers: unlike `start_server`,
    it does not wait for /readyz, which a server waiting for its first model does not pass."""
    started: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        env = env or {}
        port = env.get("SERVE_PORT") or str(free_port())
        port_flag = [] if "SERVE_PORT" in env else ["--port", port]
        log_path = tmp_path / f"server-{len(started)}.log"
        with log_path.open("wb") as log:
            command = [*SERVE, *args, "--host", "127.0.0.1", *port_flag]
            process = subprocess.Popen(
                command, cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
            )
        server = Server(process, f"http://127.0.0.1:{port}", log_path)
        started.append(server)

        def alive() -> bool:
            if process.poll() is not None:
                pytest.fail(f"serve exited with {process.returncode}:\n{server.log()}")
            try:
                return httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(alive, "/healthz", 120)
        return server

    yield start
    for server in started:
        server.stop()


def _status(server: Server, path: str) -> int:
    with server.client() as client:
        return client.get(path).status_code


def _assert_waiting(server: Server, retry_after: str) -> None:
    """Alive but not ready: every endpoint that needs the model is a 503 JSON error with Retry-After."""
    image = {"b64": b64(DIGIT)}
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/").status_code == 200  # the page itself, which then says no model is loaded yet
        answers = {
            "/readyz": client.get("/readyz"),
            "/predict": upload(client, DIGIT),
            ":predict": client.post(TF_PREDICT, json={"instances": [image]}),
            ":classify": client.post(f"/v1/models/{MODEL}:classify", json={"examples": [image]}),
            "status": client.get(f"/v1/models/{MODEL}"),
            "metadata": client.get(f"/v1/models/{MODEL}/metadata"),
            "/labels": client.get("/labels"),
            "/model": client.get("/model"),
            "plot": client.get("/model/plots/confusion_matrix.png"),
        }
    status = answers.pop("status")  # TF Serving's model status: 503 until a version is known, then its states
    if status.status_code == 200:
        assert {v["state"] for v in status.json()["model_version_status"]} == {"END"}
    else:
        answers["status"] = status
    for name, response in answers.items():
        assert (name, response.status_code, response.headers.get("retry-after")) == (name, 503, retry_after)
        assert response.headers["content-type"].startswith("application/json"), name
        body = response.json()
        assert set(body) == {"error"} and "no model loaded yet" in body["error"], name
    assert server.process.poll() is None


def _wait_until_serving(server: Server, split: Split) -> None:
    """/readyz turns 200 within a bounded wait, and /predict then gives the right label."""
    wait_for(lambda: _status(server, "/readyz") == 200, "/readyz to turn 200 once an export is in place")
    assert_serves_normally(server, split)
    assert _status(server, "/model") == 200
    assert server.process.poll() is None and server.log().count("Started server process") == 1


def test_wait_for_model_serves_once_an_export_appears(
    live_server: Callable[..., Server], export: Path, split: Split, tmp_path: Path
) -> None:
    """A container's serve starts before retrain's first job: up and 503 at first, then it serves."""
    root = tmp_path / "models"  # nothing there yet, not even the folder
    latest = root / "latest"
    server = live_server("--model_dir", str(latest), "--wait_for_model", "--poll_seconds", "0.5")
    waiting = re.findall(r"no model to serve yet \((.*)\); waiting for one", server.log())
    assert len(waiting) == 1 and "is not a directory" in waiting[0]
    _assert_waiting(server, retry_after="1")  # the poll interval, rounded up

    Models.copy_of(export, root)  # retrain's export, with `latest` linked to it last
    _wait_until_serving(server, split)
    assert f"loaded from {(root / 'v1').resolve()}" in server.log()


def test_wait_for_model_outlasts_broken_exports(
    live_server: Callable[..., Server], export: Path, split: Split, tmp_path: Path
) -> None:
    """Broken at start, broken again after a change and on SIGHUP: logged, not ready, still up; then a good one."""
    models = Models.copy_of(export, tmp_path / "models")
    models.point_latest_at(models.add("truncated", _truncate_tflite))
    latest = models.root / "latest"
    server = live_server("--model_dir", str(latest), "--wait_for_model", "--poll_seconds", "0.5")
    start = r"no model to serve yet \(.*model\.tflite cannot be run.*\); waiting for one"
    assert len(re.findall(start, server.log())) == 1
    _assert_waiting(server, retry_after="1")

    def refusals() -> list[str]:
        return [line for line in server.log().splitlines() if re.search(f"model {MODEL} version \\d+ refused: ", line)]

    models.point_latest_at(models.add("no-model-json", _remove_model_json))
    wait_for(lambda: len(refusals()) == 1, "the broken export's refusal in the log")
    server.process.send_signal(signal.SIGHUP)  # tries the same broken export once more
    wait_for(lambda: len(refusals()) == 2, "the refusal after SIGHUP")
    assert all(line.endswith("is not a retrain export: no model.json") for line in refusals())
    _assert_waiting(server, retry_after="1")

    models.point_latest_at(models.original)
    _wait_until_serving(server, split)
    assert len(refusals()) == 2  # a broken export is tried once per change (or SIGHUP), not on every poll


def test_env_vars_set_the_port_and_wait_for_model(live_server: Callable[..., Server], tmp_path: Path) -> None:
    """SERVE_PORT and SERVE_WAIT_FOR_MODEL, as a container's environment (and HEALTHCHECK) sets them."""
    port = str(free_port())
    server = live_server("--model_dir", str(tmp_path / "latest"), env={"SERVE_PORT": port, "SERVE_WAIT_FOR_MODEL": "1"})
    assert server.url.endswith(f":{port}")
    _assert_waiting(server, retry_after="2")  # the default --poll_seconds 2
    help_text = subprocess.run([*SERVE, "--help"], capture_output=True, text=True, cwd=REPO, timeout=60).stdout
    assert "SERVE_PORT" in help_text and "SERVE_WAIT_FOR_MODEL" in help_text


# --- 9. the predict command -----------------------------------------------------------------------------


def serve_predict(export: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SERVE, "--model_dir", str(export), "predict", *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def test_cli_predict_prints_ranked_labels(export: Path, split: Split) -> None:
    completed = serve_predict(export, str(split.paths[0]), str(split.paths[1]), "--top_k", "3")
    assert completed.returncode == 0 and completed.stderr == ""
    lines = completed.stdout.splitlines()
    assert len(lines) == 2
    for index, line in enumerate(lines):
        path, _, ranking = line.partition(": ")
        pairs = re.findall(r"(\S+) \((\d\.\d{3})\)", ranking)
        assert path == str(split.paths[index]) and len(pairs) == 3
        scores = [float(score) for _, score in pairs]
        assert pairs[0][0] == split.expected(index) and scores == sorted(scores, reverse=True)
        assert abs(scores[0] - split.probabilities[index].max()) < 2e-3


def test_cli_predict_json_is_one_object_per_line(export: Path, split: Split) -> None:
    completed = serve_predict(export, str(split.paths[2]), str(split.paths[3]), "--json")
    assert completed.returncode == 0 and completed.stderr == ""
    objects = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [o["file"] for o in objects] == [str(split.paths[2]), str(split.paths[3])]
    for index, answer in zip((2, 3), objects, strict=True):
        ranked = answer["predictions"]
        assert len(ranked) == 5 and ranked[0]["label"] == split.expected(index)
        assert [p["score"] for p in ranked] == sorted((p["score"] for p in ranked), reverse=True)
        np.testing.assert_allclose(ranked[0]["score"], split.probabilities[index].max(), atol=1e-3)


def test_cli_predict_names_a_bad_file_answers_the_rest_and_exits_2(export: Path, split: Split, tmp_path: Path) -> None:
    notes = tmp_path / "notes.png"
    notes.write_bytes(TEXT)
    completed = serve_predict(export, str(split.paths[0]), str(notes), str(split.paths[1]), "--top_k", "1")
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1 and completed.stderr.startswith(f"serve: error: {notes}: ")
    answered = [re.fullmatch(r"(\S+): (\S+) \((\d\.\d{3})\)", line) for line in completed.stdout.splitlines()]
    assert [(m[1], m[2]) for m in answered] == [(str(split.paths[i]), split.expected(i)) for i in (0, 1)]
    for index, match in zip((0, 1), answered, strict=True):
        assert abs(float(match[3]) - split.probabilities[index].max()) < 2e-3


# --- 10. access log -------------------------------------------------------------------------------------


def test_text_access_log_is_one_line_per_request_with_latency(server: Server) -> None:
    probes = [f"text-{i}" for i in range(5)]
    with server.client() as client:
        for probe in probes:
            assert client.get(f"/healthz?tag={probe}").status_code == 200
        assert client.get("/v1/models/nope?tag=text-404").status_code == 404
    assert_one_log_line_each(server, [*probes, "text-404"], "text-")
    lines = [line for line in server.log().splitlines() if "tag=text-" in line]
    pattern = re.compile(r'^\S+ \S+ 127\.0\.0\.1 "GET (\S+)" (\d{3}) \d+\.\dms$')
    parsed = [pattern.match(line) for line in lines]
    assert all(parsed), lines
    assert {(m[1], m[2]) for m in parsed} == {(f"/healthz?tag={p}", "200") for p in probes} | {
        ("/v1/models/nope?tag=text-404", "404")
    }


def test_json_access_log_has_method_path_status_and_latency(small_server: Server, split: Split) -> None:
    with small_server.client() as client:
        assert upload(client, split.image(0), query="?tag=json-ok").status_code == 200
        assert upload(client, TEXT, query="?tag=json-415").status_code == 415
    assert_one_log_line_each(small_server, ["json-ok", "json-415"], "json-")
    records = [json.loads(line) for line in small_server.log().splitlines() if "tag=json-" in line]
    statuses = {}
    for record in records:
        assert record["method"] == "POST" and record["path"].startswith("/predict?tag=json-")
        assert isinstance(record["latency_ms"], int | float) and record["latency_ms"] >= 0
        statuses[record["path"]] = record["status"]
    assert statuses == {"/predict?tag=json-ok": 200, "/predict?tag=json-415": 415}


def test_a_request_cannot_write_a_log_line_of_its_own(server: Server) -> None:
    """A path with a newline, CR, ESC and a quote is logged on one line, each written as an escape."""
    forged = '2026-12-07 01:00:00,000 127.0.0.1 "POST /admin/reload" 200 1.0ms'
    path = "/nope-forge%0A" + forged.replace(" ", "%20").replace('"', "%22") + "%0D%1B]0;title%07"
    answer = server.raw("GET", path)
    assert answer.status == 404
    wait_for(lambda: "nope-forge" in server.log(), "the access line")
    lines = [line for line in server.log().splitlines() if "/admin/reload" in line]
    assert len(lines) == 1 and "nope-forge\\n2026" in lines[0], lines
    assert r"\x1b]0;title\x07" in lines[0] and '\\"POST' in lines[0]
    assert not any(line.startswith("2026-12-07 01:00:00") for line in server.log().splitlines())


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/"])
def test_probes_answer_head(server: Server, path: str) -> None:
    with server.client() as client:
        answer = client.head(path)
    assert answer.status_code == 200 and answer.content == b""


def test_a_connection_that_never_finishes_its_headers_is_closed(export: Path, tmp_path: Path) -> None:
    """Slow or unfinished request heads are closed after --header_timeout_seconds; others are served."""
    running = start_server(export, tmp_path / "server.log", "--poll_seconds", "0", "--header_timeout_seconds", "1")
    host, port = running.url.removeprefix("http://").split(":")
    try:
        stalled = [socket.create_connection((host, int(port)), timeout=TIMEOUT) for _ in range(20)]
        for connection in stalled:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
        for connection in stalled:
            assert connection.recv(1024) == b""  # closed by the server (the socket would time out otherwise)
            connection.close()
        with running.client() as client:
            assert client.get("/healthz").status_code == 200
    finally:
        running.stop()


MEMORY_BOUND = 2**30  # the README's bound on what a client can add to the server's RSS with default limits


def _rss_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M)[1])


@functools.cache
def big_png(mode: str) -> bytes:
    """6000x6600 (39.6 Mpx, under the 40 Mpx default): a small file that decodes to hundreds of MB."""
    image = Image.new(mode, (6000, 6600), 128 if mode == "L" else (128,) * len(mode))
    return image_bytes(image, "PNG")


def test_hostile_requests_add_at_most_the_stated_bound_to_the_servers_memory(
    export: Path, split: Split, tmp_path: Path
) -> None:
    """Issue 23 rows 2-3, with default limits: large images at once, thousands of instances, a flood
    of large bodies. The server's peak RSS (VmHWM) stays within MEMORY_BOUND of its idle RSS."""
    running = start_server(export, tmp_path / "server.log", "--poll_seconds", "0")
    try:
        assert_serves_normally(running, split)
        idle = _rss_kib(running.process.pid, "VmRSS") * 1024

        def post(path: str, **request) -> int:
            with running.client() as client:
                return client.post(path, **request).status_code

        images = [big_png("RGB"), big_png("RGB"), big_png("L"), big_png("L")]
        hostile = [functools.partial(post, "/predict", files={"file": ("big.png", data)}) for data in images]
        hostile.append(functools.partial(post, "/predict", files={"file": ("rgba.png", big_png("RGBA"))}))
        hostile.append(functools.partial(post, TF_PREDICT, json={"instances": [{"b64": b64(png_1x1())}] * 2000}))
        flood = b"{" + os.urandom(30 * 2**20)
        hostile += [functools.partial(post, TF_PREDICT, content=flood) for _ in range(8)]
        with ThreadPoolExecutor(len(hostile)) as pool:
            statuses = list(pool.map(lambda send: send(), hostile))
        peak = _rss_kib(running.process.pid, "VmHWM") * 1024
        assert statuses[:4] == [200] * 4  # under every limit: served, one after another
        assert statuses[4:6] == [413, 413]  # an RGBA of 39.6 Mpx needs ~830 MiB to decode; 2,000 instances
        assert set(statuses[6:]) <= {400, 413, 503}  # garbage bodies: read and refused, or turned away (busy)
        print(f"idle {idle / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB, statuses {statuses}")
        assert peak - idle <= MEMORY_BOUND, f"peak RSS {peak / 2**20:.0f} MiB, idle {idle / 2**20:.0f} MiB"
        assert_serves_normally(running, split)
    finally:
        running.stop()


def png_1x1() -> bytes:
    return image_bytes(Image.new("L", (1, 1)), "PNG")


def test_openapi_describes_every_body_status_and_error(server: Server) -> None:
    """Schema-driven clients can use it: request bodies for the endpoints that read theirs by hand,
    the error statuses each can answer with the error schema, and no 422 (errors here are 400s)."""
    with server.client() as client:
        schema = client.get("/openapi.json").json()
    operations = {(method, path): op for path, ops in schema["paths"].items() for method, op in ops.items()}
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for (method, path), operation in operations.items():
        assert "422" not in operation["responses"], (method, path)
        for status, response in operation["responses"].items():
            if not status.startswith("2"):
                assert response["content"]["application/json"]["schema"] == error, (method, path, status)
        if method == "post":
            assert operation["requestBody"]["required"], path
    assert set(operations[("post", "/predict")]["requestBody"]["content"]) == {"multipart/form-data"}
    for path in ("/v1/models/{name}:predict", "/v1/models/{name}:classify"):
        assert set(operations[("post", path)]["requestBody"]["content"]) == {"application/json"}
        assert {"400", "404", "413", "415", "503"} <= set(operations[("post", path)]["responses"])
    job = operations[("post", "/v1/models/{name}/jobs")]
    assert set(job["requestBody"]["content"]) == {"multipart/form-data"}
    assert "202" in job["responses"] and "200" not in job["responses"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(schema))
    assert set(refs) <= set(schema["components"]["schemas"])  # every reference resolves


def test_hosts_outside_the_allow_list_are_refused_and_cors_is_off_by_default(export: Path, tmp_path: Path) -> None:
    flags = ["--poll_seconds", "0", "--allowed_hosts", "127.0.0.1,localhost,*.example.com"]
    running = start_server(export, tmp_path / "server.log", *flags)
    try:
        with running.client() as client:
            assert client.get("/readyz").status_code == 200  # Host: 127.0.0.1:<port>
            assert client.get("/readyz", headers={"host": "api.example.com"}).status_code == 200
            rebound = client.get("/readyz", headers={"host": "attacker.test:8501", "origin": "http://attacker.test"})
            assert rebound.status_code == 400 and "attacker.test" in rebound.json()["error"]
            cross_site = client.get("/labels", headers={"origin": "http://attacker.test"})
            assert cross_site.status_code == 200 and "access-control-allow-origin" not in cross_site.headers
    finally:
        running.stop()
    allowing = start_server(export, tmp_path / "cors.log", "--poll_seconds", "0", "--cors_origins", "http://app.test")
    try:
        with allowing.client() as client:
            allowed = client.get("/labels", headers={"origin": "http://app.test"})
            other = client.get("/labels", headers={"origin": "http://attacker.test"})
        assert allowed.headers["access-control-allow-origin"] == "http://app.test"
        assert "access-control-allow-origin" not in other.headers
    finally:
        allowing.stop()


def test_the_work_of_a_client_that_has_gone_is_not_done(server: Server) -> None:
    """64 large images, and the client hangs up once they are sent: the server stops after the image
    it is decoding (each takes a second or more) and says so, instead of decoding all 64 for nobody."""
    boundary = "gone7d1f"
    part = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + big_png("L")
        + b"\r\n"
    )
    body = part * 64 + f"--{boundary}--\r\n".encode()
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    connection.request("POST", "/predict?tag=gone", body, {"content-type": f"multipart/form-data; boundary={boundary}"})
    connection.sock.shutdown(socket.SHUT_RDWR)  # sent; now gone without reading the answer
    connection.close()
    wait_for(lambda: "client gone" in server.log(), "the server to notice the client has gone", 600)
    stopped = re.search(r"client gone: stopped after decoding (\d+) of 64 images", server.log())
    assert stopped and int(stopped[1]) < 64, server.log()[-2000:]


def test_docs_assets_are_sent_compressed_to_whoever_accepts_gzip(server: Server) -> None:
    with server.client() as client:
        page = client.get("/docs")
        packed = client.get("/docs/swagger-ui-bundle.js", headers={"accept-encoding": "gzip"})
        plain = client.get("/docs/swagger-ui-bundle.js", headers={"accept-encoding": "identity"})
        missing = client.get("/docs/other.js")
    assert page.status_code == 200 and "/docs/swagger-ui-bundle.js" in page.text and "cdn" not in page.text.lower()
    assert packed.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
    assert packed.content == plain.content and len(plain.content) > 1_000_000  # httpx decodes the gzip one
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
