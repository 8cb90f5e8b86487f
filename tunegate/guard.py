"""Connection guard for ``tunegate serve``: a deadline for each request's headers, a cap on their size
while they are still arriving (slowloris), an idle bound on a request body that stops arriving, and JSON
answers to what uvicorn refuses as malformed.

uvicorn has none of these bounds. Its keep-alive timer runs only between requests, after a response, and any
byte received cancels it, so a client that opens a connection and sends a header byte every few seconds
holds it (and a slot of ``limit_concurrency``) for ever; with httptools nothing bounds the headers
either until they are complete. The guard subclasses uvicorn's HTTP protocol (the ASGI app never sees
it): from a connection's first moment, or a kept-alive connection's next byte, the request line and
headers must be complete within ``header_timeout`` seconds, else the client gets a 408 and the
connection is closed; and more than ``max_head_bytes`` of headers still incomplete is a 431 (a request
target over ``max_target_bytes`` a 414).

Once the headers are in, a body still incomplete (Content-Length not yet received, chunked body not
finished) with no byte of it for ``body_idle_timeout`` seconds is a 408 (a bare close once a response
has started) and the connection closes. The clock restarts with every byte received and whenever the app
asks for more body; it does not run against the client while uvicorn has paused reading (the app is not
consuming), while the client waits for its ``100 Continue`` or while a response is being sent. A body
fully received is never timed, however long the app then takes.

Requests the parser rejects (an unknown method, a byte not allowed in the target or a header, a bad
Content-Length or chunk framing, ...) get the API's JSON error shape, status 400 with code
``invalid_http``, in place of uvicorn's plain-text 400; the connection is closed either way. On the h11
fallback the guard refuses, the same way, what llhttp (httptools) refuses and h11 would pass on to the app:
a method llhttp does not know (h11 takes any token), a control character other than HTAB in a header
value (h11 refuses only NUL, CR, LF, VT and FF), Content-Length beside Transfer-Encoding.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from typing import Any, Literal

import orjson
from uvicorn.protocols.http.flow_control import FlowControl


def _refusal(status: int, reason: str, message: str, code: str) -> bytes:
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": code}})
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


TIMED_OUT = _refusal(408, "Request Timeout", "The request headers did not arrive in time.", "header_timeout")
TOO_LARGE = _refusal(431, "Request Header Fields Too Large", "The request headers are too large.",
                     "headers_too_large")
BODY_TIMED_OUT = _refusal(408, "Request Timeout", "The request body stopped arriving before it was complete.",
                          "body_timeout")
HEAD_TOO_LARGE = _refusal(431, "Request Header Fields Too Large",
                          "The request line and headers are too large.", "headers_too_large")


def _invalid(detail: str | None) -> bytes:
    message = "The request is not valid HTTP/1.1"
    if detail:
        message += f" ({detail[:200]})"
    return _refusal(400, "Bad Request", message + ".", "invalid_http")


def _target_too_long(limit: int) -> bytes:
    return _refusal(414, "URI Too Long", f"The request target is too long (more than {limit} bytes).", "uri_too_long")


# What llhttp takes as an HTTP/1.x request's method, upper case only (RFC 9110's, WebDAV's, CalDAV's, ...);
# any other token ("FOO", "get", RTSP's DESCRIBE) it refuses, and PRI is HTTP/2's preface. h11 takes any token.
LLHTTP_METHODS = frozenset(
    "DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK BIND "
    "REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH PURGE "
    "MKCALENDAR LINK UNLINK SOURCE QUERY".split())
# A control character (RFC 5234's CTL) other than HTAB: llhttp refuses each in a header value, h11 passes on
# 0x01-0x08, 0x0E-0x1F and 0x7F (obs-text, 0x80-0xFF, both allow).
_VALUE_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _h11_header_refusal(headers: list[tuple[bytes, bytes]]) -> str | None:
    """What llhttp would have refused in the headers h11 parsed (names in lower case), in llhttp's words
    (as the httptools path words it); ``None`` if nothing."""
    names: set[bytes] = set()
    for name, value in headers:
        if _VALUE_CTL.search(value):
            return "Invalid header value char"
        names.add(name)
    if b"content-length" in names and b"transfer-encoding" in names:
        return "Transfer-Encoding can't be present with Content-Length"
    return None


class _Refused(Exception):
    """Raised in a parser callback once the guard has answered, to stop the parser there."""


class _Flow(FlowControl):
    """uvicorn's flow control, telling the guard whenever reading is resumed: uvicorn calls it when the app
    asks for more body (after a ``100 Continue`` too) and when it unpauses a connection."""

    def __init__(self, transport: asyncio.Transport, on_resume: Callable[[], None]) -> None:
        super().__init__(transport)
        self._on_resume = on_resume

    def resume_reading(self) -> None:
        super().resume_reading()
        self._on_resume()


class _Guard:
    """Mixed in before uvicorn's protocol class; ``header_timeout``, ``max_head_bytes``,
    ``max_target_bytes`` and ``body_idle_timeout`` are set on the class ``guarded_protocol`` makes."""

    header_timeout: float
    max_head_bytes: int
    max_target_bytes: int
    body_idle_timeout: float
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    flow: FlowControl
    cycle: Any

    def _guard_start(self) -> None:
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._refused = False
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_last = 0.0  # loop time of the last byte received (or of the app last asking for body)

    def _guard_flow(self) -> None:
        """After uvicorn's ``connection_made``: its flow control, reporting resumes to the body clock."""
        self.flow = _Flow(self.transport, self._body_touch)

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

    # The body clock. One timer at most per connection, re-armed for what is left when it fires early,
    # so that a body arriving in many pieces costs no timer operation per piece.

    def _body_incomplete(self) -> bool:
        raise NotImplementedError

    def _queued(self) -> bool:
        """Whether this request waits behind a pipelined one still being answered."""
        return False

    def _body_touch(self) -> None:
        self._body_last = self.loop.time()

    def _body_arm(self) -> None:
        if self._body_timer is None:
            self._body_timer = self.loop.call_at(self._body_last + self.body_idle_timeout, self._body_expired)

    def _body_disarm(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_expired(self) -> None:
        self._body_timer = None
        if self._refused or self.transport.is_closing() or not self._body_incomplete():
            return
        now = self.loop.time()
        cycle = self.cycle
        if now < self._body_last + self.body_idle_timeout:
            pass  # bytes came since the timer was set: wait for what is left of the window
        elif self.flow.read_paused or self._queued() or (cycle is not None and (
                cycle.waiting_for_100_continue or (cycle.response_started and not cycle.response_complete))):
            # Not the client's doing: uvicorn stopped reading (the app is not consuming), the request waits
            # behind earlier ones, the client waits for the app to ask for the body, or a response is
            # being sent. Judge again a window later.
            self._body_last = now
        else:
            # Once this request has had (the start of) a response, a 408 after it would be a second one.
            self._refuse(None if cycle is not None and cycle.response_started else BODY_TIMED_OUT)
            return
        self._body_arm()

    def _refuse(self, answer: bytes | None) -> None:
        """Answer (unless ``None``) and close the connection."""
        self._refused = True
        self._disarm()
        self._body_disarm()
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            answer = None  # never in the middle of a response already under way
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() sees a disconnect and its sends write nothing
            cycle.message_event.set()
        if not self.transport.is_closing():
            if answer is not None:
                self.transport.write(answer)
            self.transport.close()

    def _answer_invalid(self, exc: BaseException | None) -> bytes:
        return _invalid(None)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request its parser rejects, called while it handles the parser's error:
        the API's JSON error instead of plain text (nothing more once the guard has answered already)."""
        if self._refused:
            return
        self._refuse(self._answer_invalid(sys.exc_info()[1]))


def _httptools(base: type[Any]) -> type[Any]:
    import httptools

    class Guarded(_Guard, base):  # type: ignore[misc, valid-type]
        """httptools: the parser's callbacks say when a request's headers begin and end, and when its
        body does."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._guard_start()
            self._in_head = True
            self._in_body = False
            super().connection_made(transport)
            self._guard_flow()
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_head:
                self._head_bytes += len(data)
                self._arm()
            self._body_last = self.loop.time()
            super().data_received(data)
            if self._refused:
                return
            # httptools keeps an unfinished header value to itself: count the bytes that went in instead.
            if self._in_head and self._head_bytes > self.max_head_bytes:
                self._refuse(TOO_LARGE)
            elif self._in_body:
                self._body_arm()

        def _body_incomplete(self) -> bool:
            return self._in_body

        def _queued(self) -> bool:
            # httptools parses ahead: the request whose body is arriving may wait behind earlier ones
            # (started when those are answered, in on_response_complete).
            return bool(self.pipeline)

        def _answer_invalid(self, exc: BaseException | None) -> bytes:
            # llhttp's reasons are fixed phrases ("Invalid method encountered"); a callback's error
            # (an unusable target, say) is worded by whatever raised it, so it is not passed on.
            if isinstance(exc, httptools.HttpParserError) and not isinstance(exc, httptools.HttpParserCallbackError):
                return _invalid(str(exc) or None)
            return _invalid(None)

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if len(self.url) > self.max_target_bytes:
                self._refuse(_target_too_long(self.max_target_bytes))
                raise _Refused  # httptools stops, uvicorn's error handler finds the request answered

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            self._disarm()
            super().on_headers_complete()
            self._in_body = True  # until on_message_complete, often in this same data_received

        def on_message_complete(self) -> None:
            self._in_body = False
            self._body_disarm()
            super().on_message_complete()
            self._in_head = True  # the next request's clock starts with its first byte

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._in_body and not self._refused:  # a pipelined request now runs, its body unfinished
                self._body_touch()
                self._body_arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._body_disarm()
            super().connection_lost(exc)

    return Guarded


def _h11(base: type[Any]) -> type[Any]:
    import h11

    class Guarded(_Guard, base):  # type: ignore[misc, valid-type]
        """h11: waiting for headers is its IDLE state, receiving a body SEND_BODY; h11 bounds the head's
        size itself (``h11_max_incomplete_event_size``)."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._guard_start()
            super().connection_made(transport)
            self._guard_flow()
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self.conn.their_state is h11.IDLE:
                self._arm()
            self._body_last = self.loop.time()
            try:
                super().data_received(data)
            except _Refused:
                return
            if self.conn.their_state is not h11.IDLE:
                self._disarm()
            if self._body_incomplete() and not self._refused:
                self._body_arm()

        def _body_incomplete(self) -> bool:
            return self.conn.their_state is h11.SEND_BODY  # type: ignore[no-any-return]

        def _answer_invalid(self, exc: BaseException | None) -> bytes:
            if isinstance(exc, h11.RemoteProtocolError) and exc.error_status_hint == 431:
                return HEAD_TOO_LARGE  # h11's own bound on an incomplete head ("Receive buffer too long")
            # h11's reasons go on to quote the request ("illegal request line: bytearray(b'...')"): not that.
            return _invalid(str(exc).split(":", 1)[0] if isinstance(exc, h11.RemoteProtocolError) else None)

        def _should_upgrade(self) -> bool:
            # uvicorn asks this of each request as soon as it has the scope, before the app starts on it:
            # h11 bounds only an incomplete head, so a long target that came whole is caught here; and
            # what h11 accepts but llhttp refuses, in llhttp's order (method, target, headers).
            if self.scope["method"] not in LLHTTP_METHODS:
                self._refuse(_invalid("Invalid method encountered"))
                raise _Refused
            if len(self.scope["raw_path"]) + len(self.scope["query_string"]) + 1 > self.max_target_bytes:
                self._refuse(_target_too_long(self.max_target_bytes))
                raise _Refused
            problem = _h11_header_refusal(self.scope["headers"])
            if problem is not None:
                self._refuse(_invalid(problem))
                raise _Refused
            return super()._should_upgrade()  # type: ignore[no-any-return]

        def on_response_complete(self) -> None:
            try:
                super().on_response_complete()  # runs the events of a pipelined request, if any
            except _Refused:
                return
            if self._body_incomplete() and not self._refused:  # a pipelined request, its body unfinished
                self._body_touch()
                self._body_arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._body_disarm()
            super().connection_lost(exc)

    return Guarded


def guarded_protocol(header_timeout: float, max_head_bytes: int, body_idle_timeout: float = 30.0,
                     max_target_bytes: int | None = None,
                     impl: Literal["auto", "httptools", "h11"] = "auto") -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (``auto``: httptools when installed, as uvicorn's "auto" picks) with the
    guard. ``max_target_bytes`` (the request target; more is a 414) defaults to ``max_head_bytes``."""
    if impl == "auto":
        try:
            import httptools  # noqa: F401
        except ImportError:
            impl = "h11"
        else:
            impl = "httptools"
    if impl == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        cls = _h11(H11Protocol)
    else:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        cls = _httptools(HttpToolsProtocol)
    cls.header_timeout = header_timeout
    cls.max_head_bytes = max_head_bytes
    cls.max_target_bytes = max_head_bytes if max_target_bytes is None else max_target_bytes
    cls.body_idle_timeout = body_idle_timeout
    return cls  # type: ignore[no-any-return]


def __getattr__(name: str) -> Any:
    """``GuardedProtocol``: the guarded protocol built from this process's settings (environment and
    TUNEGATE_CONFIG), so that a worker process started by uvicorn gets the same limits as the parent."""
    if name != "GuardedProtocol":
        raise AttributeError(name)
    import os

    from tunegate.config import Settings

    settings = Settings.load(os.environ.get("TUNEGATE_CONFIG") or None)
    # The target alone within max_header_bytes: over it is a 414 before the head's 431 (8 KiB more).
    protocol = guarded_protocol(settings.header_timeout, settings.max_header_bytes + 8 * 1024,
                                settings.body_idle_timeout, settings.max_header_bytes)
    globals()["GuardedProtocol"] = protocol
    return protocol
