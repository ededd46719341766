"""The middlewares every Ray Serve HTTP proxy runs: AffinityKeyMiddleware turns ember's affinity key into
the session id Serve's router sees; SingleRequestId keeps one `x-request-id` on each response.

Serve's proxy hands the router only the request's headers (the body travels later, pulled by the
replica), and takes the session id from one header (`x-session-id` unless RAY_SERVE_SESSION_ID_HEADER_KEY
says otherwise). Fireworks clients name a session with `x-session-affinity` or with `prompt_cache_key` in
the JSON body, scoped by `prompt_cache_isolation_key`. So for each POST this reads the body once (capped),
computes the key (ember.cluster.affinity.affinity_key), writes it as the session header (replacing any
client-sent one, so a client cannot step out of its isolation scope) and replays the body unchanged.

Loaded in the proxy by RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=ember.cluster.proxy:middlewares, which
must be in the environment of the Ray node that runs the proxy (`ember serve` and `ember cluster up` set
it).
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.cluster.affinity import MAX_BODY_BYTES, SESSION_HEADER, key_from_body

CALLBACK_PATH = "ember.cluster.proxy:middlewares"


def _session_header() -> bytes:
    from ray.serve._private.constants import SERVE_SESSION_ID  # this proxy's configured header

    return SERVE_SESSION_ID.lower().encode("latin-1")


class AffinityKeyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.session = _session_header()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope.get("headers", [])]
        header = next((v.decode("latin-1") for k, v in headers if k.lower() == SESSION_HEADER.encode()), None)
        buffered: list[Message] = []
        if scope.get("method") == "POST":
            body = b""
            while True:  # read the whole body (it is small: a completion request), keep the messages
                m = await receive()
                buffered.append(m)
                if m["type"] != "http.request":
                    break
                if len(body) <= MAX_BODY_BYTES:
                    body += m.get("body", b"")
                if not m.get("more_body", False):
                    break
            key = key_from_body(body, header)
        else:
            key = key_from_body(b"", header)
        headers = [(k, v) for k, v in headers if k.lower().replace(b"_", b"-") != self.session.replace(b"_", b"-")]
        if key is not None:
            headers.append((self.session, key.encode("utf-8")))
        scope = dict(scope, headers=headers)

        async def replay() -> Message:
            if buffered:
                return buffered.pop(0)
            return await receive()

        await self.app(scope, replay if buffered else receive, send)


class SingleRequestId:
    """Exactly one `x-request-id` on every response.

    Serve's own RequestIdMiddleware (always the innermost proxy middleware) puts the client's id, or one it
    generates, on the request, and appends it to the response as well; the replica's ember app already
    answers with that same id (it reads the header the proxy set), so the response would carry it twice.
    Keep the first one: the replica's when it answered, Serve's when Serve answered alone (its own 503s)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def once(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = dedupe(message.get("headers", []), REQUEST_ID)
            await send(message)

        await self.app(scope, receive, once)


REQUEST_ID = b"x-request-id"


def dedupe(headers: list[tuple[bytes, bytes]], name: bytes) -> list[tuple[bytes, bytes]]:
    """`headers` with only the first header called `name` (case-insensitive) kept."""
    out, seen = [], False
    for k, v in headers:
        if k.lower() == name:
            if seen:
                continue
            seen = True
        out.append((k, v))
    return out


def middlewares() -> list[Middleware]:
    # Serve wraps these in list order around its RequestIdMiddleware: the last is the outermost, so
    # SingleRequestId sees the response after Serve has added its header.
    return [Middleware(AffinityKeyMiddleware), Middleware(SingleRequestId)]
