"""Clients that go away half-way, and a gateway killed or stopped half-way: no orphan temporary file,
no half-registered file, and the gateway keeps serving."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gateway import Gateway
from tests.reliability.helpers import LoggedServe, RawUpload, block, files_in, open_fds_under, wait_for
from tests.standins.openai_like import ServerThread, StandIn
from tests.test_errors import TRAINING

MANAGED = {"x-portkey-provider": "tunegate"}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[StandIn, str, Gateway]]:
    standin = StandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        yield standin, upstream.url, gw


def openai_headers(upstream: str, standin: StandIn) -> dict[str, str]:
    return {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream,
            "Authorization": f"Bearer {standin.api_key}"}


def managed_files(url: str) -> list[str]:
    resp = requests.get(url + "/v1/files", headers=MANAGED, timeout=10)
    assert resp.status_code == 200, resp.text
    return [f["id"] for f in resp.json()["data"]]


def still_serves(gw_url: str) -> None:
    assert requests.get(gw_url + "/healthz", timeout=5).ok
    assert requests.get(gw_url + "/readyz", timeout=5).json()["database"] == "ok"
    ok = requests.post(gw_url + "/v1/files", headers=MANAGED, data={"purpose": "fine-tune"},
                       files={"file": ("ok.jsonl", TRAINING)}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert requests.delete(gw_url + f"/v1/files/{ok.json()['id']}", timeout=10).status_code == 200


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_disconnect_mid_upload_to_managed_store(rig: tuple[StandIn, str, Gateway], reset: bool) -> None:
    _, _, gw = rig
    tmp = gw.settings.data_dir / "files" / "tmp"
    objects = gw.settings.data_dir / "files" / "objects"
    up = RawUpload(gw.url, "/v1/files", MANAGED, total_file_bytes=64 * 1024 * 1024)
    for _ in range(4):
        up.send(block())
    assert wait_for(lambda: bool(files_in(tmp)), 10), "the upload never reached the store"
    up.abort(reset=reset)
    assert wait_for(lambda: not files_in(tmp), 10), f"orphan temporary files: {files_in(tmp)}"
    assert files_in(objects) == []
    assert managed_files(gw.url) == []
    assert wait_for(lambda: not open_fds_under(gw.settings.data_dir / "files"), 5), open_fds_under(
        gw.settings.data_dir / "files")
    still_serves(gw.url)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_disconnect_mid_upload_to_openai(rig: tuple[StandIn, str, Gateway], reset: bool) -> None:
    standin, upstream, gw = rig
    headers = openai_headers(upstream, standin)
    up = RawUpload(gw.url, "/v1/files", headers, total_file_bytes=64 * 1024 * 1024)
    for _ in range(4):
        up.send(block())
    assert wait_for(lambda: any(r.path == "/files" for r in standin.requests), 10), "never reached the stand-in"
    up.abort(reset=reset)
    time.sleep(0.5)
    assert standin.files == {}  # the upstream request was aborted, not completed with half a file
    listing = requests.get(gw.url + "/v1/files", headers=headers, timeout=10)
    assert listing.status_code == 200 and listing.json()["data"] == []
    known = gw.with_store(lambda s: s.owners("file", ["file-standin000001", "file-standin000002"]))
    assert known == {}
    ok = requests.post(gw.url + "/v1/files", headers=headers, data={"purpose": "fine-tune"},
                       files={"file": ("ok.jsonl", TRAINING)}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert list(standin.contents.values()) == [TRAINING]


def _download_and_hang_up(url: str, path: str, headers: dict[str, str], read_bytes: int, reset: bool) -> int:
    sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30)
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    sock.sendall("\r\n".join(lines).encode())
    got = 0
    first = b""
    while got < read_bytes:
        chunk = sock.recv(65536)
        if not chunk:
            break
        first = first or chunk
        got += len(chunk)
    if reset:
        import struct

        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    assert first.startswith(b"HTTP/1.1 200"), first[:200]
    return got


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_disconnect_mid_download_from_managed_store(rig: tuple[StandIn, str, Gateway], reset: bool) -> None:
    _, _, gw = rig
    big = block() * 48  # 48 MiB: far more than socket buffers hold
    created = requests.post(gw.url + "/v1/files", headers=MANAGED, data={"purpose": "batch"},
                            files={"file": ("big.jsonl", big)}, timeout=120)
    assert created.status_code == 200, created.text
    file_id = created.json()["id"]
    for _ in range(3):
        _download_and_hang_up(gw.url, f"/v1/files/{file_id}/content", MANAGED, 2 * 1024 * 1024, reset)
    store_dir = gw.settings.data_dir / "files"
    assert wait_for(lambda: not open_fds_under(store_dir), 10), f"file handles left open: {open_fds_under(store_dir)}"
    full = requests.get(gw.url + f"/v1/files/{file_id}/content", headers=MANAGED, timeout=120)
    assert full.status_code == 200 and len(full.content) == len(big)
    assert managed_files(gw.url) == [file_id]
    assert files_in(store_dir / "tmp") == []
    still_serves(gw.url)


def test_disconnect_mid_download_from_openai(rig: tuple[StandIn, str, Gateway]) -> None:
    standin, upstream, gw = rig
    standin.files["file-big"] = {"object": "file", "id": "file-big", "bytes": 0, "created_at": 1,
                                 "filename": "b.jsonl", "purpose": "fine-tune", "status": "processed"}
    standin.contents["file-big"] = block() * 32
    headers = openai_headers(upstream, standin)
    for _ in range(5):
        _download_and_hang_up(gw.url, "/v1/files/file-big/content", headers, 1024 * 1024, reset=True)
    # The upstream connections were released: the pool (limit 512) is not leaking, requests still flow.
    for _ in range(20):
        assert requests.get(gw.url + "/v1/files/file-big", headers=headers, timeout=10).status_code == 200
    full = requests.get(gw.url + "/v1/files/file-big/content", headers=headers, timeout=60)
    assert full.status_code == 200 and len(full.content) == 32 * len(block())


# ---- a process killed, or stopped, half-way ------------------------------------------------------

def test_kill_9_mid_upload_then_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tmp = data / "files" / "tmp"
    with LoggedServe(data, tmp_path / "serve1.log") as gw:
        assert gw.proc is not None
        up = RawUpload(gw.url, "/v1/files", MANAGED, total_file_bytes=64 * 1024 * 1024)
        for _ in range(4):
            up.send(block())
        assert wait_for(lambda: bool(files_in(tmp)), 10), "the upload never reached the store"
        gw.proc.kill()
        gw.proc.wait(10)
        up.abort()
        leftovers = files_in(tmp)
        assert leftovers and all(n.endswith(".part") for n in leftovers)  # what a crash leaves behind
    with LoggedServe(data, tmp_path / "serve2.log") as again:
        assert files_in(tmp) == []  # swept at start-up
        assert files_in(data / "files" / "objects") == []
        assert requests.get(again.url + "/readyz", timeout=5).json() == {"status": "ready", "database": "ok"}
        assert managed_files(again.url) == []
        still_serves(again.url)


def test_sigterm_mid_upload_completes_or_fails_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    size = 24 * 1024 * 1024
    chunk = block()
    result: dict[str, Any] = {}
    with LoggedServe(data, tmp_path / "serve.log") as gw:
        assert gw.proc is not None
        up = RawUpload(gw.url, "/v1/files", MANAGED, total_file_bytes=size // len(chunk) * len(chunk))

        def client() -> None:
            try:
                for _i in range(size // len(chunk)):
                    up.send(chunk)
                    time.sleep(0.05)
                result["response"] = up.finish()
            except OSError as exc:
                result["error"] = exc

        sender = threading.Thread(target=client)
        sender.start()
        time.sleep(0.3)
        assert wait_for(lambda: bool(files_in(data / "files" / "tmp")), 10)
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        sender.join(60)
        code = gw.proc.wait(40)  # timeout_graceful_shutdown is 30 s
        exited_after = time.monotonic() - signalled
        assert code is not None
        log = gw.output()
    assert exited_after < 35, exited_after
    if "response" in result:
        status, body = result["response"]
        assert status in (200, 503), (status, body[:300])
    with LoggedServe(data, tmp_path / "serve2.log") as again:
        listed = requests.get(again.url + "/v1/files", headers=MANAGED, timeout=10).json()["data"]
        assert files_in(data / "files" / "tmp") == []
        if "response" in result and result["response"][0] == 200:
            # Completed: registered whole, and the bytes on disk are all of it.
            assert [f["bytes"] for f in listed] == [size // len(chunk) * len(chunk)]
            content = requests.get(again.url + f"/v1/files/{listed[0]['id']}/content", headers=MANAGED, timeout=60)
            assert len(content.content) == listed[0]["bytes"]
        else:
            assert listed == [], log[-2000:]
    result["exited_after"] = exited_after
    print(f"SIGTERM mid-upload: client got {result.get('response', result.get('error'))!r:.80}, "
          f"process exited {exited_after:.2f} s after the signal")
