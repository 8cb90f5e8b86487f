"""Malformed HTTP and bodies that stop arriving, at the connection guard (``tunegate/guard.py``).

What uvicorn's parser rejects gets the API's JSON error shape (uvicorn itself answers a plain-text
``400 Invalid HTTP request received.``), and a request body that stops arriving is a JSON 408 once
``body_idle_timeout`` passes without a byte of it, where it used to hold the connection for ever. That
clock must not run against a client the gateway itself is keeping waiting: an app still working on a
body it has, a response being streamed, reading paused because the app is not consuming, a client
waiting for its ``100 Continue``.

Against ``tunegate serve`` (httptools, as deployed) over raw sockets; the protocol-level cases also
against both of uvicorn's protocols (httptools and h11) in process, with a small ASGI app whose
endpoints take their time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import pytest
import uvicorn

from tests.process import ServeProcess
from tests.standins.openai_like import free_port
from tunegate.guard import guarded_protocol

WINDOW = 1.0  # body_idle_timeout here
ENV = {"TUNEGATE_HEADER_TIMEOUT": "5", "TUNEGATE_BODY_IDLE_TIMEOUT": str(WINDOW)}
JOBS = ("POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "x-portkey-provider: openai\r\nAuthorization: Bearer sk-test-000000\r\n")


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with ServeProcess(tmp_path_factory.mktemp("framing") / "d", env=ENV) as gw:
        yield gw


class Answer:
    def __init__(self, raw: bytes, closed: bool | None, seconds: float) -> None:
        self.raw = raw
        self.closed = closed  # the gateway closed the connection after answering (None: not looked at)
        self.seconds = seconds  # from the last byte sent to the answer's end
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1]) if lines[0].startswith("HTTP/1.1 ") else 0
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def json(self) -> Any:
        return json.loads(self.body)


class Reader:
    """Responses off a socket, one at a time (pipelined ones may come in one read)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        got = self.sock.recv(65536)
        self.buf += got
        return bool(got)

    def response(self, wait: float, check_close: bool = True) -> tuple[bytes, bool | None]:
        """One response: its head, then its content-length of body (or its chunks); and whether the peer
        then closed the connection (looked at for up to three windows, if ``check_close``)."""
        self.sock.settimeout(wait)
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                raw, self.buf = self.buf, b""
                return raw, True
        head_end = self.buf.index(b"\r\n\r\n") + 4
        head = self.buf[:head_end].lower()
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.startswith(b"content-length:")), None)
        while True:
            if length is not None and len(self.buf) >= head_end + length:
                end = head_end + length
                break
            if length is None and b"\r\n0\r\n\r\n" in self.buf[head_end - 2:]:  # chunked: to its last chunk
                end = self.buf.index(b"\r\n0\r\n\r\n", head_end - 2) + 7
                break
            if not self._more():
                raw, self.buf = self.buf, b""
                return raw, True
        raw, self.buf = self.buf[:end], self.buf[end:]
        if not check_close:
            return raw, None
        if self.buf:
            return raw, False
        try:
            self.sock.settimeout(WINDOW * 3)
            closed = not self._more()
        except TimeoutError:
            closed = False
        except ConnectionError:
            closed = True  # reset: closed with the rest of what was sent unread
        return raw, closed


def _read(sock: socket.socket, wait: float, check_close: bool = True) -> tuple[bytes, bool | None]:
    return Reader(sock).response(wait, check_close)


