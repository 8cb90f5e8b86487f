"""Run ``tunegate serve`` as a real subprocess, and read its memory from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.gateway import _TEST_FERNET_KEY
from tests.standins.openai_like import free_port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class ServeProcess:
    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._cmd = [sys.executable, "-m", "tunegate", "serve", "--port", str(self.port), *args]
        self._env = {**os.environ, "TUNEGATE_DATA_DIR": str(data_dir), "TUNEGATE_SECRET_KEY": _TEST_FERNET_KEY,
                     **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def _drain(self) -> None:
        """Read the server's output as it comes: a pipe nobody reads fills (64 KiB) and then blocks the
        server on its next log line. The last 64 KiB are kept for error messages."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self.output = (self.output + line)[-65536:]

    def __enter__(self) -> ServeProcess:
        self.proc = subprocess.Popen(self._cmd, env=self._env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = b""
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.05)
        self.proc.kill()
        self.proc.wait(5)
        raise RuntimeError("tunegate serve did not start: " + self.output.decode(errors="replace")[-2000:])

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class PeakRSS:
    """Samples a process's resident memory every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = rss_kib(pid)
        self.peak = self.start
        self.seconds = 0.0  # set by callers that time what they measured
        self.cpu = 0.0  # the process's CPU seconds over the same span, likewise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
