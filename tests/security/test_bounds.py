"""Request bodies are held to bounds on the bytes actually read (finding 9), and a part's header cannot
smuggle a line into the multipart the gateway sends upstream (finding 13).

All over real sockets: ``tunegate serve`` for the memory figure, the in-process server otherwise.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.gateway import Gateway
from tests.process import PeakRSS, ServeProcess
from tests.security.abuse import BOUNDARY, concurrently, epilogue, many_fields, one_field, post_chunked

MiB = 2**20


def test_four_chunked_forms_of_endless_fields_get_413_and_leave_rss_flat(tmp_path: Path) -> None:
    # Today's code read 350 MiB of fields per request: four of them took the RSS to 1.6 GiB, kept after.
    with ServeProcess(tmp_path / "d") as gw:
        assert gw.proc is not None
        with PeakRSS(gw.proc.pid) as rss:
            outcomes = concurrently(gw.port, 4, lambda: many_fields(48 * MiB))
        assert [o.status for o in outcomes] == [413] * 4, [o.head[:300] for o in outcomes]
        assert all(o.sent < 16 * MiB for o in outcomes), [o.sent for o in outcomes]
        print(f"RSS start {rss.start / 1024:.1f} MiB, peak {rss.peak / 1024:.1f} MiB")
        assert rss.peak - rss.start < 64 * 1024, (rss.start, rss.peak)


def test_field_count_and_total_are_capped(gateway: Gateway) -> None:
    few_large = post_chunked(gateway.port, "/v1/files", many_fields(2 * MiB))  # 32 fields of 64 KiB > 256 KiB
    assert few_large.status == 413 and b"fields_too_large" in few_large.head
    many_small = post_chunked(gateway.port, "/v1/files", many_fields(33, field=1))
    assert many_small.status == 413


def test_one_endless_text_field_is_cut_at_its_limit(gateway: Gateway) -> None:
    outcome = post_chunked(gateway.port, "/v1/files", one_field(32 * MiB))
    assert outcome.status == 413 and outcome.sent < 16 * MiB


def test_a_chunked_body_is_held_to_the_upload_limit(tmp_path: Path) -> None:
    """Whatever follows the form's closing boundary still counts; and once the gateway has answered
    early, it closes the connection instead of reading (and dropping) the rest for as long as it comes."""
    with Gateway(tmp_path / "d", max_upload_bytes=MiB) as gw:
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
        sock.sendall(f"POST /v1/files HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nx-portkey-provider: "
                     f"tunegate\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode())
        sent = 0
        with pytest.raises(OSError):  # the peer resets the connection we keep writing to
            for chunk in epilogue(256 * MiB):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
        sock.close()
        assert sent < 64 * MiB, sent


def test_upload_parts_are_bounded_like_files(gateway: Gateway) -> None:
    outcome = post_chunked(gateway.port, "/v1/uploads/upload_abc/parts", many_fields(48 * MiB),
                           headers={"x-portkey-provider": "openai", "Authorization": "Bearer sk-test-000000"})
    assert outcome.status == 413 and outcome.sent < 16 * MiB


def _form(part_headers: str) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n"
            f"{part_headers}\r\n\r\n{{}}\n\r\n--{BOUNDARY}--\r\n").encode()


@pytest.mark.parametrize("control", ["\n", "\r", "\x00", "\x7f"])
def test_a_control_character_in_a_part_content_type_is_refused(gateway: Gateway, control: str) -> None:
    body = _form(f"Content-Type: application/jsonl{control}X-Injected: 1")
    r = requests.post(gateway.url + "/v1/files", data=body, timeout=30, headers={
        "x-portkey-provider": "tunegate", "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_multipart"


def test_the_writer_never_emits_a_control_character_in_a_part_header() -> None:
    import asyncio

    from tunegate.multipart import MultipartWriter

    async def body() -> bytes:
        async def chunks() -> Iterator[bytes]:  # type: ignore[misc]
            yield b"{}"

        writer = MultipartWriter()
        parts = [p async for p in writer.body([], "file", "t.jsonl", "text/plain\nX-Injected: 1", chunks())]
        return b"".join(parts)

    head = asyncio.run(body()).split(b"\r\n\r\n", 1)[0]
    assert b"\nX-Injected" not in head and b"Content-Type: text/plain X-Injected: 1" in head


def test_a_part_with_many_headers_is_refused(gateway: Gateway) -> None:
    body = _form("".join(f"X-H{i}: v\r\n" for i in range(64)) + "Content-Type: application/jsonl")
    r = requests.post(gateway.url + "/v1/files", data=body, timeout=30, headers={
        "x-portkey-provider": "tunegate", "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    # python-multipart >= 0.0.19 stops at 8 headers (a 400); the gateway's own cap backs older versions.
    assert r.status_code in (400, 413) and r.json()["error"]["code"] == "invalid_multipart"


def test_a_chunked_json_body_is_held_to_its_limit(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d", max_json_body_bytes=64 * 1024) as gw:
        outcome = post_chunked(gw.port, "/v1/fine_tuning/jobs", iter([b"{" + b" " * 65536] * 256),
                               headers={"Content-Type": "application/json", "x-portkey-provider": "openai",
                                        "Authorization": "Bearer sk-test-000000"})
        assert outcome.status == 413 and outcome.sent < 8 * MiB