def ask(port: int, *pieces: bytes, gap: float = 0.0, wait: float = 10.0, check_close: bool = True) -> Answer:
    """Send ``pieces`` (``gap`` seconds apart) on a fresh connection and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        for n, piece in enumerate(pieces):
            if n and gap:
                time.sleep(gap)
            try:
                sock.sendall(piece)
            except ConnectionError:
                break  # answered and closed before all was sent: read what it said
        sent = time.monotonic()
        raw, closed = _read(sock, wait, check_close)
        return Answer(raw, closed, time.monotonic() - sent)


def assert_json_error(answer: Answer, status: int | tuple[int, ...], code: str | tuple[str, ...]) -> dict[str, Any]:
    statuses = status if isinstance(status, tuple) else (status,)
    codes = code if isinstance(code, tuple) else (code,)
    assert answer.status in statuses, answer.raw[:300]
    assert answer.headers.get("content-type") == "application/json", answer.raw[:300]
    doc = answer.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param", "code"}, doc
    error: dict[str, Any] = doc["error"]
    assert error["type"] == "invalid_request_error" and error["code"] in codes, error
    assert isinstance(error["message"], str) and error["message"], error
    return error


MALFORMED = {
    "unknown_method": b"FOO /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\n\r\n",
    "raw_ff_in_path": b"GET /v1/fine_tuning/\xffjobs HTTP/1.1\r\nHost: x\r\n\r\n",
    "control_char_in_header": b"GET /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nx-portkey-trace-id: \x01\r\n\r\n",
    "content_length_abc": b"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "bad_chunk_size": b"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_http_gets_the_json_error_shape(serve: ServeProcess, request_bytes: bytes) -> None:
    answer = ask(serve.port, request_bytes)
    assert_json_error(answer, 400, "invalid_http")
    assert answer.headers.get("connection") == "close" and answer.closed


def test_a_100k_request_line_gets_a_json_414(serve: ServeProcess) -> None:
    answer = ask(serve.port, b"GET /v1/fine_tuning/jobs?after=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    error = assert_json_error(answer, (414, 431), ("uri_too_long", "headers_too_large"))
    assert "too long" in error["message"] or "too large" in error["message"], error
    assert answer.closed


def test_a_long_request_line_arriving_in_pieces_is_refused_the_same_way(serve: ServeProcess) -> None:
    line = b"GET /v1/fine_tuning/jobs?after=" + b"a" * 100_000
    answer = ask(serve.port, *(line[i:i + 4096] for i in range(0, len(line), 4096)), gap=0.001)
    assert_json_error(answer, 414, "uri_too_long")


def test_well_formed_requests_still_reach_the_app(serve: ServeProcess) -> None:
    answer = ask(serve.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", check_close=False)
    assert answer.status == 200, answer.raw[:300]
    body = b'{"model": 5}'
    answer = ask(serve.port, JOBS.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body, check_close=False)
    assert answer.status == 400 and answer.json()["error"]["param"] == "model", answer.raw[:300]


def test_a_stalled_body_gets_a_json_408_and_the_connection_closes(serve: ServeProcess) -> None:
    answer = ask(serve.port, JOBS.encode() + b'Content-Length: 100\r\n\r\n{"model"')
    assert_json_error(answer, 408, "body_timeout")
    assert answer.closed
    assert WINDOW * 0.8 <= answer.seconds < WINDOW + 4, answer.seconds


def test_a_stalled_chunked_body_gets_a_json_408(serve: ServeProcess) -> None:
    answer = ask(serve.port, JOBS.encode() + b'Transfer-Encoding: chunked\r\n\r\n8\r\n{"model"\r\n')
    assert_json_error(answer, 408, "body_timeout")
    assert answer.closed and answer.seconds < WINDOW + 4, answer.seconds


def test_a_slow_but_steady_body_is_not_cut_off(serve: ServeProcess) -> None:
    body = b'{ "model": 5}'  # a byte every 0.3 s: 3.6 s in all, well past the 1 s window
    started = time.monotonic()
    answer = ask(serve.port, JOBS.encode() + b"Content-Length: %d\r\n\r\n" % len(body), *(bytes([c]) for c in body),
                 gap=0.3, check_close=False)
    assert time.monotonic() - started >= 3
    assert answer.status == 400, answer.raw[:300]  # the app's own answer to the whole body
    assert answer.json()["error"]["param"] == "model", answer.raw[:300]


# The guard on both of uvicorn's protocols, with endpoints that keep the client waiting.


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return

    async def whole_body() -> int:
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return size  # refused by the guard: nothing it sends now is written
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                return size

    async def answer(doc: Any) -> None:
        body = json.dumps(doc).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    path = scope["path"]
    if path == "/slow":  # the whole body, then a long think
        size = await whole_body()
        await asyncio.sleep(WINDOW * 2.5)
        await answer({"bytes": size})
    elif path == "/late":  # a long think (2.5 windows, or ?think=N) before reading the body at all
        think = scope["query_string"].decode().removeprefix("think=")
        await asyncio.sleep(WINDOW * float(think or 2.5))
        await answer({"bytes": await whole_body()})
    elif path == "/stream":  # a long streamed response, the body never read
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for n in range(6):
            await send({"type": "http.response.body", "body": b"part %d\n" % n, "more_body": True})
            await asyncio.sleep(WINDOW / 2)
        await send({"type": "http.response.body", "body": b""})
    else:
        await answer({"bytes": await whole_body()})


class InProcess:
    """uvicorn with the guarded protocol (``impl``) serving ``_app`` in a thread."""

    def __init__(self, impl: Literal["httptools", "h11"]) -> None:
        self.impl = impl
        self.port = free_port()
        head = 40 * 1024
        protocol = guarded_protocol(5.0, head, body_idle_timeout=WINDOW, max_target_bytes=32 * 1024, impl=impl)
        config = uvicorn.Config(_app, host="127.0.0.1", port=self.port, http=protocol, ws="none", lifespan="off",
                                log_level="warning", access_log=False, h11_max_incomplete_event_size=head)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcess:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(15)


@pytest.fixture(scope="module", params=["httptools", "h11"])
def proto(request: pytest.FixtureRequest) -> Iterator[InProcess]:
    with InProcess(request.param) as server:
        yield server


def _post(path: str, length: int, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def test_both_protocols_refuse_malformed_requests_as_json(proto: InProcess) -> None:
    for name, request_bytes in MALFORMED.items():
        answer = ask(proto.port, request_bytes)
        assert_json_error(answer, 400, "invalid_http")
        assert answer.closed, name
    long_line = ask(proto.port, b"GET /?after=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_json_error(long_line, (414, 431), ("uri_too_long", "headers_too_large"))


# What llhttp (httptools) takes as a request method: RFC 9110's, WebDAV's, ... in upper case, and no other
# token ("FOO", "get", RTSP's methods; PRI only as HTTP/2's preface, which is no HTTP/1.1 request).
LLHTTP_METHODS = ("DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH "
                  "UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE "
                  "UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY").split()
CTLS = [c for c in (*range(0x20), 0x7F) if c != 0x09]  # RFC 5234's CTL, HTAB apart
REFUSED_BY_BOTH = {
    **{f"method_{m}": m.encode() + b" / HTTP/1.1\r\nHost: x\r\n\r\n"
       for m in ("FOO", "get", "Get", "G", "GETS", "DESCRIBE", "GET_PARAMETER", "PRI", "G(T", "G/T")},
    # an unknown method and a long target: the method is refused first, as llhttp reads it first
    "method_before_long_target": b"FOO /?a=" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    **{f"ctl_{c:#04x}_{where}": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + value + b"\r\n\r\n"
       for c in CTLS if c not in (0x0A, 0x0D)  # a CR or LF in a value ends the line: see the framing cases
       for where, value in (("inside", b"a%cb" % c), ("first", b"%cb" % c), ("last", b"a%c" % c),
                            ("alone", b"%c" % c))},
    "ctl_in_a_second_header": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\nX-B: \x1b[31m\r\n\r\n",
    "ctl_in_host": b"GET / HTTP/1.1\r\nHost: x\x7f\r\n\r\n",
    "lone_cr_in_value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    "content_length_and_chunked": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
}


@pytest.mark.parametrize("request_bytes", REFUSED_BY_BOTH.values(), ids=REFUSED_BY_BOTH.keys())
def test_both_protocols_refuse_what_httptools_refuses(proto: InProcess, request_bytes: bytes) -> None:
    """The h11 fallback refuses what httptools refuses, where h11 itself would pass it to the app: any
    token as a method, a control character in a header value, Content-Length beside Transfer-Encoding."""
    answer = ask(proto.port, request_bytes)
    error = assert_json_error(answer, 400, "invalid_http")
    assert answer.headers.get("connection") == "close" and answer.closed
    assert b"\x1b" not in answer.raw and b"\x7f" not in answer.raw  # nothing of the request is echoed
    assert error["message"].startswith("The request is not valid HTTP/1.1"), error


def test_both_protocols_let_the_same_methods_and_values_through(proto: InProcess) -> None:
    # (Not CONNECT: h11 takes a 2xx answer to it for a switch to a tunnel; no route of the gateway has it.)
    for method in (m for m in LLHTTP_METHODS if m != "CONNECT"):
        answer = ask(proto.port, method.encode() + b" /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                     check_close=False)
        assert answer.status == 200, (method, answer.raw[:300])
    # HTAB, spaces and obs-text (0x80-0xFF) are allowed in a value; nothing else below 0x20, nor 0x7F.
    for value in (b"a\tb", b"\ta b\t", b"caf\xc3\xa9", bytes(range(0x80, 0x100)), b"", b"!~"):
        answer = ask(proto.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: " + value + b"\r\n\r\n", check_close=False)
        assert answer.status == 200 and answer.json() == {"bytes": 0}, (value, answer.raw[:300])


def test_a_pipelined_request_with_an_unknown_method_is_refused(proto: InProcess) -> None:
    """On h11 the request before it is answered first (h11 reads a request only once the one before is
    answered); httptools parses ahead and refuses at once, the request before it left unanswered."""
    with socket.create_connection(("127.0.0.1", proto.port), timeout=WINDOW * 8) as sock:
        sock.sendall(_post("/echo", 3) + b"abc" + b"FOO /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        answers = []
        while True:
            raw, closed = reader.response(WINDOW * 8, check_close=False)
            if not raw:
                break
            answers.append(Answer(raw, None, 0))
            if closed:
                break
    assert answers and assert_json_error(answers[-1], 400, "invalid_http"), [a.raw[:300] for a in answers]
    assert answers[-1].headers.get("connection") == "close"
    if proto.impl == "h11":
        assert len(answers) == 2 and answers[0].json() == {"bytes": 3}, [a.raw[:300] for a in answers]
    else:
        assert len(answers) == 1, [a.raw[:300] for a in answers]


def test_both_protocols_time_out_a_stalled_body(proto: InProcess) -> None:
    answer = ask(proto.port, _post("/echo", 100) + b'{"model"')
    assert_json_error(answer, 408, "body_timeout")
    assert answer.closed and answer.seconds < WINDOW + 4, answer.seconds


def test_both_protocols_let_a_steady_body_through(proto: InProcess) -> None:
    body = b"x" * 11
    answer = ask(proto.port, _post("/echo", len(body)), *(bytes([c]) for c in body), gap=0.3, check_close=False)
    assert answer.status == 200 and answer.json() == {"bytes": 11}, answer.raw[:300]


def test_an_app_thinking_over_a_whole_body_is_not_timed(proto: InProcess) -> None:
    answer = ask(proto.port, _post("/slow", 5) + b"hello", check_close=False)
    assert answer.status == 200 and answer.json() == {"bytes": 5}, answer.raw[:300]


def test_reading_paused_by_the_app_is_not_the_clients_fault(proto: InProcess) -> None:
    # The app reads nothing for 2.5 windows: uvicorn pauses reading after 64 KiB, the rest waits in the
    # kernel's buffers (or in our sendall) until the app asks for it.
    size = 8 * 2**20
    answer = ask(proto.port, _post("/late", size), *([b"x" * 2**20] * 8), wait=30, check_close=False)
    assert answer.status == 200 and answer.json() == {"bytes": size}, answer.raw[:300]


def test_a_client_waiting_for_100_continue_is_not_timed(proto: InProcess) -> None:
    """Nor is the client timed until it is asked: its window starts with the ``100 Continue``, not
    with the guard's last look while it waited (at 2 windows here, so 1 window before it is asked)."""
    with socket.create_connection(("127.0.0.1", proto.port), timeout=WINDOW * 6) as sock:
        sock.sendall(_post("/late?think=2.9", 5, "Expect: 100-continue\r\n"))
        interim = sock.recv(4096)  # sent when the app first asks for the body, 2.9 windows on
        assert interim.startswith(b"HTTP/1.1 100"), interim
        time.sleep(WINDOW / 2)
        sock.sendall(b"hello")
        raw, _ = _read(sock, WINDOW * 6, check_close=False)
    answer = Answer(raw, False, 0)
    assert answer.status == 200 and answer.json() == {"bytes": 5}, raw[:300]


