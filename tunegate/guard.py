"""Connection guard for ``tunegate serve``: a deadline for each request's headers, and a cap on their
size while they are still arriving (slowloris).

uvicorn has neither. Its keep-alive timer runs only between requests, after a response, and any byte
received cancels it, so a client that opens a connection and sends a header byte every few seconds
holds it (and a slot of ``limit_concurrency``) for ever; with httptools nothing bounds the headers
either until they are complete. The guard subclasses uvicorn's HTTP protocol (the ASGI app never sees
it): from a connection's first moment, or a kept-alive connection's next byte, the request line and
headers must be complete within ``header_timeout`` seconds, else the client gets a 408 and the
connection is closed; and more than ``max_head_bytes`` of headers still incomplete is a 431.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson


def _refusal(status: int, reason: str, message: str, code: str) -> bytes:
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": code}})
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


TIMED_OUT = _refusal(408, "Request Timeout", "The request headers did not arrive in time.", "header_timeout")
TOO_LARGE = _refusal(431, "Request Header Fields Too Large", "The request headers are too large.",
                     "headers_too_large")


class _Guard:
    """Mixed in before uvicorn's protocol class; ``header_timeout`` and ``max_head_bytes`` are set on the
    class ``guarded_protocol`` makes."""

    header_timeout: float
    max_head_bytes: int
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def _guard_start(self) -> None:
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._refused = False

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # a response is still being sent on this connection: judge the next request later
            return
        self._refuse(TIMED_OUT)

    def _refuse(self, answer: bytes) -> None:
        self._refused = True
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()


def _httptools(base: type[Any]) -> type[Any]:
    class Guarded(_Guard, base):  # type: ignore[misc, valid-type]
        """httptools: the parser's callbacks say when a request's headers begin and end."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._guard_start()
            self._in_head = True
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_head:
                self._head_bytes += len(data)
                self._arm()
            super().data_received(data)
            # httptools keeps an unfinished header value to itself: count the bytes that went in instead.
            if self._in_head and self._head_bytes > self.max_head_bytes:
                self._refuse(TOO_LARGE)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            self._disarm()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True  # the next request's clock starts with its first byte

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Guarded


def _h11(base: type[Any]) -> type[Any]:
    import h11

    class Guarded(_Guard, base):  # type: ignore[misc, valid-type]
        """h11: waiting for headers is its IDLE state; h11 bounds their size itself
        (``h11_max_incomplete_event_size``)."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._guard_start()
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self.conn.their_state is h11.IDLE:
                self._arm()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Guarded


def guarded_protocol(header_timeout: float, max_head_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, as uvicorn's "auto" picks) with the guard."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        cls = _h11(H11Protocol)
    else:
        cls = _httptools(HttpToolsProtocol)
    cls.header_timeout = header_timeout
    cls.max_head_bytes = max_head_bytes
    return cls  # type: ignore[no-any-return]


def __getattr__(name: str) -> Any:
    """``GuardedProtocol``: the guarded protocol built from this process's settings (environment and
    TUNEGATE_CONFIG), so that a worker process started by uvicorn gets the same limits as the parent."""
    if name != "GuardedProtocol":
        raise AttributeError(name)
    import os

    from tunegate.config import Settings

    settings = Settings.load(os.environ.get("TUNEGATE_CONFIG") or None)
    protocol = guarded_protocol(settings.header_timeout, settings.max_header_bytes + 8 * 1024)
    globals()["GuardedProtocol"] = protocol
    return protocol
