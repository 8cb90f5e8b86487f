"""Streaming multipart/form-data: read parts from the client as they arrive, and write a multipart
body to a provider from a stream — without ever holding a whole file.

Reading uses python-multipart's push parser (the same one Starlette uses), fed chunk by chunk from
the ASGI receive channel.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from tunegate.errors import APIError, InvalidRequest, PayloadTooLarge

# Per part (a browser or SDK sends two or three headers). python-multipart 0.0.19+ has tighter caps of
# its own (8 headers of 4 KiB); these hold with the older versions pyproject.toml allows.
MAX_PART_HEADERS = 16
MAX_PART_HEADER_BYTES = 16 * 1024  # all of a part's header lines together
# RFC 2046 §5.1.1: 1 to 70 characters. python-multipart refuses more than 256 itself, but in its
# constructor, outside the parse's error handling: a longer one would be a 500.
MAX_BOUNDARY_BYTES = 70


@dataclass
class PartInfo:
    name: str
    filename: str | None
    content_type: str


def boundary_of(content_type: str) -> bytes:
    media, params = parse_options_header(content_type)
    if media != b"multipart/form-data" or b"boundary" not in params:
        raise InvalidRequest("Expected a multipart/form-data body with a boundary.", code="invalid_content_type")
    boundary = params[b"boundary"]
    if not 1 <= len(boundary) <= MAX_BOUNDARY_BYTES:
        raise InvalidRequest(f"The multipart boundary must be 1 to {MAX_BOUNDARY_BYTES} characters long.",
                             code="invalid_content_type")
    return boundary


class MultipartReader:
    """Pull-style reader over a push parser: ``next_part()`` then ``chunks()`` or ``text()``."""

    def __init__(self, body: AsyncIterator[bytes], content_type: str, max_part_bytes: int) -> None:
        self._body = body
        self._events: deque[tuple[str, Any]] = deque()
        self._max_part_bytes = max_part_bytes
        self._ended = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0  # all of the current part's header lines together
        self._in_part = False
        self._parser = MultipartParser(boundary_of(content_type), callbacks={
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda d, s, e: self._append_header("field", d[s:e]),
            "on_header_value": lambda d, s, e: self._append_header("value", d[s:e]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": lambda d, s, e: self._events.append(("data", bytes(d[s:e]))),
            "on_part_end": lambda: self._events.append(("end", None)),
            "on_end": lambda: self._events.append(("eof", None)),
        })

    # -- parser callbacks --
    def _on_part_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0

    def _append_header(self, which: str, data: bytes) -> None:
        if which == "field":
            self._header_field += data
        else:
            self._header_value += data
        self._header_bytes += len(data)
        # Per part, not per header: many small headers would otherwise pile up in the dict.
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise PayloadTooLarge("A multipart part's headers are too large.", code="invalid_multipart")

    def _on_header_end(self) -> None:
        if len(self._headers) >= MAX_PART_HEADERS:
            raise PayloadTooLarge("A multipart part has too many headers.", code="invalid_multipart")
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if _has_control(params.get(b"name", b"") + (filename or b"")):
            # They would end up verbatim in the header of the part sent upstream.
            raise InvalidRequest("Form field names and filenames must not contain control characters.",
                                 code="invalid_multipart")
        raw_type = self._headers.get(b"content-type", b"application/octet-stream")
        if _has_control(raw_type):
            # python-multipart ends a header line at a bare LF or CR too, but keeps one inside a value:
            # copied into the upstream part's header, it would start a header line of the client's.
            raise InvalidRequest("A part's Content-Type must not contain control characters.",
                                 code="invalid_multipart")
        content_type = raw_type.decode("latin-1")
        self._events.append(("part", PartInfo(name, filename.decode("utf-8", "replace") if filename is not None
                                             else None, content_type)))

    # -- pulling --
    async def _next_event(self) -> tuple[str, Any]:
        while not self._events:
            if self._ended:
                raise InvalidRequest("The multipart body ended before its closing boundary.",
                                     code="invalid_multipart")
            try:
                chunk = await anext(self._body)
            except StopAsyncIteration:
                self._ended = True
                self._parser.finalize()
                continue
            if self._plain_part_data(chunk):
                self._events.append(("data", chunk))
                continue
            try:
                self._parser.write(chunk)
            except APIError:  # ours, from a callback: 400 or 413 as raised
                raise
            except Exception as exc:  # python-multipart raises its own error types
                raise InvalidRequest("The multipart body is malformed.", code="invalid_multipart") from exc
        return self._events.popleft()

    def _plain_part_data(self, chunk: bytes) -> bool:
        """Whether ``chunk`` is all part data, so the parser may be skipped: inside a part's data, with no
        partial boundary carried over from the last chunk, a chunk without a CR holds no boundary (each
        starts with CRLF). The parser would hand out the whole chunk and end in the same state; skipping
        it saves its boundary search (``bytes.find`` of a 40-odd-byte needle, ~1.6 GB/s here, against
        memchr's ~10 GB/s for the CR): a third of the CPU of an unvalidated upload."""
        parser = self._parser
        return (parser.state == MultipartState.PART_DATA and parser.index == 0
                and parser.marks.get("part_data") == 0 and b"\r" not in chunk and len(chunk) > 0)

    async def next_part(self) -> PartInfo | None:
        """The next part's headers; skips whatever of the current part was not read."""
        while True:
            kind, value = await self._next_event()
            if kind == "part":
                self._in_part = True
                return value  # type: ignore[no-any-return]
            if kind == "eof":
                return None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The current part's bytes, as they arrive; 413 past the size limit."""
        total = 0
        while True:
            kind, value = await self._next_event()
            if kind == "data":
                total += len(value)
                if total > self._max_part_bytes:
                    raise PayloadTooLarge(f"The file is larger than this gateway's limit of "
                                          f"{self._max_part_bytes} bytes.", param="file")
                yield value
            elif kind == "end":
                self._in_part = False
                return

    async def text(self, limit: int = 65536, param: str | None = None) -> str:
        parts = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"A form field is larger than {limit} bytes.", param=param,
                                      code="invalid_multipart")
            parts.append(chunk)
        return b"".join(parts).decode("utf-8", "replace")


def _has_control(value: bytes) -> bool:
    return any(c < 0x20 or c == 0x7F for c in value)


def _printable(value: str) -> str:
    # Control characters cannot appear in a header; the reader refuses them, this is the backstop.
    return "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in value)


def _quote(value: str) -> str:
    return _printable(value).replace("\\", "\\\\").replace('"', '\\"')


class MultipartWriter:
    """Builds an outgoing multipart body whose file part is streamed."""

    def __init__(self) -> None:
        self.boundary = "tunegate-" + secrets.token_hex(16)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    async def body(self, fields: list[tuple[str, str]], file_field: str, filename: str,
                   file_type: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        head = []
        for name, value in fields:
            head.append(f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
                        f"{value}\r\n")
        head.append(f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(file_field)}"; '
                    f'filename="{_quote(filename)}"\r\nContent-Type: {_printable(file_type)}\r\n\r\n')
        yield "".join(head).encode()
        async for chunk in chunks:
            yield chunk
        yield f"\r\n--{self.boundary}--\r\n".encode()
