"""DNS-rebinding defence for a server that serves open (no key needed): requests naming a foreign Host get 421.

A web page the local user opens can make its own domain resolve to 127.0.0.1 and then call this server
from the browser as "same origin"; the browser still sends the page's domain as `Host`. So while the
server serves open, a request is served only when its Host is a name that cannot be the attacker's:
`localhost`, an IP address literal (rebinding needs a DNS name the attacker controls; a literal is
always what the user typed), the bind host, or the host of `--public-url`. Once keys are required the
check is off: a rebinding page holds no key, and a server bound to 0.0.0.0 for other machines must
answer whatever name they use. A request without a Host header (HTTP/1.0) comes from no browser.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ember.http.errors import error_body

LOOPBACK_NAMES = ("localhost",)


def host_name(host_header: str) -> str:
    """`Host` without its port and brackets, lower case, no trailing dot: "[::1]:8000" -> "::1"."""
    h = host_header.strip().lower()
    if h.startswith("["):
        h = h[1:].split("]", 1)[0]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(host_name(h) for h in (*LOOPBACK_NAMES, *allowed_hosts) if h)

    def allows(self, host_header: str) -> bool:
        name = host_name(host_header)
        return name in self.allowed or is_ip_literal(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and serves_open(scope):
            host = next((v for k, v in scope["headers"] if k == b"host"), None)
            if host is not None and not self.allows(host.decode("latin-1")):
                body = error_body("this server serves without API keys and answers only to localhost, "
                                  "its IP addresses and its --public-url host; the Host header named "
                                  "another name", "invalid_request_error", None, "misdirected_request")
                await JSONResponse(body, status_code=421)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def serves_open(scope: Scope) -> bool:
    # The app is in the scope before its middleware runs; `ember` exists once the lifespan has started.
    state = getattr(scope["app"].state, "ember", None)
    return state is not None and state.platform.auth.serves_open()
