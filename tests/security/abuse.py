"""Abusive HTTP clients on raw sockets, for the security tests and for measuring the gateway's memory
under them (``python -m tests.security.abuse --help``).

Each client stops sending as soon as the gateway answers, and reports what it got and how much it had
sent by then: a gateway that enforces its bounds answers early; one that does not reads everything.
"""

from __future__ import annotations

import argparse
import select
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BOUNDARY = "tunegate-abuse"
FIELD = 64 * 1024  # the per-field limit: each field is as large as one may be


@dataclass
class Outcome:
    status: int | None  # None: the gateway never answered (or closed without a status line)
    sent: int  # body bytes sent before it answered
    head: bytes = b""  # the status line, headers and body of the answer


def many_fields(total: int, field: int = FIELD) -> Iterator[bytes]:
    """Text fields before any file part, ``field`` bytes each, ``total`` bytes of them in all."""
    value = b"x" * field
    sent = n = 0
    while sent < total:
        yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f{n}\"\r\n\r\n").encode() + value + b"\r\n"
        sent += field
        n += 1
    yield f"--{BOUNDARY}--\r\n".encode()


def one_field(total: int) -> Iterator[bytes]:
    """One text field that never ends within ``total`` bytes."""
    yield f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n".encode()
    block = b"y" * (256 * 1024)
    for _ in range(total // len(block)):
        yield block


def epilogue(total: int) -> Iterator[bytes]:
    """A complete small form, then ``total`` bytes after its closing boundary."""
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
           f"--{BOUNDARY}--\r\n").encode()
    block = b"z" * (256 * 1024)
    for _ in range(total // len(block)):
        yield block


def _answered(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def post_chunked(port: int, path: str, chunks: Iterator[bytes], headers: dict[str, str] | None = None,
                 timeout: float = 120.0) -> Outcome:
    """POST a body with Transfer-Encoding: chunked (no Content-Length), stopping when the gateway answers."""
    head = {"Host": f"127.0.0.1:{port}", "Transfer-Encoding": "chunked",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "x-portkey-provider": "tunegate",
            **(headers or {})}
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sent = 0
    try:
        sock.sendall(f"POST {path} HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in head.items())
                     .encode() + b"\r\n")
        try:
            for chunk in chunks:
                if _answered(sock):
                    break
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
            else:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the gateway closed its side: read what it answered
        return _read_status(sock, sent)
    finally:
        sock.close()


def _read_status(sock: socket.socket, sent: int) -> Outcome:
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            more = sock.recv(65536)
            if not more:
                break
            data += more
    except OSError:
        pass
    line = data.split(b"\r\n", 1)[0].split()
    status = int(line[1]) if len(line) >= 2 and line[1].isdigit() else None
    return Outcome(status, sent, data)


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value.strip())
    return 0


def concurrently(port: int, n: int, make: object, path: str = "/v1/files") -> list[Outcome]:
    results: list[Outcome | None] = [None] * n

    def one(i: int) -> None:
        results[i] = post_chunked(port, path, make())  # type: ignore[operator]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


def measure(per_request_mib: int, clients: int) -> None:
    """Start ``tunegate serve`` (the code on PYTHONPATH), send the abusive forms, print RSS figures."""
    from tests.process import PeakRSS, ServeProcess, rss_kib

    with tempfile.TemporaryDirectory() as tmp, ServeProcess(Path(tmp) / "d") as gw:
        assert gw.proc is not None
        time.sleep(1.0)
        with PeakRSS(gw.proc.pid) as rss:
            started = time.monotonic()
            outcomes = concurrently(gw.port, clients, lambda: many_fields(per_request_mib * 2**20))
            rss.seconds = time.monotonic() - started
        time.sleep(5.0)
        after = rss_kib(gw.proc.pid)
        print(f"{clients} clients x {per_request_mib} MiB of 64 KiB fields (chunked): "
              f"statuses {[o.status for o in outcomes]}, sent {[o.sent // 1024 for o in outcomes]} KiB; "
              f"RSS before {rss.start / 1024:.1f} MiB, peak {rss.peak / 1024:.1f} MiB, "
              f"5 s after {after / 1024:.1f} MiB; {rss.seconds:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=measure.__doc__)
    parser.add_argument("--per-request-mib", type=int, default=350)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    measure(args.per_request_mib, args.clients)
