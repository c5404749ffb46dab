"""Small ASGI middlewares: request-size limits, a Host allow-list, and one access-log line per request."""

from __future__ import annotations

import json
import logging
import time

from serve.metrics import UNMATCHED, ServeMetrics
from serve.text import printable

access_log = logging.getLogger("serve.access")


class RequestTooLargeError(Exception):
    """The body is over the limit; answered with 413."""


class BodiesInFlightError(Exception):
    """Receiving this body would pass the limit on bodies held at once; answered with 503."""


class BodyLimit:
    """Refuses a body over `max_bytes` (413), and one that would take the bytes of all bodies being
    received or held by requests in progress past `max_in_flight` (503): at once from Content-Length,
    else while streaming. So request bodies can never hold more than `max_in_flight` bytes together."""

    def __init__(self, app, max_bytes: int, max_in_flight: int, uploads: tuple[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.max_in_flight = max_in_flight
        self.uploads = uploads  # (path suffix, limit): POSTs whose body goes to disk, not memory (job zips)
        self.in_flight = 0  # one event loop: no lock needed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        declared = int(declared) if declared and declared.isdigit() else 0
        if self.uploads and scope["method"] == "POST" and scope["path"].endswith(self.uploads[0]):
            return await self._upload(scope, receive, send, declared, self.uploads[1])
        if declared > self.max_bytes:
            return await _send_json(send, 413, {"error": self._message(declared)})
        if self.in_flight + declared > self.max_in_flight:
            return await _send_json(send, 503, {"error": self._busy()}, [(b"retry-after", b"1")])
        held = declared
        self.in_flight += held
        received = 0

        async def limited_receive():
            nonlocal received, held
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise RequestTooLargeError(self._message(received))
            if received > held:  # no or a false Content-Length: count what arrives
                if self.in_flight + received - held > self.max_in_flight:
                    raise BodiesInFlightError(self._busy())
                self.in_flight += received - held
                held = received
            return message

        try:
            return await self.app(scope, limited_receive, send)
        finally:
            self.in_flight -= held

    async def _upload(self, scope, receive, send, declared: int, limit: int):
        """A body spooled to disk by its handler: only its size is bounded, not counted in flight."""
        message = f"upload of {{:,}} bytes is over the {limit:,}-byte limit (--max_job_upload_mb)"
        if declared > limit:
            return await _send_json(send, 413, {"error": message.format(declared)})
        received = 0

        async def limited_receive():
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > limit:
                raise RequestTooLargeError(message.format(received))
            return event

        return await self.app(scope, limited_receive, send)

    def _message(self, size: int) -> str:
        return f"request body of {size:,} bytes is over the {self.max_bytes:,}-byte limit (--max_request_bytes)"

    def _busy(self) -> str:
        return f"the server holds {self.max_in_flight:,} bytes of request bodies already (--max_body_mb_in_flight)"


class HostAllowList:
    """Answers 400 to a request whose Host header is not one of `hosts` (`*.example.com` matches its
    subdomains; `*` alone, the default, allows any). A page on another site that rebinds its DNS name to
    this server's address sends its own name as Host, so naming this server's names stops it reading
    the API from a browser."""

    def __init__(self, app, hosts: list[str]):
        self.app = app
        self.hosts = [host.lower() for host in hosts]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or "*" in self.hosts:
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host  # [::1] keeps its colons
        if any(name == allowed or (allowed.startswith("*.") and name.endswith(allowed[1:])) for allowed in self.hosts):
            return await self.app(scope, receive, send)
        message = f"host {printable(host)!r} is not served here (--allowed_hosts)"
        return await _send_json(send, 400, {"error": message})


class AccessLog:
    """One `client "METHOD path" status latency` line per request; the same values ride along as
    `record.fields` for a JSON formatter. The method and path are the client's bytes, printed with
    `serve.text.printable` (and `"` escaped) so that no request can write a line of its own."""

    def __init__(self, app, metrics: ServeMetrics | None = None):
        self.app = app
        self.metrics = metrics

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
            seconds = time.perf_counter() - started
            self._log(scope, status, seconds * 1000)
            if self.metrics is not None:
                self._count(scope, status, seconds)

    def _count(self, scope, status: int, seconds: float) -> None:
        """The request in the metrics: its route's template (never the raw path) and the model that answered."""
        route = scope.get("route")
        state = scope.get("state") or {}
        endpoint = getattr(route, "path", None) or UNMATCHED
        model, version = str(state.get("model", "")), str(state.get("version", ""))
        self.metrics.request(model, version, endpoint, scope["method"] if route else "", status, seconds)

    def _log(self, scope, status: int, latency_ms: float) -> None:
        client = scope.get("client")
        host = client[0] if client else "-"
        path = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
        path, method = (printable(text).replace('"', '\\"') for text in (path, scope["method"]))
        fields = {"client": host, "method": method, "path": path, "status": status}
        fields["latency_ms"] = round(latency_ms, 2)
        access_log.info('%s "%s %s" %d %.1fms', host, method, path, status, latency_ms, extra={"fields": fields})


async def _send_json(send, status: int, body: dict, extra_headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += extra_headers or []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
