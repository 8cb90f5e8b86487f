"""A 200 MiB training-file upload streams through ``tunegate serve`` (validated on the way) without
the gateway's memory growing with the file: its RSS stays under 100 MiB."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import requests

from tests.process import PeakRSS, ServeProcess
from tests.standins.openai_like import ServerThread, StandIn

SIZE = 200 * 1024 * 1024


def multipart_stream(boundary: str, line: bytes, size: int) -> Iterator[bytes]:
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
           "Content-Type: application/jsonl\r\n\r\n").encode()
    block = line * (1024 * 1024 // len(line))
    sent = 0
    while sent < size:
        yield block
        sent += len(block)
    yield f"\r\n--{boundary}--\r\n".encode()


def test_200_mib_upload_keeps_gateway_rss_under_100_mib(tmp_path: Path) -> None:
    line = (json.dumps({"messages": [{"role": "user", "content": "What is the capital of France?"},
                                     {"role": "assistant", "content": "Paris."}]}) + "\n").encode()
    standin = StandIn()
    with ServerThread(standin.app()) as upstream, ServeProcess(tmp_path / "d") as gw:
        assert gw.proc is not None
        boundary = "tunegate-test-boundary"
        with PeakRSS(gw.proc.pid) as rss:
            resp = requests.post(gw.url + "/v1/files", data=multipart_stream(boundary, line, SIZE), timeout=600,
                                 headers={"x-portkey-provider": "openai", "x-portkey-custom-host": upstream.url,
                                          "Authorization": f"Bearer {standin.api_key}",
                                          "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert resp.status_code == 200, resp.text[:500]
        uploaded = resp.json()
        assert uploaded["bytes"] >= SIZE and standin.contents[uploaded["id"]][:len(line)] == line
        print(f"gateway RSS: start {rss.start / 1024:.1f} MiB, peak {rss.peak / 1024:.1f} MiB "
              f"during a {uploaded['bytes'] / 2**20:.0f} MiB upload")
        assert rss.peak < 100 * 1024, f"peak RSS {rss.peak} KiB"
