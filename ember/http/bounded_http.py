"""uvicorn's httptools protocol with a bound on a request's head (request line + headers): 431 past it.

httptools (llhttp) has no limit of its own: it gathers a header of any size, and gathering one arriving
in many reads takes time that grows faster than its size, on the event loop every client shares. h11
does bound it, but answers 400 and parses every request in Python. Here the bytes of a head still
unfinished are counted as they arrive; past the bound the client gets 431 and the connection is closed,
so at most one read (asyncio reads up to 256 KiB at a time) beyond the bound is ever parsed.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _response_431(limit: int) -> bytes:
    body = json.dumps({"error": {"message": f"the request's headers are larger than this server's limit of "
                                            f"{limit // 1024} KiB", "type": "invalid_request_error",
                                 "param": None, "code": "headers_too_large"}}).encode()
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


class BoundedHeadProtocol(HttpToolsProtocol):
    max_head_bytes = 64 * 1024
    """Set on the subclass `bounded_http_protocol` makes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._in_head and self._head_bytes + len(data) > self.max_head_bytes:
            # Parsed up to the bound only: a head that ends within it is served, one that does not is refused.
            room = max(0, self.max_head_bytes - self._head_bytes)
            self._head_bytes = self.max_head_bytes
            super().data_received(data[:room])
            if self.transport.is_closing():
                return
            if self._in_head:
                self.transport.write(_response_431(self.max_head_bytes))
                self.transport.close()
                return
            super().data_received(data[room:])
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)


def bounded_http_protocol(max_head_bytes: int) -> type[BoundedHeadProtocol]:
    return type("BoundedHeadProtocol", (BoundedHeadProtocol,), {"max_head_bytes": max_head_bytes})
