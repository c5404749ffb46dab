"""What the OpenAPI schema says about requests the endpoints read by hand, and about errors.

The upload and the TensorFlow Serving endpoints read their bodies themselves (to give one clear
error for each way a body can be wrong, and to refuse oversized ones before parsing), so FastAPI
cannot infer their request bodies; they are declared here. Every error is `{"error": "..."}` with
a status that fits; FastAPI's default 422 validation response never happens here (validation errors
are 400s) and is removed from the schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

ERROR_DESCRIPTIONS = {
    400: "Malformed request: a corrupt image, malformed JSON, bad base64, a parameter out of range",
    401: "No admin token sent (the job API): send Authorization: Bearer <token>",
    403: "Wrong admin token",
    404: "No such model, version, label, job or path (or the job API is off)",
    413: "Over a limit: body size, images per request, image pixels, decoding memory",
    415: "Not an image in a format read here (JPEG, PNG, GIF, BMP, WebP), or not multipart",
    500: "Internal error",
    503: "No model loaded yet, request bodies at their limit, or the job queue full; retry after Retry-After seconds",
}


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str = Field(description="What was wrong, in one line")


class Image64(BaseModel):
    b64: str = Field(description="The image file (JPEG, PNG, GIF, BMP or WebP), base64-encoded")


class PredictRows(BaseModel):
    """TensorFlow Serving's row format: one item per image, {"b64": ...} or {"<input>": {"b64": ...}}."""

    instances: list[Image64 | dict[str, Image64]] = Field(min_length=1)


class PredictColumns(BaseModel):
    """TensorFlow Serving's columnar format: {"inputs": {"image_bytes": [{"b64": ...}, ...]}} or a list."""

    inputs: dict[str, list[Image64]] | list[Image64]


class ClassifyRequest(BaseModel):
    """TensorFlow Serving's classify: one example per image."""

    examples: list[Image64 | dict[str, Image64]] = Field(min_length=1)


class ScoredRow(BaseModel):
    scores: list[float] = Field(description="Softmax scores in label order")
    classes: list[str] = Field(description="The labels, in score order")


class AnsweredBy(BaseModel):
    """Which model and version answered (TF Serving's `model_spec`)."""

    name: str
    version: str


class TFPredictResponse(BaseModel):
    """`predictions` for the row format, `outputs` (lists of lists) for the columnar one."""

    predictions: list[ScoredRow] | None = None
    outputs: dict[str, list[list[float]] | list[list[str]]] | None = None
    model_spec: AnsweredBy


class ClassifyResponse(BaseModel):
    result: list[list[tuple[str, float]]] = Field(description="Per image, every (label, score), best first")
    model_spec: AnsweredBy


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer these error statuses."""
    return {status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def _schema(model: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the model's JSON schema, the definitions it refers to), with refs into the components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema, schema.pop("$defs", {})


def _json_body(*models: type[BaseModel]) -> dict[str, Any]:
    schemas = [_schema(model)[0] for model in models]
    schema = schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


UPLOAD_REQUEST = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "description": "One or more image files, under any field names",
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["file"],
                }
            }
        },
    }
}
PREDICT_REQUEST = _json_body(PredictRows, PredictColumns)
CLASSIFY_REQUEST = _json_body(ClassifyRequest)


def complete_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with the request bodies' component schemas added and its 422s removed."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (PredictRows, PredictColumns, ClassifyRequest):
        for name, definition in _schema(model)[1].items():
            components.setdefault(name, definition)
    for operations in schema["paths"].values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema
