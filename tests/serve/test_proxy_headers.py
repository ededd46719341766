"""The proxy's middlewares composed as Serve composes them (its RequestIdMiddleware innermost): one
`x-request-id` per response, the client's own when it sent one."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from ember.cluster.proxy import dedupe, middlewares


async def replica(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers as ember's app does behind the proxy: it echoes the request's x-request-id."""
    rid = dict(scope["headers"]).get(b"x-request-id", b"")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"x-request-id", rid)]})
    await send({"type": "http.response.body", "body": b"ok"})


def proxied_app():  # noqa: ANN201 - an ASGI app
    from ray.serve._private.http_util import _apply_middlewares

    return _apply_middlewares(replica, middlewares())


@pytest.mark.parametrize("sent", ["client-id-1", None])
def test_one_request_id_comes_back(sent: str | None) -> None:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=proxied_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as c:
            return await c.get("/health", headers={"x-request-id": sent} if sent else {})

    r = asyncio.run(get())
    ids = r.headers.get_list("x-request-id")
    assert len(ids) == 1, r.headers
    assert ids[0] == sent if sent else len(ids[0]) >= 16  # Serve generated one (a UUID)


def test_dedupe_keeps_the_first_and_everything_else() -> None:
    h = [(b"a", b"1"), (b"X-Request-ID", b"first"), (b"b", b"2"), (b"x-request-id", b"second")]
    assert dedupe(h, b"x-request-id") == [(b"a", b"1"), (b"X-Request-ID", b"first"), (b"b", b"2")]