def test_a_streamed_response_is_not_cut_while_the_body_waits(proto: InProcess) -> None:
    answer = ask(proto.port, _post("/stream", 10) + b"he")
    assert answer.status == 200, answer.raw[:300]
    assert all(b"part %d" % n in answer.body for n in range(6)), answer.raw[:500]
    assert b"body_timeout" not in answer.raw  # the response was the answer: nothing after it, only a close
    assert answer.closed


def test_pipelined_requests_are_answered_before_a_stalled_body_behind_them_is_refused(proto: InProcess) -> None:
    # httptools parses all three at once; the third's body is not late while the first two are answered.
    with socket.create_connection(("127.0.0.1", proto.port), timeout=WINDOW * 8) as sock:
        sock.sendall(_post("/slow", 5) + b"hello" + _post("/echo", 3) + b"abc" + _post("/echo", 10) + b"ab")
        reader = Reader(sock)
        first, _ = reader.response(WINDOW * 8, check_close=False)
        second, _ = reader.response(WINDOW * 8, check_close=False)
        third, closed = reader.response(WINDOW * 8)
    assert Answer(first, None, 0).json() == {"bytes": 5}, first[:300]
    assert Answer(second, None, 0).json() == {"bytes": 3}, second[:300]
    assert_json_error(Answer(third, closed, 0), 408, "body_timeout")
    assert closed
