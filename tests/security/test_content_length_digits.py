"""A Content-Length in digits other than ASCII's is never a 500 (`tunegate/api/common.py` `json_body`,
`tunegate/api/files.py` `read_form_file` and `_declared_length`).

`str.isdigit` passes '²' (which `int()` refuses: a 500) and '١٢' (which `int()` reads as 12): the gateway reads a
declared length only when it is ASCII digits. Over HTTP/1.1 such a header never reaches the app, as deployed:
`tunegate serve`'s parser (httptools under the guard) refuses it first, as a JSON 400. The app itself is held to
it too, for a server that passes the header on: an ASGI request carrying the byte 0xB2 (latin-1 '²', how
Starlette decodes header bytes) is answered as the same request with no usable length.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway import _TEST_FERNET_KEY
from tests.process import ServeProcess
from tunegate.app import create_app
from tunegate.config import Settings

JOB = b'{"model": "gpt-4o-mini-2024-07-18"}'  # no training_file: a 400 naming it, before any upstream call
FORM = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        b"Content-Type: application/jsonl\r\n\r\n{}\n\r\n--xyz--\r\n")  # no purpose: a 400 naming it
ROUTES = {  # path → (content type, body, the param the 400 names)
    "/v1/fine_tuning/jobs": (b"application/json", JOB, "training_file"),
    "/v1/files": (b"multipart/form-data; boundary=xyz", FORM, "purpose"),
}
# The header's bytes: latin-1 '²', '¹²', '2³' (str.isdigit passes each); UTF-8 '١٢' (ARABIC-INDIC DIGITS ONE,
# TWO), which Starlette's latin-1 reads as letters.
LENGTHS = [b"\xb2", b"\xb9\xb2", b"2\xb3", "١٢".encode()]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with ServeProcess(tmp_path_factory.mktemp("length") / "d") as gw:
        yield gw


def _raw(port: int, path: str, length: bytes) -> bytes:
    content_type, body, _param = ROUTES[path]
    head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type +
            b"\r\nx-portkey-provider: openai\r\nAuthorization: Bearer sk-test-000000\r\nContent-Length: " + length +
            b"\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("path", list(ROUTES))
@pytest.mark.parametrize("length", LENGTHS)
def test_tunegate_serve_refuses_a_non_ascii_content_length_before_the_app(serve: ServeProcess, path: str,
                                                                          length: bytes) -> None:
    answer = _raw(serve.port, path, length)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b"application/json" in rest.partition(b"\r\n\r\n")[0].lower(), answer[:300]
    assert b"internal_error" not in answer


async def _asgi(app: Any, path: str, length: bytes) -> tuple[int, bytes]:
    content_type, body, _param = ROUTES[path]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080),
             "headers": [(b"host", b"x"), (b"content-type", content_type), (b"x-portkey-provider", b"openai"),
                         (b"authorization", b"Bearer sk-test-000000"), (b"content-length", length)]}
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize("path", list(ROUTES))
@pytest.mark.parametrize("length", [*LENGTHS, b"40"])  # b"40": the control
def test_the_app_reads_a_content_length_only_in_ascii_digits(tmp_path: Path, path: str, length: bytes) -> None:
    application = create_app(Settings(data_dir=tmp_path / "d", secret_key=_TEST_FERNET_KEY))

    async def run() -> tuple[int, bytes]:
        async with application.router.lifespan_context(application):
            return await _asgi(application, path, length)

    status, body = asyncio.run(run())
    assert status == 400, body
    assert f'"param":"{ROUTES[path][2]}"'.encode() in body, body
