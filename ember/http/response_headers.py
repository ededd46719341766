"""Headers added to every response's start message, whichever path made it (a route's JSON, a stream, an
error handler, a refusal before any route ran), in one pass over the response:

- what a route decided before its response existed (rate limits): it puts them in
  `request.state.response_headers`;
- browser hardening: `nosniff` on everything; the pages (the playground, /docs) also a
  Content-Security-Policy that lets them load only this server's own files and talk only to it, and may
  not be framed (clickjacking), in both the CSP and the older X-Frame-Options form.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_PATHS = ("/", "/docs")
PAGE_PREFIXES = ("/playground/", "/docs/")
_ALWAYS = {"x-content-type-options": "nosniff"}
_PAGE = _ALWAYS | {"content-security-policy": PAGE_CSP, "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


def is_page(path: str) -> bool:
    return path in PAGE_PATHS or path.startswith(PAGE_PREFIXES)


class ResponseHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fixed = _PAGE if is_page(scope["path"]) else _ALWAYS

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                decided = getattr(scope.get("state", {}), "get", lambda _k: None)("response_headers") or {}
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (decided | fixed).items()
                            if k.encode("latin-1") not in have]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)
