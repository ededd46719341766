"""What a request may cost before any route runs: its body's size (413), and its key before its body (401).

FastAPI reads and parses a JSON body before it resolves a route's dependencies, so without this a request
with no key, or a bad one, had its 200 MB body read and parsed before its 401. Here:

- a body larger than its path's limit is refused with 413 as soon as that is known: at once when
  `content-length` says so, else the moment the bytes read pass the limit (a chunked body);
- a request that carries a body to an authenticated path is authenticated first: no key, or a key the
  store does not know, is a 401 (a disabled user's key 403) sent without reading the body.

Both answers close the connection: the body the client is still sending is never read.
The upload paths (a dataset's `:upload`, `/v1/files`) stream their files under `--max-upload-mb` and are
bounded by that instead of the inference body limit.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.errors import EmberError
from ember.http.errors import ember_error_response, http_error_response
from ember.platform.auth import authorization_of

UPLOAD_SLACK = 64 * 1024
"""Room for multipart framing beyond the file itself (as ember.gateway.uploads allows)."""

AUTHENTICATED = ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/v1/files",
                 "/v1/batches", "/v1/accounts/")
"""Path prefixes whose every request names a key (or, on an open server, may name none for inference)."""


class BodyTooLarge(HTTPException):
    """Raised from `receive` while a route reads the body: Starlette's handler turns it into the 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than this server's limit of {_size(limit)} for "
                              "this path", headers={"connection": "close"})


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n // 1024} KiB"


def is_upload(method: str, path: str) -> bool:
    return method == "POST" and (path == "/v1/files" or (path.startswith("/v1/accounts/")
                                                          and path.endswith(":upload")))


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


class BoundedRequests:
    """ASGI middleware: the body limit for every path, and authentication before a body is read."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes + UPLOAD_SLACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        limit = self.max_upload_bytes if is_upload(method, path) else self.max_body_bytes
        declared = _header(scope, b"content-length")
        chunked = _header(scope, b"transfer-encoding") is not None
        has_body = chunked or (declared is not None and declared != b"0")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, BodyTooLarge(limit))
            return
        if has_body and path.startswith(AUTHENTICATED):
            refusal = await self._authenticate(scope)
            if refusal is not None:
                await self._refuse(scope, receive, send, refusal)
                return
        await self.app(scope, _counting(receive, limit), send)

    async def _authenticate(self, scope: Scope) -> EmberError | None:
        """The refusal the route's own authentication would give (401 no or unknown key, 403 a disabled
        user's key, 400 two Authorization headers), or None to go on."""
        state = getattr(scope["app"].state, "ember", None)
        if state is None:  # not started yet: the route's own dependency answers
            return None
        inference = not scope["path"].startswith("/v1/accounts/")
        try:
            header = authorization_of(Request(scope))
            # A key not in the cache is looked up in the store: off the event loop.
            await asyncio.to_thread(state.platform.auth.authenticate, header, inference=inference)
        except EmberError as e:
            return e
        return None

    async def _refuse(self, scope: Scope, receive: Receive, send: Send,
                      exc: BodyTooLarge | EmberError) -> None:
        request = Request(scope)
        if isinstance(exc, EmberError):
            response = ember_error_response(request, exc)
        else:
            response = http_error_response(request, exc)
        response.headers["connection"] = "close"
        await response(scope, receive, send)


def _counting(receive: Receive, limit: int) -> Receive:
    """`receive` that raises BodyTooLarge once the body read so far passes `limit`."""
    total = 0

    async def wrapped() -> Message:
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise BodyTooLarge(limit)
        return message

    return wrapped
