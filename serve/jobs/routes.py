"""The job API: teach the running server a model from a zip of labelled folders.

    POST   /v1/models/{name}/jobs     multipart: `images` (a zip), training options -> 202 {"job": id}
    GET    /v1/jobs                   every job, the newest first
    GET    /v1/jobs/{id}              state, progress, warnings; on success the new version
    GET    /v1/jobs/{id}/events       the same as Server-Sent Events, one per change, until it ends
    DELETE /v1/jobs/{id}              cancels it

Every one needs `Authorization: Bearer <token>`, the token in `--admin_token_file` (401 without
one, 403 for a wrong one, compared in constant time). Without `--admin_token_file` the job API is
off: each of these answers 404 saying how to turn it on.
"""

import asyncio
import hmac
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from serve.api_schema import errors
from serve.jobs.archive import ArchiveError, ArchiveLimits, unpack
from serve.jobs.runner import FINISHED, JobQueueFullError, JobRunner
from serve.models import LATEST_LINK, MODEL_NAME
from serve.text import printable

TRAINABLE_ARCHITECTURES = ("efficientnet_lite0", "efficientnet_lite2")  # feature models built without TensorFlow
FEATURE_SETS = ("auto", "final", "middle", "final+middle")
HEADS = ("softmax", "prototype")
COPY_CHUNK = 1 << 20
OPTION_TYPES = {
    "how_many_training_steps": "integer",
    "learning_rate": "number",
    "train_batch_size": "integer",
    "random_seed": "integer",
    "validation_percentage": "number",
    "testing_percentage": "number",
    "architecture": "string",
    "bottleneck_layers": "string",
    "head": "string",
}
JOB_REQUEST = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "description": "A zip of one folder of images per label, and optional training options",
                    "properties": {
                        "images": {"type": "string", "format": "binary"},
                        **{option: {"type": kind} for option, kind in OPTION_TYPES.items()},
                    },
                    "required": ["images"],
                }
            }
        },
    }
}


class JobAccepted(BaseModel):
    """A job queued: follow it at the `location` header, /v1/jobs/{job}."""

    job: str
    state: str


@dataclass(frozen=True)
class JobSettings:
    """The job API's settings; each is a serve flag (README, "Training through the server")."""

    token: str
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    max_steps: int = 20_000


def read_token(path: Path) -> str:
    """The admin token: the file's text without surrounding whitespace, at least 16 characters."""
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ValueError(f"{path}: the admin token must be one word of at least 16 characters")
    return token


