"""Reading an upload: the multipart body streamed straight from the connection into memory, with a byte cap that
holds whatever the framing (Content-Length or chunked), a limit on silence and on the whole upload, and nothing
spooled to disk. Only the `file` field is kept; the cap applies to the whole body and to the file alike.

Starlette's form parsing would spool the file to a temporary file and only then let the gateway look at its
size; a chunked upload of any length would be written out before a 413.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.errors import ApiError

FIELD = "file"
FRAMING_ALLOWANCE = 64 * 1024  # multipart boundaries and part headers around the file itself
CLOSE = {"Connection": "close"}  # the rest of an unread body is not worth reading: drop the connection


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    idle_timeout_s: float
    total_timeout_s: float


class _FilePart:
    """Collects the bytes of the first part named `file`, through python-multipart's streaming callbacks."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.data = bytearray()
        self.found = False
        self.complete = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._collecting = False

    def callbacks(self) -> Any:  # python-multipart's MultipartCallbacks (a TypedDict in recent versions only)
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._header_name.clear()
        self._header_value.clear()

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._collecting = not self.found and options.get(b"name") == FIELD.encode()
        self.found = self.found or self._collecting

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._collecting:
            self.data.extend(data[start:end])
            if len(self.data) > self.max_bytes:
                raise ApiError(413, "file_too_large", f"the file is over the limit of {self.max_bytes} bytes", CLOSE)

    def _part_end(self) -> None:
        if self._collecting:
            self.complete = True
        self._collecting = False


async def read_upload(request: Request, limits: UploadLimits) -> bytes:
    """The bytes of the multipart field `file`; 400 when there is none, 413 past the cap (the rest is never
    read), 408 after `idle_timeout_s` of silence or `total_timeout_s` in all."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ApiError(400, "invalid_parameter", f"{FIELD}: send the media as multipart/form-data in a field '{FIELD}'")
    part = _FilePart(limits.max_bytes)
    parser = MultipartParser(boundary, part.callbacks())
    max_body = limits.max_bytes + FRAMING_ALLOWANCE
    deadline = time.monotonic() + limits.total_timeout_s
    received = 0
    more = True
    try:
        while more:
            wait = min(limits.idle_timeout_s, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(request.receive(), timeout=max(wait, 0.0))
            except asyncio.TimeoutError:
                silent = wait >= limits.idle_timeout_s
                raise ApiError(
                    408,
                    "request_timeout",
                    f"no data for {limits.idle_timeout_s:g} s while receiving the upload"
                    if silent
                    else f"the upload took longer than {limits.total_timeout_s:g} s",
                    CLOSE,
                ) from None
            if message["type"] == "http.disconnect":
                raise ApiError(400, "incomplete_upload", "the client closed the connection during the upload", CLOSE)
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            received += len(chunk)
            if received > max_body:
                raise ApiError(
                    413, "file_too_large", f"the request is over the limit of {limits.max_bytes} bytes", CLOSE
                )
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError:
        raise ApiError(400, "invalid_parameter", "the multipart/form-data body is malformed") from None
    if not part.found:
        raise ApiError(400, "invalid_parameter", f"{FIELD}: field required (multipart/form-data)")
    if not part.complete:
        raise ApiError(400, "invalid_parameter", f"{FIELD}: the multipart/form-data body ends inside the file")
    return bytes(part.data)
