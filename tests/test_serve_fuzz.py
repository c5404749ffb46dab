"""Property-based: whatever JSON or bytes a client sends to the JSON endpoints, the answer is a 2xx
or a 4xx with the documented `{"error": ...}` body, never a 500, and the server goes on serving.

Hypothesis draws the bodies (derandomized, so every run sends the same ones: no flaky test) from
three families: any JSON value, any bytes, and bodies shaped like TF Serving's requests with wrong
parts. The named hostile cases (deep nesting, huge integers, thousands of instances) are in
tests/test_serve.py's table; this sweeps the space around them (docs/decisions.md #40).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Server

MODEL = "retrained"
ENDPOINTS = (f"/v1/models/{MODEL}:predict", f"/v1/models/{MODEL}:classify", "/v1/models/other:predict")
EXAMPLES = 150  # per property; each is one request to the real server
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=40,
)
image_items = st.one_of(
    st.fixed_dictionaries({"b64": st.text(max_size=60)}),
    st.fixed_dictionaries({"image_bytes": st.fixed_dictionaries({"b64": st.text(max_size=60)})}),
    json_values,
)
tf_serving_shaped = st.one_of(
    st.fixed_dictionaries({"instances": st.lists(image_items, max_size=5)}),
    st.fixed_dictionaries(
        {
            "inputs": st.one_of(
                st.lists(image_items, max_size=5),
                st.dictionaries(st.text(max_size=8), st.lists(image_items, max_size=3), max_size=2),
            )
        }
    ),
    st.fixed_dictionaries({"examples": st.lists(image_items, max_size=5), "signature_name": json_values}),
)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as opened:
        yield opened


def assert_documented_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body


@FUZZ
@given(endpoint=st.sampled_from(ENDPOINTS), body=json_values)
def test_any_json_value(client: httpx.Client, endpoint: str, body) -> None:
    assert_documented_answer(client.post(endpoint, content=json.dumps(body)))


@FUZZ
@given(endpoint=st.sampled_from(ENDPOINTS), body=st.binary(max_size=300))
def test_any_bytes(client: httpx.Client, endpoint: str, body: bytes) -> None:
    assert_documented_answer(client.post(endpoint, content=body, headers={"content-type": "application/json"}))


@FUZZ
@given(endpoint=st.sampled_from(ENDPOINTS[:2]), body=tf_serving_shaped)
def test_tf_serving_shaped_bodies_with_wrong_parts(client: httpx.Client, endpoint: str, body) -> None:
    assert_documented_answer(client.post(endpoint, content=json.dumps(body)))


def test_the_server_still_serves_after_the_sweep(server: Server, client: httpx.Client) -> None:
    assert client.get("/readyz").status_code == 200
    assert server.process.poll() is None
