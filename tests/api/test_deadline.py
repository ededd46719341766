"""`x-request-timeout` bounds a request's total time: past it the engine drops the request and frees its blocks."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.api.test_disconnect import wait_idle
from tests.conftest import MODEL_ID

LONG = {"model": MODEL_ID, "prompt": "Tell me a very long story.", "max_tokens": 3000, "ignore_eos": True}


def test_a_non_streamed_request_past_its_deadline_is_a_408(smol_server) -> None:
    wait_idle(smol_server)
    t0 = time.monotonic()
    r = httpx.post(smol_server.url + "/v1/completions", json=LONG, headers={"x-request-timeout": "0.5"},
                   timeout=60)
    assert time.monotonic() - t0 < 10
    assert r.status_code == 408, r.text
    assert r.json()["error"]["code"] == "deadline_exceeded" and r.json()["error"]["type"] == "timeout_error"
    wait_idle(smol_server, timeout=5)  # aborted in the engine, blocks back


def test_a_stream_past_its_deadline_ends_with_an_error_event(smol_server) -> None:
    wait_idle(smol_server)
    t0 = time.monotonic()
    with httpx.stream("POST", smol_server.url + "/v1/completions", json=LONG | {"stream": True},
                      headers={"x-request-timeout": "1.0"}, timeout=60) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert time.monotonic() - t0 < 10
    assert lines[-1] == "[DONE]"
    events = [json.loads(x) for x in lines[:-1]]
    assert any(e.get("choices") for e in events)  # it did stream tokens before the deadline
    assert events[-1]["error"]["code"] == "deadline_exceeded"
    wait_idle(smol_server, timeout=5)


def test_a_request_within_its_deadline_is_untouched(smol_server) -> None:
    body = {"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    plain = httpx.post(smol_server.url + "/v1/completions", json=body, timeout=60)
    timed = httpx.post(smol_server.url + "/v1/completions", json=body, headers={"x-request-timeout": "120"},
                       timeout=60)
    assert timed.status_code == 200 and plain.status_code == 200
    assert timed.json()["choices"][0]["text"] == plain.json()["choices"][0]["text"]


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf", "1e9", ""])
def test_a_bad_timeout_header_is_a_400_naming_it(smol_server, value: str) -> None:
    r = httpx.post(smol_server.url + "/v1/completions", json={"model": MODEL_ID, "prompt": "hi", "max_tokens": 1},
                   headers={"x-request-timeout": value}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "x-request-timeout"
