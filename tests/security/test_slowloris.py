"""Slow clients (finding 18), against ``tunegate serve`` itself: idle sockets that send a header byte
every so often are answered 408 and closed once their headers are overdue, endless headers are a 431,
and ``/healthz`` keeps answering meanwhile."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.process import ServeProcess

IDLE = 60
TIMEOUT_S = 2  # the header timeout the gateway runs with here
ENV = {"TUNEGATE_HEADER_TIMEOUT": str(TIMEOUT_S), "TUNEGATE_MAX_CONNECTIONS": "200"}


@pytest.fixture
def serve(tmp_path: Path) -> ServeProcess:
    with ServeProcess(tmp_path / "d", env=ENV) as gw:
        yield gw  # type: ignore[misc]


class Dripper:
    """``n`` sockets, each sending one more byte of a never-ending request every ``every`` seconds."""

    def __init__(self, port: int, n: int, every: float = 0.7) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
        self.closed: dict[int, bytes] = {}  # index -> what the gateway said before closing
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        line = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        i = 0
        while not self._stop.is_set() and len(self.closed) < len(self.socks):
            for n, sock in enumerate(self.socks):
                if n in self.closed:
                    continue
                try:
                    sock.sendall(line[i % len(line):i % len(line) + 1])
                    sock.setblocking(False)
                    try:
                        answer = sock.recv(4096)
                    except BlockingIOError:
                        continue
                    finally:
                        sock.setblocking(True)
                    self.closed[n] = answer  # an answer, or b"" for a close
                except OSError:
                    self.closed[n] = b""
            i += 1
            self._stop.wait(self.every)

    def __enter__(self) -> Dripper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.socks:
            sock.close()


def _wait(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_dripping_sockets_are_closed_and_healthz_keeps_answering(serve: ServeProcess) -> None:
    started = time.monotonic()
    with Dripper(serve.port, IDLE) as drip:
        for _ in range(5):  # while they all hold a connection open
            assert requests.get(serve.url + "/healthz", timeout=10).status_code == 200
        # Closed once overdue; the bound here is far above the 2 s timeout so a busy machine cannot flake it.
        assert _wait(lambda: len(drip.closed) == IDLE, 60), f"{IDLE - len(drip.closed)} idle sockets still open"
        print(f"{IDLE} dripping sockets all closed {time.monotonic() - started:.1f} s after opening")
        assert all(answer.startswith(b"HTTP/1.1 408") or answer == b"" for answer in drip.closed.values())
        assert sum(answer.startswith(b"HTTP/1.1 408") for answer in drip.closed.values()) > IDLE // 2
    assert requests.get(serve.url + "/healthz", timeout=10).status_code == 200


def test_a_connection_that_sends_nothing_is_closed(serve: ServeProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", serve.port), timeout=60)
    try:
        assert sock.recv(4096).startswith(b"HTTP/1.1 408")
    finally:
        sock.close()


def test_endless_headers_are_a_431_while_they_arrive(serve: ServeProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", serve.port), timeout=30)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        answer = b""
        try:
            for _ in range(64):  # 4 MiB at most, far past the limit, well within the header timeout
                sock.sendall(b"a" * 65536)
        except OSError:
            pass  # closed on us
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    finally:
        sock.close()


def test_kept_alive_connections_still_serve_several_requests(serve: ServeProcess) -> None:
    with requests.Session() as s:
        for _ in range(3):
            assert s.get(serve.url + "/healthz", timeout=10).status_code == 200
            time.sleep(0.5)
