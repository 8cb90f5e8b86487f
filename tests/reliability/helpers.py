"""Shared helpers: raw-socket clients that can stop half-way, waiting, a ``tunegate serve`` whose
output goes to a file (a pipe nobody reads would block a chatty server)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import requests

from tests.process import ServeProcess

BOUNDARY = "reliability-boundary-7f3a"
LINE = (b'{"messages": [{"role": "user", "content": "What is the capital of France?"}, '
        b'{"role": "assistant", "content": "Paris."}]}\n')


def multipart_head(purpose: str = "fine-tune", field: str = "file") -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"t.jsonl\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n").encode()


MULTIPART_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def block(size: int = 1024 * 1024) -> bytes:
    return LINE * (size // len(LINE))


class RawUpload:
    """A multipart upload over a plain socket, sent piece by piece, that can be abandoned at any point."""

    def __init__(self, base_url: str, path: str, headers: dict[str, str], total_file_bytes: int,
                 purpose: str = "fine-tune") -> None:
        url = urlparse(base_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=30)
        self.head = multipart_head(purpose)
        length = len(self.head) + total_file_bytes + len(MULTIPART_TAIL)
        lines = [f"POST {path} HTTP/1.1", f"Host: {url.hostname}:{url.port}",
                 f"Content-Type: multipart/form-data; boundary={BOUNDARY}", f"Content-Length: {length}",
                 *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        self.sock.sendall("\r\n".join(lines).encode() + self.head)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def finish(self) -> tuple[int, bytes]:
        self.sock.sendall(MULTIPART_TAIL)
        return read_response(self.sock)

    def abort(self, reset: bool = False) -> None:
        if reset:
            import struct

            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    while length is not None and len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    sock.close()
    return status, body


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def open_fds_under(folder: Path, pid: int | None = None) -> list[str]:
    """Paths under ``folder`` that process ``pid`` (default: this one) holds open."""
    root = Path(f"/proc/{pid or os.getpid()}/fd")
    found = []
    for fd in root.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


class LoggedServe(ServeProcess):
    """``tunegate serve`` with stdout+stderr captured to a file (readable at any time)."""

    def __init__(self, data_dir: Path, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, *args, env=env)
        self.log_path = log_path
        self._log: IO[bytes] | None = None

    def __enter__(self) -> LoggedServe:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self._cmd, env=self._env, stdout=self._log, stderr=subprocess.STDOUT)
        if not wait_for(self._healthy, 30, 0.1):
            self.proc.kill()
            raise RuntimeError("tunegate serve did not start: " + self.log_path.read_text()[-2000:])
        return self

    def _healthy(self) -> bool:
        try:
            return requests.get(self.url + "/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self._log is not None:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")
