"""api/errors.py's two status tables agree: an HTTP-level refusal with a status an EmberError kind also has
carries that kind's OpenAI error type (an unknown route's 404 reads as a NotFound does)."""

from __future__ import annotations

import json

import pytest
from fastapi import Request
from starlette.exceptions import HTTPException

from ember.http.errors import _KINDS, ember_error_response, http_error_response, status_of


def request(path: str = "/v1/completions") -> Request:
    return Request({"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""})


@pytest.mark.parametrize(("kind", "status", "typ"), _KINDS, ids=[k.__name__ for k, _, _ in _KINDS])
def test_a_kind_and_its_http_status_give_one_type(kind: type, status: int, typ: str) -> None:
    first = next(t for _, s, t in _KINDS if s == status)  # a status two kinds share answers as the first
    assert status_of(kind("x")) == (status, typ)
    by_kind = json.loads(ember_error_response(request(), kind("x")).body)["error"]["type"]
    by_http = json.loads(http_error_response(request(), HTTPException(status)).body)["error"]["type"]
    assert by_kind == typ and by_http == first


def test_http_only_statuses_are_invalid_requests() -> None:
    for status in (405, 413, 422):
        body = json.loads(http_error_response(request(), HTTPException(status)).body)
        assert body["error"]["type"] == "invalid_request_error"
    assert json.loads(http_error_response(request(), HTTPException(502)).body)["error"]["type"] == "server_error"
