"""A multipart/form-data upload streamed straight into a file, with a size limit checked as bytes arrive.

Starlette's form parsing would spool the whole body before the route runs; here the `file` part goes
chunk by chunk into the caller's open file and the upload is refused (413) the moment it passes the limit,
so a 150 MB dataset never sits in memory and a 10 GB one never fills the disk.
"""

from __future__ import annotations

from typing import BinaryIO

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException

from ember.errors import InvalidRequest

_SLACK = 64 * 1024
"""Room for multipart framing and small extra parts beyond the file itself."""


def too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the file is larger than this server's upload limit of {limit // (1024 * 1024)} MB")


class _FilePart:
    """Callbacks for python-multipart: remembers the current part's headers, writes the `file` part."""

    def __init__(self, out: BinaryIO, limit: int) -> None:
        self.out = out
        self.limit = limit
        self.size = 0
        self.filename: str | None = None
        self.found = False
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._is_file = False
        self.fields: dict[str, str] = {}
        """Small non-file parts (OpenAI's `purpose`), decoded; longer ones are cut at 1 KB."""
        self._field_name: str | None = None

    def on_part_begin(self) -> None:
        self._headers, self._is_file, self._field_name = {}, False, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name")
        if name == b"file":
            if self.found:
                raise InvalidRequest("send one `file` part", param="file")
            self.found = self._is_file = True
            raw = params.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw else None
        elif name and len(self.fields) < 16:
            self._field_name = name.decode("utf-8", "replace")[:64]
            self.fields.setdefault(self._field_name, "")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._is_file:
            if self._field_name is not None and len(self.fields[self._field_name]) < 1024:
                self.fields[self._field_name] += data[start:end].decode("utf-8", "replace")[:1024]
            return
        self.size += end - start
        if self.size > self.limit:
            raise too_large(self.limit)
        self.out.write(data[start:end])


async def stream_file_part(request: Request, out: BinaryIO, limit: int,
                           fields: dict[str, str] | None = None) -> tuple[int, str | None]:
    """Write the request's multipart `file` part into `out`; (bytes written, the client's file name).
    Other small parts land in `fields` when it is given."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise InvalidRequest("send the file as multipart/form-data with a part named `file`", param="file")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + _SLACK:
        raise too_large(limit)
    part = _FilePart(out, limit)
    cb = {name: getattr(part, name) for name in ("on_part_begin", "on_header_field", "on_header_value",
                                                  "on_header_end", "on_headers_finished", "on_part_data")}
    parser = MultipartParser(boundary, cb)  # type: ignore[arg-type]
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit + _SLACK:
                raise too_large(limit)
            parser.write(chunk)
        parser.finalize()
    except (HTTPException, InvalidRequest):
        raise
    except Exception as e:  # noqa: BLE001 - python-multipart's own errors: a malformed body
        raise InvalidRequest(f"malformed multipart body: {str(e)[:200]}", param="file") from None
    if not part.found:
        raise InvalidRequest("the upload has no part named `file`", param="file")
    if fields is not None:
        fields.update(part.fields)
    return part.size, part.filename
