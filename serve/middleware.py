"""Two small ASGI middlewares: a request-size limit and one access-log line per request."""

from __future__ import annotations

import json
import logging
import time

access_log = logging.getLogger("serve.access")


class RequestTooLargeError(Exception):
    """The body is over the limit; answered with 413."""


class BodyLimit:
    """Refuses bodies over `max_bytes`: at once from Content-Length, else while streaming."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, {"error": self._message(int(declared))})
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise RequestTooLargeError(self._message(received))
            return message

        return await self.app(scope, limited_receive, send)

    def _message(self, size: int) -> str:
        return f"request body of {size:,} bytes is over the {self.max_bytes:,}-byte limit (--max_request_bytes)"


class AccessLog:
    """One `client "METHOD path" status latency` line per request; the same values ride along as
    `record.fields` for a JSON formatter."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self._log(scope, status, (time.perf_counter() - started) * 1000)

    def _log(self, scope, status: int, latency_ms: float) -> None:
        client = scope.get("client")
        host = client[0] if client else "-"
        path = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
        fields = {"client": host, "method": scope["method"], "path": path, "status": status}
        fields["latency_ms"] = round(latency_ms, 2)
        access_log.info(
            '%s "%s %s" %d %.1fms', host, scope["method"], path, status, latency_ms, extra={"fields": fields}
        )


async def _send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
