"""The one place that turns errors into HTTP: status codes and OpenAI-shaped bodies.

Every error body carries `{"error": {"message", "type", "param", "code"}}`, which the openai SDK reads into
`exc.type/param/code`. Schema violations (422) also keep FastAPI's `detail` list, the spec's declared
HTTPValidationError shape. Nothing here ever sends a traceback to a client.
"""

from __future__ import annotations

import logging
import math
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.errors import (
    AlreadyExists,
    DeadlineExceeded,
    EmberError,
    FailedPrecondition,
    InvalidRequest,
    ModelLoadError,
    NotFound,
    Overloaded,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    Unauthorized,
)
from ember.protocol.schemas import WIRE_FIELD_NAMES

log = logging.getLogger("ember.http")

# (status, OpenAI error type) for each kind; the first match in MRO order wins.
_KINDS: tuple[tuple[type[EmberError], int, str], ...] = (
    (InvalidRequest, 400, "invalid_request_error"),
    (FailedPrecondition, 400, "invalid_request_error"),
    (Unauthorized, 401, "authentication_error"),
    (PermissionDenied, 403, "permission_error"),
    (NotFound, 404, "invalid_request_error"),
    (AlreadyExists, 409, "invalid_request_error"),
    (DeadlineExceeded, 408, "timeout_error"),
    (RateLimited, 429, "rate_limit_error"),
    (Overloaded, 503, "overloaded_error"),
    (ModelLoadError, 500, "server_error"),
)

# google.rpc.Code for each HTTP status on Gateway paths (their error bodies are google.rpc.Status).
_RPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 409: 6, 413: 3, 422: 3, 429: 8, 499: 1, 500: 13,
              503: 14}
GATEWAY_PREFIX = "/v1/accounts"


def is_gateway(request: Request) -> bool:
    return request.url.path == GATEWAY_PREFIX or request.url.path.startswith(GATEWAY_PREFIX + "/")


def status_body(status: int, message: str) -> dict:
    """google.rpc.Status, the Gateway's error body."""
    return {"code": _RPC_CODES.get(status, 2), "message": message, "details": []}


def gateway_response(request: Request, status: int, message: str, exc: BaseException | None = None
                     ) -> JSONResponse:
    headers = _headers(request, exc)
    if status == 409:
        headers["x-should-retry"] = "false"
    if status == 422:  # schema violations are INVALID_ARGUMENT on the Gateway
        status = 400
    return JSONResponse(status_body(status, message), status_code=status, headers=headers)

# The OpenAI error type of an HTTP-level refusal: that of the first kind above with the same status, so a
# 404 for an unknown route reads as a NotFound does; statuses only HTTP itself produces (405: method, 413:
# body size) are invalid requests.
_STATUS_TYPES = {405: "invalid_request_error", 413: "invalid_request_error"} | {
    status: typ for _, status, typ in reversed(_KINDS)}

# Errors that only say "not this union branch"; a branch that matched the type but broke a bound says more.
_BRANCH_MISS = re.compile(r".*_type$|^literal_error$|^union_tag_invalid$|^is_instance_of$")


def status_of(exc: EmberError) -> tuple[int, str]:
    for kind, status, typ in _KINDS:
        if isinstance(exc, kind):
            return status, typ
    return 500, "server_error"


