"""MultipartReader's fast path (chunks without a CR skip python-multipart's boundary search) yields the
same parts and bytes as the parser alone, however the body is cut into chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tunegate import multipart
from tunegate.multipart import MultipartReader

BOUNDARY = "b0undary-x"


def _body(fields: list[tuple[str, bytes]], filename: str, data: bytes, epilogue: bytes = b"") -> bytes:
    out = b""
    for name, value in fields:
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
    out += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    return out + epilogue


async def _read(body: bytes, cuts: list[int], fast: bool) -> list[tuple[str, str | None, bytes]]:
    async def chunks() -> AsyncIterator[bytes]:
        last = 0
        for cut in sorted({c % (len(body) + 1) for c in cuts}) + [len(body)]:
            if cut > last:
                yield body[last:cut]
                last = cut

    reader = MultipartReader(chunks(), f"multipart/form-data; boundary={BOUNDARY}", 1 << 30)
    if not fast:
        reader._plain_part_data = lambda chunk: False  # type: ignore[method-assign]
    parts = []
    while (part := await reader.next_part()) is not None:
        data = b"".join([c async for c in reader.chunks()])
        parts.append((part.name, part.filename, data))
    return parts


# File bytes made of what a boundary is made of, so partial boundaries land on chunk edges.
PIECES = st.sampled_from([b"a", b"\r", b"\n", b"-", b"--", b"\r\n", b"\r\n--", BOUNDARY.encode(), b"{\"x\":1}\n",
                          b"\r\n--" + BOUNDARY.encode()[:-1], b"\r\n--" + BOUNDARY.encode() + b"x"])


@settings(max_examples=300, deadline=None)
@given(data=st.lists(PIECES, max_size=40).map(b"".join), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_fast_path_yields_what_the_parser_yields(data: bytes, cuts: list[int]) -> None:
    assume(b"\r\n--" + BOUNDARY.encode() not in data)  # a file never holds its form's delimiter
    body = _body([("purpose", b"fine-tune")], "train.jsonl", data)
    fast = asyncio.run(_read(body, cuts, fast=True))
    slow = asyncio.run(_read(body, cuts, fast=False))
    assert fast == slow
    assert fast[-1] == ("file", "train.jsonl", data)


def test_a_big_cr_free_file_is_passed_through_whole_chunks(monkeypatch: object) -> None:
    data = b'{"messages":[]}\n' * 50_000
    body = _body([("purpose", b"fine-tune")], "t.jsonl", data)
    calls = []
    real = multipart.MultipartParser.write

    def counting(self: multipart.MultipartParser, chunk: bytes) -> int:
        calls.append(len(chunk))
        return real(self, chunk)

    multipart.MultipartParser.write = counting  # type: ignore[method-assign]
    try:
        parts = asyncio.run(_read(body, list(range(0, len(body), 65536)), fast=True))
    finally:
        multipart.MultipartParser.write = real  # type: ignore[method-assign]
    assert parts[-1][2] == data
    # the first chunk (headers) and the last (closing boundary) go through the parser, not the middle
    assert len(calls) <= 3 < len(body) // 65536
