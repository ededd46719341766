"""Headers a route decides before its response exists (rate limits), added to JSON and SSE alike.

A route puts them in `request.state.response_headers`; this middleware adds them to the response's
start message, whichever path made it: the route's JSON, a stream, or an error handler's 429.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class StateHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = getattr(scope.get("state", {}), "get", lambda _k: None)("response_headers")
                if extra:
                    have = {k.lower() for k, _ in message.get("headers", [])}
                    message["headers"] = list(message.get("headers", [])) + [
                        (k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()
                        if k.encode("latin-1") not in have]
            await send(message)

        await self.app(scope, receive, with_headers)
