"""JSON nested deep anywhere in a request is a 400 (or the usual 422) naming the field, never a 500.

Python's json parser admits ~1,000 levels; what walks the result further (the schema compiler, the
request walk, the error echo) recursed past the interpreter's limit on a few hundred: a 500 with a
traceback in the log for one small request.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import MODEL_ID

D = 500  # parsed fine by the JSON parser, past what a recursive walk of it survives


def nested_list(d: int) -> str:
    return "[" * d + "]" * d


def nested_object(d: int) -> str:
    return '{"a":' * d + "1" + "}" * d


def post(url: str, path: str, raw: str) -> httpx.Response:
    return httpx.post(url + path, content=raw, headers={"content-type": "application/json"}, timeout=120)


DEEP = "@DEEP@"


def with_deep(body: dict, raw: str) -> str:
    """`body` as JSON with its DEEP placeholder replaced by the raw JSON text `raw`."""
    return json.dumps(body).replace(f'"{DEEP}"', raw)


CHAT = {"model": MODEL_ID, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
CMPL = {"model": MODEL_ID, "prompt": "a", "max_tokens": 1}


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", with_deep({**CMPL, "response_format": {"type": "json_schema", "json_schema": DEEP}},
                                  nested_object(D)), "response_format"),
    ("/v1/chat/completions", with_deep({**CHAT, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": DEEP}}]}, nested_object(D)), "tools"),
    ("/v1/chat/completions", with_deep({**CHAT, "tool_choice": DEEP}, nested_object(D)), "tool_choice"),
    ("/v1/completions", with_deep({**CMPL, "prediction": {"type": "content", "content": [
        {"type": "text", "text": "x", "y": DEEP}]}}, nested_list(D)), "prediction"),
])
def test_deep_free_form_fields_are_a_400_naming_them(smol_server, path: str, body: str, param: str) -> None:
    r = post(smol_server.url, path, body)
    assert r.status_code == 400, r.text[:300]
    err = r.json()["error"]
    assert err["param"] == param and "nested deeper than" in err["message"]


def test_a_deep_schema_string_is_a_400_naming_response_format(smol_server) -> None:
    schema = '{"type":"object","properties":{"a":' + nested_list(2000) + "}}"  # past the parser's own limit
    r = httpx.post(smol_server.url + "/v1/completions", timeout=120, json={
        "model": MODEL_ID, "prompt": "a", "max_tokens": 1,
        "response_format": {"type": "json_schema", "json_schema": schema}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    assert "nested deeper than 64" in r.json()["error"]["message"]


def test_a_deeply_nested_grammar_is_a_400_naming_response_format(smol_server) -> None:
    # Held on main too (llguidance's converter reports its own recursion); kept so it stays a 400.
    grammar = "root ::= " + "(" * 2000 + '"a"' + ")" * 2000
    r = httpx.post(smol_server.url + "/v1/completions", timeout=120, json={
        "model": MODEL_ID, "prompt": "a", "max_tokens": 1, "response_format": {"type": "grammar", "grammar": grammar}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


def test_a_deep_value_in_a_typed_field_is_a_422_with_a_bounded_echo(smol_server) -> None:
    r = post(smol_server.url, "/v1/completions",
             with_deep({**CMPL, "metadata": DEEP}, nested_list(D)))
    assert r.status_code == 422 and r.json()["error"]["param"] == "metadata"
    assert len(r.content) < 2000  # the echoed input is cut a few levels down


def test_a_body_nested_past_the_parser_is_a_400(smol_server) -> None:
    r = post(smol_server.url, "/v1/completions", nested_list(100_000))
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(smol_server.url + "/health", timeout=30).status_code == 200
