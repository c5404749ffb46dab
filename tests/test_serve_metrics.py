"""serve's /metrics, read by a real Prometheus server (Debian's `prometheus`, installed by the test
when missing) that scrapes serve on 127.0.0.1, queried back through Prometheus's HTTP API."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import DIGITS, Server, debian_tool, wait_for

MODEL = "retrained"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def prometheus(server: Server, tmp_path: Path) -> Iterator[str]:
    """A Prometheus scraping `server` every second; yields its base URL."""
    binary = debian_tool("prometheus", "prometheus")
    target = server.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        f"scrape_configs:\n  - job_name: serve\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    command = [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}"]
    command += [f"--web.listen-address=127.0.0.1:{port}"]
    with (tmp_path / "prometheus.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus: str, promql: str) -> list[dict]:
    try:
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    except httpx.TransportError:
        return []  # not up yet
    return answer.json()["data"]["result"] if answer.status_code == 200 else []


def test_prometheus_scrapes_request_counts_by_model_endpoint_and_status(server: Server, prometheus: str) -> None:
    digit = (DIGITS / "7" / "digit_0007.png").read_bytes()
    with server.client() as client:
        for _ in range(3):
            assert client.post("/predict?tag=metrics", files={"file": ("7.png", digit)}).status_code == 200
        assert client.post(f"/v1/models/{MODEL}:predict", content=b"{").status_code == 400
        version = str(client.get("/readyz").json()["models"][0]["version"])
    ok = f'serve_requests_total{{model="{MODEL}",endpoint="/predict",status="200"}}'

    def scraped() -> bool:
        return any(float(sample["value"][1]) >= 3 for sample in query(prometheus, ok))

    wait_for(scraped, "Prometheus to scrape three /predict answers", timeout=120)
    (sample,) = query(prometheus, ok)
    assert sample["metric"]["version"] == version and sample["metric"]["method"] == "POST"
    assert query(prometheus, 'serve_requests_total{endpoint="/v1/models/{name}:predict",status="400"}')
    assert query(prometheus, f'serve_model_loads_total{{model="{MODEL}",result="loaded"}}')
    assert query(prometheus, f'serve_model_versions_available{{model="{MODEL}",version="{version}"}}')
    # the digits export names its backbone (model.json's shared_backbone): batches are counted by backbone
    (batches,) = query(prometheus, "serve_batch_size_count")
    assert batches["metric"]["runner"].startswith("backbone-") and float(batches["value"][1]) >= 3


def test_metrics_never_label_a_series_with_a_raw_path(server: Server) -> None:
    """A stranger's URLs all count as one `unmatched` endpoint: they cannot grow the series without bound."""
    with server.client() as client:
        for index in range(20):
            assert client.get(f"/no/such/path/{index}").status_code == 404
        text = client.get("/metrics").text
    assert "/no/such/path" not in text
    assert 'endpoint="unmatched"' in text