def job_routes(runner: JobRunner | None, settings: JobSettings | None) -> APIRouter:
    """The job routes; all 404 with a hint when the job API is off (`runner` None)."""
    router = APIRouter(tags=["jobs"])

    async def authorized(request: Request) -> JobRunner:
        if runner is None or settings is None:
            raise HTTPException(404, "the job API is off: start serve with --admin_token_file FILE to turn it on")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(
                401, "send the admin token: Authorization: Bearer <token>", {"www-authenticate": "Bearer"}
            )
        if not hmac.compare_digest(token.strip().encode(), settings.token.encode()):
            raise HTTPException(403, "wrong admin token")
        return runner

    Jobs = Annotated[JobRunner, Depends(authorized)]  # noqa: N806 (a type, named as one)

    @router.post(
        "/v1/models/{name}/jobs",
        status_code=202,
        response_model=JobAccepted,
        responses=errors(400, 401, 403, 404, 413, 415, 503),
        openapi_extra=JOB_REQUEST,
    )
    async def create_job(name: str, request: Request, jobs: Jobs) -> JSONResponse:
        """Train model `name`'s next version from a zip of folder-per-label images (field `images`), with
        optional training options as further fields: how_many_training_steps, learning_rate,
        train_batch_size, random_seed, architecture, bottleneck_layers, validation_percentage,
        testing_percentage, head."""
        if not MODEL_NAME.fullmatch(name) or name == LATEST_LINK:
            raise HTTPException(400, f"{printable(name)!r} is not a model name (letters, digits, '-', '_', '.')")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send the job as multipart/form-data, e.g. curl -F images=@photos.zip")
        job_id, folder = jobs.new_folder()
        try:
            async with request.form(max_files=1, max_fields=32) as form:
                upload = form.get("images")
                if not isinstance(upload, UploadFile):
                    raise HTTPException(400, "no `images` file: send a zip of folders of images, -F images=@set.zip")
                options = _options({k: v for k, v in form.multi_items() if k != "images"}, settings.max_steps)
                archive = folder / "images.zip"
                await run_in_threadpool(_save, upload, archive)
            image_dir = await run_in_threadpool(unpack, archive, folder / "images", settings.limits)
            archive.unlink()
            job = jobs.submit(job_id, name, image_dir, options)
        except ArchiveError as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise HTTPException(e.status, str(e)) from e
        except JobQueueFullError as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise HTTPException(503, str(e), {"retry-after": "10"}) from e
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        location = f"/v1/jobs/{job.id}"
        return JSONResponse({"job": job.id, "state": job.state}, status_code=202, headers={"location": location})

    @router.get("/v1/jobs", responses=errors(401, 403, 404))
    async def list_jobs(jobs: Jobs) -> dict[str, Any]:
        """Every job this server knows, the newest first."""
        return {"jobs": [job.public() for job in jobs.list()]}

    @router.get("/v1/jobs/{job_id}", responses=errors(401, 403, 404))
    async def get_job(job_id: str, jobs: Jobs) -> dict[str, Any]:
        """A job's state (queued, running, succeeded, failed, cancelled), progress and result."""
        return _job(jobs, job_id).public()

    @router.delete("/v1/jobs/{job_id}", responses=errors(401, 403, 404))
    async def cancel_job(job_id: str, jobs: Jobs) -> dict[str, Any]:
        """Cancels a queued or running job (a finished one is left as it is)."""
        _job(jobs, job_id)
        job = await run_in_threadpool(jobs.cancel, job_id)
        return job.public()

    @router.get("/v1/jobs/{job_id}/events", responses=errors(401, 403, 404))
    async def job_events(job_id: str, request: Request, jobs: Jobs) -> StreamingResponse:
        """The job as Server-Sent Events: one `data:` line of its JSON per change, until it has ended."""
        job = _job(jobs, job_id)

        async def stream() -> AsyncIterator[bytes]:
            seen = -1
            while not await request.is_disconnected():
                if job.revision != seen:
                    seen = job.revision
                    yield f"data: {json.dumps(job.public())}\n\n".encode()
                    if job.state in FINISHED:
                        return
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    return router


def _job(jobs: JobRunner, job_id: str):
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {printable(job_id)!r}")
    return job


def _save(upload: UploadFile, path: Path) -> None:
    upload.file.seek(0)
    with path.open("wb") as sink:
        shutil.copyfileobj(upload.file, sink, COPY_CHUNK)


def _options(fields: dict[str, Any], max_steps: int) -> dict[str, Any]:
    """The training options of a job's form, checked as the CLI checks its flags (400 otherwise)."""
    checks = {
        "how_many_training_steps": (int, lambda v: 1 <= v <= max_steps, f"1 to {max_steps} (--max_job_steps)"),
        "train_batch_size": (int, lambda v: 1 <= v <= 1024, "1 to 1024"),
        "random_seed": (int, lambda v: 0 <= v < 2**32, "0 to 2**32-1"),
        "learning_rate": (float, lambda v: 0 < v <= 10, "above 0, at most 10"),
        "validation_percentage": (float, lambda v: 0 <= v < 100, "0 to under 100"),
        "testing_percentage": (float, lambda v: 0 <= v < 100, "0 to under 100"),
        "architecture": (str, lambda v: v in TRAINABLE_ARCHITECTURES, ", ".join(TRAINABLE_ARCHITECTURES)),
        "bottleneck_layers": (str, lambda v: v in FEATURE_SETS, ", ".join(FEATURE_SETS)),
        "head": (str, lambda v: v in HEADS, ", ".join(HEADS)),
    }
    options = {}
    for key, value in fields.items():
        if key not in checks:
            raise HTTPException(400, f"unknown training option {printable(key)!r}; known: {', '.join(checks)}")
        kind, ok, allowed = checks[key]
        try:
            parsed = kind(value)
        except (TypeError, ValueError):
            parsed = None
        if parsed is None or not ok(parsed):
            raise HTTPException(400, f"{key} must be {allowed}, not {printable(str(value))[:40]!r}")
        options[key] = parsed
    if options.get("validation_percentage", 10) + options.get("testing_percentage", 10) >= 100:
        raise HTTPException(400, "validation_percentage + testing_percentage must stay under 100")
    return options
