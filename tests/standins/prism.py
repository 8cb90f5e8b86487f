"""Prism (npm @stoplight/prism-cli) serving the published OpenAI spec, ../shared/specs/openai-openapi.yaml.

Prism answers every operation with the spec's examples and rejects requests that break the spec
(422), so it checks what the gateway sends as much as what it returns. It serves paths without /v1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import requests

from tests.standins.openai_like import free_port

ROOT = Path(__file__).resolve().parents[2]


def prism_binary() -> str | None:
    for candidate in (os.environ.get("TUNEGATE_PRISM"), str(ROOT / ".ci/node_modules/.bin/prism"),
                      shutil.which("prism")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


class Prism:
    def __init__(self, spec: Path) -> None:
        binary = prism_binary()
        if binary is None:
            raise FileNotFoundError("prism is not installed (cd .ci && npm ci)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen([binary, "mock", "-h", "127.0.0.1", "-p", str(self.port), str(spec)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> Prism:
        deadline = time.monotonic() + 180  # the 3 MB spec takes a while to load on 2 cores
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError("prism exited")
            try:
                requests.get(self.url + "/fine_tuning/jobs", headers={"Authorization": "Bearer x"}, timeout=2)
                return self
            except requests.RequestException:
                time.sleep(0.5)
        self._proc.kill()
        raise RuntimeError("prism did not start")

    def __exit__(self, *exc: object) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