def error_body(message: str, typ: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": typ, "param": param, "code": code}}


def error_payload(exc: BaseException) -> dict:
    """The `{"error": {...}}` body for any exception (also sent as the last event of a failed stream)."""
    if isinstance(exc, EmberError):
        _, typ = status_of(exc)
        return error_body(exc.message, typ, exc.param, exc.code)
    return error_body("internal server error; see the server log", "server_error", None, "internal_error")


def param_of(loc: tuple | list) -> str | None:
    """`["body", "prompt", "list[int]", 0]` -> "prompt".

    Only real field names survive: pydantic's union-branch labels ("list[int]", "constrained-int"),
    discriminator tags and list indexes are dropped.
    """
    parts = [p for p in loc if isinstance(p, str) and p in WIRE_FIELD_NAMES]
    return ".".join(parts) or None


ECHO_DEPTH = 16
"""Levels of a rejected input echoed back in `detail`; deeper parts are elided. A body nested a few hundred
levels deep (the JSON parser admits ~1,000) otherwise recursed past Python's limit here: a 500."""


def _jsonable(v: object, depth: int = 0) -> object:
    if depth > ECHO_DEPTH and isinstance(v, (dict, list, tuple)):
        return "..."
    if isinstance(v, str):
        # A lone surrogate ("\\ud800" in the request) cannot be encoded as UTF-8: echoed into `detail`
        # or the message as it came, it turned the 422 into a 500. Written out as its escape instead.
        return v.encode("utf-8", "backslashreplace").decode("utf-8")
    if v is None or isinstance(v, (bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {_jsonable(str(k)): _jsonable(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x, depth + 1) for x in v]
    return str(v)


def _param_for(err: dict) -> str | None:
    loc = err.get("loc", ())
    if err.get("type") == "extra_forbidden":  # the unknown name itself is the culprit
        return ".".join(p for p in loc if isinstance(p, str) and p != "body") or None
    return param_of(loc)


MAX_DETAIL = 8
"""Errors listed in a 422's `detail`; the message counts the fields beyond them."""
_CLIP_CHARS = 200
_CLIP_ITEMS = 16
_CLIP_DEPTH = 3


def _clip(v: object, depth: int = 0) -> object:
    """An echoed input cut to a few hundred bytes: the input of a `string_type` error on `prompt` is the
    whole 300,000-item list, and echoing it made the error as large as the request."""
    if isinstance(v, str):
        return v if len(v) <= _CLIP_CHARS else v[:_CLIP_CHARS] + f"... ({len(v)} characters)"
    if isinstance(v, (list, tuple, dict)):
        if depth >= _CLIP_DEPTH or len(v) > _CLIP_ITEMS:
            return f"<{type(v).__name__} of {len(v)} items>"
        if isinstance(v, dict):
            return {_clip(str(k), depth + 1): _clip(x, depth + 1) for k, x in v.items()}
        return [_clip(x, depth + 1) for x in v]
    return v


def validation_body(errors: list[dict]) -> dict:
    detail = [_jsonable({k: (_clip(e[k]) if k in ("input", "ctx") else e[k])
                         for k in ("type", "loc", "msg", "input", "ctx") if k in e})
              for e in errors[:MAX_DETAIL]]
    first = next((e for e in errors if not _BRANCH_MISS.match(e.get("type", ""))),
                 errors[0] if errors else {"loc": (), "msg": "invalid request"})
    param = _param_for(first)
    text = str(first["msg"]).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        text = "unknown field; this endpoint does not accept it"
    # A union reports one error per branch; the first one names the field and says enough.
    msg = f"{param}: {text}" if param else text
    if first.get("type") == "json_invalid":
        msg = "the request body is not valid JSON"
    others = len({_param_for(e) for e in errors} - {param})
    if others:
        msg += f" (and {others} more field{'s' if others > 1 else ''} invalid)"
    return _jsonable({"detail": detail, **error_body(msg, "invalid_request_error", param, None)})  # type: ignore[return-value]


def _headers(request: Request, exc: BaseException | None = None) -> dict[str, str]:
    h = {}
    rid = request.headers.get("x-request-id")
    if rid:
        h["x-request-id"] = rid
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        h["retry-after"] = str(max(1, math.ceil(retry)))
    if isinstance(exc, ResourceExhausted):  # a cap: retrying alone never clears it (the SDKs read this)
        h["x-should-retry"] = "false"
    return h


def ember_error_response(request: Request, exc: EmberError) -> JSONResponse:
    """The response for an EmberError, in the shape of the path's API (OpenAI's or the Gateway's)."""
    status, _ = status_of(exc)
    if status >= 500 and status != 503:
        log.error("%s: %s", type(exc).__name__, exc.message)
    if is_gateway(request):
        return gateway_response(request, status, exc.message, exc)
    return JSONResponse(error_payload(exc), status_code=status, headers=_headers(request, exc))


def http_error_response(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """An HTTP-level refusal (404, 405, 413, ...) in the shape of the path's API."""
    typ = _STATUS_TYPES.get(exc.status_code, "server_error" if exc.status_code >= 500 else
                            "invalid_request_error")
    msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and msg == "Not Found":
        msg = f"no route for {request.method} {request.url.path}"
    headers = dict(exc.headers or {}) | _headers(request)
    if is_gateway(request):
        return JSONResponse(status_body(exc.status_code, msg), status_code=exc.status_code, headers=headers)
    return JSONResponse(error_body(msg, typ), status_code=exc.status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = validation_body(list(exc.errors()))
        if is_gateway(request):
            return gateway_response(request, 400, body["error"]["message"])
        return JSONResponse(body, status_code=422, headers=_headers(request))

    @app.exception_handler(EmberError)
    async def _ember(request: Request, exc: EmberError) -> JSONResponse:
        return ember_error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return http_error_response(request, exc)

    app.add_middleware(CatchUnexpected)


class CatchUnexpected:
    """Answers an unexpected exception with a 500 in the OpenAI shape and keeps the connection.

    A handler registered for `Exception` runs in Starlette's outermost middleware, which sends its response
    and then re-raises, and uvicorn closes the keep-alive connection on that: the client's next request
    on it failed as well. Caught here, inside that middleware, the error ends with this one response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            request = Request(scope)
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            if started:  # a body is already on its way: nothing well-formed can follow
                raise
            if is_gateway(request):
                response = JSONResponse(status_body(500, "internal error; see the server log"), status_code=500,
                                        headers=_headers(request))
            else:
                response = JSONResponse(error_payload(exc), status_code=500, headers=_headers(request))
            await response(scope, receive, send)
