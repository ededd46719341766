"""New requests during a graceful drain: 503 `overloaded` with retry-after, and the connection closed.

While ember drains for shutdown it keeps its listener open (see ember.http.uvicorn_server) so that a load balancer's
health probe reads `/health` 503 {"status": "draining"} instead of a refused connection, and stops
sending. Whatever else arrives meanwhile is answered at once with a retryable 503 carrying
`connection: close`, so the client retries elsewhere instead of reusing this connection. `/health` and
`/metrics` still answer: they are how the drain is watched.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ember.errors import Overloaded
from ember.http.errors import ember_error_response

OBSERVABLE = ("/health", "/metrics")
RETRY_AFTER_S = 1.0


class RefuseWhileDraining:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OBSERVABLE and draining(scope):
            response = ember_error_response(Request(scope), Overloaded("the server is shutting down",
                                                                       retry_after=RETRY_AFTER_S))
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def draining(scope: Scope) -> bool:
    # Starlette puts the application in the scope before its middleware runs; `ember` exists once the
    # lifespan has started the engine.
    state = getattr(scope["app"].state, "ember", None)
    return state is not None and state.draining
