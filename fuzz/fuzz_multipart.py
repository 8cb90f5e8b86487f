"""atheris fuzz target for tunegate.multipart.MultipartReader (and MultipartWriter round trips).

    .venv/bin/python fuzz/fuzz_multipart.py -max_total_time=30 -rss_limit_mb=1024

Three modes, chosen by the first input byte:

0. raw: the input is a multipart body (fixed boundary), fed in fuzzer-chosen chunk sizes; the reader may
   only raise tunegate's APIError (400 / 413), never anything else — and feeding the same body in one
   chunk must give the same parts, bytes and outcome (chunking must not change the result);
1. framed: fuzzer-chosen field values and file bytes inside a well-formed frame (reaches the data paths);
   must parse back exactly;
2. round trip: MultipartWriter.body() of fuzzer-chosen fields and file read back by MultipartReader must
   give the same fields and bytes (names restricted to the safe characters the writer can express).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    from tunegate.errors import APIError
    from tunegate.multipart import MultipartReader, MultipartWriter

BOUNDARY = "fuzzboundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
LIMIT = 4096
SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.[] "
LOOP = asyncio.new_event_loop()


async def _chunks(data: bytes, step: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), step):
        yield data[i: i + step]


async def _parse(body: AsyncIterator[bytes], content_type: str = CONTENT_TYPE) -> list[tuple[str, str | None, bytes]]:
    reader = MultipartReader(body, content_type, LIMIT)
    parts = []
    while (part := await reader.next_part()) is not None:
        data = b"".join([c async for c in reader.chunks()])
        parts.append((part.name, part.filename, data))
        if len(parts) > 1000:
            raise AssertionError("unbounded part count")
    return parts


def _outcome(data: bytes, step: int) -> tuple[str, object]:
    try:
        return "ok", LOOP.run_until_complete(_parse(_chunks(data, step)))
    except APIError as exc:
        return "error", exc.status


def _safe(fdp: atheris.FuzzedDataProvider, n: int) -> str:
    return "".join(SAFE[b % len(SAFE)] for b in fdp.ConsumeBytes(n)) or "f"


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris API name)
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    step = fdp.ConsumeIntInRange(1, 97)
    if mode == 0:
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
        chunked = _outcome(body, step)
        whole = _outcome(body, max(1, len(body)))
        if chunked != whole:
            raise AssertionError(f"chunk size {step} changed the result: {chunked!r} != {whole!r}")
        return
    if mode == 1:
        value = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)).replace(b"\r\n--", b"")
        payload = fdp.ConsumeBytes(fdp.remaining_bytes())
        if f"\r\n--{BOUNDARY}".encode() in payload or f"\r\n--{BOUNDARY}".encode() in value:
            return
        body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n".encode() + value
                + f"\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n"
                  "Content-Type: application/jsonl\r\n\r\n".encode() + payload + f"\r\n--{BOUNDARY}--\r\n".encode())
        kind, result = _outcome(body, step)
        if len(payload) > LIMIT or len(value) > LIMIT:
            if (kind, result) != ("error", 413):
                raise AssertionError(f"oversized part not refused with 413: {kind} {result!r}")
            return
        expected = [("purpose", None, value), ("file", "t.jsonl", payload)]
        if (kind, result) != ("ok", expected):
            raise AssertionError(f"well-formed body misread: {kind} {result!r}")
        return
    fields = [(_safe(fdp, 8), fdp.ConsumeUnicodeNoSurrogates(16).replace("\r", "").replace("\n", ""))
              for _ in range(fdp.ConsumeIntInRange(0, 3))]
    filename = _safe(fdp, 12)
    payload = fdp.ConsumeBytes(min(fdp.remaining_bytes(), LIMIT))
    writer = MultipartWriter()

    async def roundtrip() -> list[tuple[str, str | None, bytes]]:
        async def file_chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(payload), step):
                yield payload[i: i + step]

        return await _parse(writer.body(fields, "file", filename, "application/octet-stream", file_chunks()),
                            writer.content_type)

    got = LOOP.run_until_complete(roundtrip())
    expected = [(n, None, v.encode()) for n, v in fields] + [("file", filename, payload)]
    if got != expected:
        raise AssertionError(f"writer/reader round trip differs: {got!r} != {expected!r}")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
