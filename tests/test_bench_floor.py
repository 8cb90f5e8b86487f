"""bench/floor.py, the benchmark's pass-through peer, forwards what it is sent and answers what the upstream
answered: a floor that dropped the body or the answer would make its figures meaningless."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(script: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(BENCH / script), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{script} did not start: {proc.stderr.read().decode() if proc.stderr else ''}")


@pytest.fixture(scope="module")
def ports() -> Iterator[tuple[int, int]]:
    up_port, floor_port = _free_port(), _free_port()
    upstream = _start("upstream.py", up_port)
    floor = _start("floor.py", floor_port)
    yield up_port, floor_port
    for proc in (floor, upstream):
        proc.terminate()
        proc.wait(10)


def _headers(up_port: int) -> dict[str, str]:
    return {"x-portkey-custom-host": f"http://127.0.0.1:{up_port}/v1", "Authorization": "Bearer sk-bench"}


def test_a_list_comes_back_byte_for_byte(ports: tuple[int, int]) -> None:
    up_port, floor_port = ports
    direct = httpx.get(f"http://127.0.0.1:{up_port}/v1/fine_tuning/jobs?limit=20")
    through = httpx.get(f"http://127.0.0.1:{floor_port}/v1/fine_tuning/jobs?limit=20", headers=_headers(up_port))
    assert through.status_code == 200
    assert through.content == direct.content
    assert len(through.content) > 16_000


def test_a_create_reaches_the_upstream(ports: tuple[int, int]) -> None:
    up_port, floor_port = ports
    r = httpx.post(f"http://127.0.0.1:{floor_port}/v1/fine_tuning/jobs", headers=_headers(up_port),
                   json={"model": "gpt-4o-mini-2024-07-18", "training_file": "file-abc"})
    assert r.status_code == 200
    assert r.json()["id"].startswith("ftjob-")


@pytest.mark.parametrize("size", [1000, 3 * 2**20 + 17])  # read whole, and streamed (over 1 MiB)
def test_an_upload_arrives_whole(ports: tuple[int, int], size: int) -> None:
    up_port, floor_port = ports
    r = httpx.post(f"http://127.0.0.1:{floor_port}/v1/files", headers=_headers(up_port),
                   files={"file": ("train.jsonl", b"x" * size)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200
    assert r.json()["bytes"] > size  # the upstream counted the whole multipart body it was sent


def test_an_unknown_path_keeps_the_upstreams_status(ports: tuple[int, int]) -> None:
    up_port, floor_port = ports
    r = httpx.get(f"http://127.0.0.1:{floor_port}/v1/nowhere", headers=_headers(up_port))
    assert r.status_code == 404
