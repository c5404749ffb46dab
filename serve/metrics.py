"""Prometheus metrics of the server, at GET /metrics (prometheus-client's text format).

Requests are counted and timed by model, version, endpoint (the route's path template, so a
stranger's URLs cannot create series) and status; interpreter calls by batch size; model loads by
model and result, with their duration; and the models and versions available. Each app has its own
registry: two servers in one process (the tests) never share counts.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
UNMATCHED = "unmatched"  # the endpoint label of a request no route matched (404s, 405s)


class ServeMetrics:
    """The metrics one server exports; `render()` is the /metrics body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "serve_requests",
            "HTTP requests answered, by model, version, endpoint and status.",
            ["model", "version", "endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "serve_request_duration_seconds",
            "Time from a request's arrival to its answer, by model, version and endpoint.",
            ["model", "version", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "serve_batch_size",
            "Images per interpreter call (micro-batching), by runner: a model's own model.tflite, or a "
            "backbone shared by several models (backbone-<digest prefix>).",
            ["runner"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.loads = Counter(
            "serve_model_loads",
            "Attempts to load an export, by model and result (loaded, refused).",
            ["model", "result"],
            registry=self.registry,
        )
        self.load_seconds = Histogram(
            "serve_model_load_duration_seconds",
            "Time to load and test-run an export, by model.",
            ["model"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.versions = Gauge(
            "serve_model_versions_available",
            "Versions of each model answering requests.",
            ["model", "version"],
            registry=self.registry,
        )
        self._available: set[tuple[str, str]] = set()  # the label pairs of `versions` set now

    def request(self, model: str, version: str, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(model, version, endpoint, method, str(status)).inc()
        self.latency.labels(model, version, endpoint).observe(seconds)

    def loaded(self, model: str, seconds: float, ok: bool) -> None:
        self.loads.labels(model, "loaded" if ok else "refused").inc()
        self.load_seconds.labels(model).observe(seconds)

    def serving(self, model: str, versions: list[int]) -> None:
        """`versions` of `model` are now the ones available (none: the model is not served)."""
        for labels in [labels for labels in self._available if labels[0] == model]:
            self.versions.remove(*labels)
            self._available.discard(labels)
        for version in versions:
            labels = (model, str(version))
            self.versions.labels(*labels).set(1)
            self._available.add(labels)

    def render(self) -> bytes:
        return generate_latest(self.registry)
