"""What a fuzzer found: inputs and client behaviour that once gave a 500, a hang, or hurt other clients."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest
from fastapi import FastAPI

from ember.http.errors import install_error_handlers
from tests.api.test_disconnect import wait_idle
from tests.conftest import MODEL_ID
from tests.harness import UvicornThread, wait_until

PROMPT = "The quick brown fox jumps over the lazy dog. " * 5  # > one 16-token block: a prefix-cache lookup


def post_raw(server, body: dict, **kw: object) -> httpx.Response:
    # json.dumps escapes a lone surrogate as "\ud800", as a client in another language might send it.
    return httpx.post(server.url + "/v1/completions", content=json.dumps(body),
                      headers={"content-type": "application/json"} | kw.pop("headers", {}), timeout=60, **kw)


@pytest.mark.parametrize(("patch", "param"), [
    ({"prompt": "\ud800"}, "prompt"),
    ({"prompt": ["ok", "a\udfff\ud800b"]}, "prompt"),
    ({"speculation": "\ud800"}, "speculation"),
    ({"prediction": {"type": "content", "content": "\ud800"}}, "prediction"),
    ({"prediction": {"type": "content", "content": [{"type": "text", "text": "\ud83d"}]}}, "prediction"),
    ({"prompt_cache_isolation_key": "\ud800"}, "prompt_cache_isolation_key"),
])
def test_lone_surrogates_are_400_naming_the_field(smol_server, patch: dict, param: str) -> None:
    r = post_raw(smol_server, {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 2} | patch)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["code"] == "invalid_unicode"


def test_a_bad_request_does_not_fail_streams_in_flight(smol_server) -> None:
    """An isolation key the prefix cache could not hash once failed the engine step, hence every stream."""
    got: list[str] = []

    def stream() -> None:
        body = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 40, "ignore_eos": True,
                "stream": True}
        with httpx.stream("POST", smol_server.url + "/v1/completions", json=body, timeout=120) as r:
            got.extend(line for line in r.iter_lines() if line.startswith("data: "))

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.3)
    r = post_raw(smol_server, {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 4,
                               "prompt_cache_isolation_key": "\ud800"})
    assert r.status_code == 400
    t.join(timeout=120)
    assert got[-1] == "data: [DONE]"
    assert not any('"error"' in line for line in got)
    chunks = [json.loads(line[6:]) for line in got[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("key", ["²", "--5", "9" * 5000, "١٢", " 5", ""])
def test_logit_bias_keys_must_be_ascii_token_ids(smol_server, key: str) -> None:
    r = post_raw(smol_server, {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 1, "logit_bias": {key: 5}})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "logit_bias"


def test_clients_sharing_an_x_request_id_do_not_touch_each_other(smol_server) -> None:
    """The header names the response; it once named the engine's requests, so a second client's
    'duplicate id' refusal aborted the first client's sequences and left it hanging."""
    body = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 24, "ignore_eos": True}
    results: list[httpx.Response] = []

    def call() -> None:
        results.append(post_raw(smol_server, body, headers={"x-request-id": "dup"}))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 3
    for r in results:
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "dup" and r.json()["id"] == "dup"
        assert r.json()["usage"]["completion_tokens"] == 24


def _gauge(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, name
    return float(m.group(1))


def test_metrics_gauges_are_current_when_idle(smol_server) -> None:
    """Gauges were set only after engine steps: after a client hung up they kept the last step's figures."""
    wait_idle(smol_server)
    body = {"model": MODEL_ID, "prompt": "Tell me a long story.", "max_tokens": 2000, "ignore_eos": True,
            "stream": True, "n": 2}
    with httpx.stream("POST", smol_server.url + "/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    wait_idle(smol_server)
    # the engine thread publishes its idle snapshot within its 0.5 s inbox wait
    text = wait_until(lambda: _gauge(t := httpx.get(smol_server.url + "/metrics", timeout=10).text,
                                     "ember_requests_running") == 0 and t, 5, "no request running in /metrics",
                      interval=0.1)
    pool = smol_server.engine.pool
    assert _gauge(text, "ember_requests_running") == 0
    assert _gauge(text, "ember_kv_blocks_used") == 0
    assert _gauge(text, "ember_kv_blocks_free") == pool.num_blocks


def test_large_seeds_are_not_folded_to_32_bits(smol_server) -> None:
    def text(seed: int) -> str:
        r = post_raw(smol_server, {"model": MODEL_ID, "prompt": "My favourite animal is", "max_tokens": 12,
                                   "temperature": 1.5, "seed": seed})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    assert text(1) == text(1)
    assert text(2**32 + 1) == text(2**32 + 1)
    assert len({text(1), text(2**32 + 1), text(2**33 + 1)}) == 3


def test_an_unexpected_error_is_a_500_that_keeps_the_connection() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    @app.get("/fine")
    async def fine() -> dict:
        return {"ok": True}

    with UvicornThread(app, lifespan="off") as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        r = c.get("/boom")
        assert r.status_code == 500
        assert r.json()["error"] == {"message": "internal server error; see the server log",
                                     "type": "server_error", "param": None, "code": "internal_error"}
        assert r.headers.get("connection") != "close"
        # The same pooled connection serves the next request.
        assert c.get("/fine").json() == {"ok": True}
        assert c.get("/boom").status_code == 500
        assert c.get("/fine").status_code == 200


@pytest.mark.parametrize("patch", [{"service_tier": "\ud800"}, {"stop": ["a", "b", "c", "d", "\ud800"]},
                                   {"\ud800": 1}, {"logit_bias": {"\ud800": 1}}])
def test_a_lone_surrogate_in_a_schema_violation_is_still_a_422(smol_server, patch: dict) -> None:
    """The 422 body echoes the offending input, which once could not be encoded: a 500 instead."""
    r = post_raw(smol_server, {"model": MODEL_ID, "prompt": "hi", "max_tokens": 2} | patch)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def _strict_json(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_logprobs_under_a_grammar_have_no_infinities(smol_server) -> None:
    """A grammar allowing fewer tokens than the alternatives asked for left -inf in top_logprobs: a 500
    (JSON has no infinity), and `-Infinity` in streams."""
    body = {"model": MODEL_ID, "prompt": "hi", "max_tokens": 1, "logprobs": 3,
            "response_format": {"type": "grammar", "grammar": 'root ::= "a"'}}
    r = post_raw(smol_server, body)
    assert r.status_code == 200, r.text
    lp = _strict_json(r.text)["choices"][0]["logprobs"]  # type: ignore[index]
    assert lp["tokens"] == ["a"] and 1 <= len(lp["top_logprobs"][0]) <= 3
    with httpx.stream("POST", smol_server.url + "/v1/completions", json=body | {"stream": True}, timeout=60) as s:
        lines = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    for line in lines[:-1]:
        _strict_json(line)
    r = post_raw(smol_server, body | {"logprobs": True, "top_logprobs": 5})
    assert r.status_code == 200, r.text
    _strict_json(r.text)
