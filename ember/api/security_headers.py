"""Browser-facing hardening: every response says `nosniff`; the pages (the playground, /docs) also carry a
Content-Security-Policy that lets them load only this server's own files and talk only to it, and may
not be framed (clickjacking), in both the CSP and the older X-Frame-Options form."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_PATHS = ("/", "/docs")
PAGE_PREFIXES = ("/playground/", "/docs/")


def is_page(path: str) -> bool:
    return path in PAGE_PATHS or path.startswith(PAGE_PREFIXES)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        page = is_page(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                h = MutableHeaders(scope=message)
                h["x-content-type-options"] = "nosniff"
                if page:
                    h["content-security-policy"] = PAGE_CSP
                    h["x-frame-options"] = "DENY"
                    h["referrer-policy"] = "no-referrer"
            await send(message)

        await self.app(scope, receive, send_with_headers)
