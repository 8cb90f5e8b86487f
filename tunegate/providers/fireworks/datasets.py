"""Fireworks datasets as OpenAI files, and the upload spool. See MAPPING.md."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from typing import IO

from tunegate import models
from tunegate.providers.base import JSON
from tunegate.providers.fireworks.wire import short_id, unix

# Dataset state → OpenAI file status (a non-OK `status` wins: the file is in error).
FILE_STATUS = {"READY": "processed", "UPLOADING": "uploaded", "STATE_UNSPECIFIED": "uploaded"}

SPOOL_FLUSH = 1024 * 1024
READ_CHUNK = 256 * 1024


def to_file(raw: JSON, account_id: str, *, size: int | None = None) -> JSON:
    """A Dataset as an OpenAI file. Fireworks keeps no byte count on a dataset: `bytes` is the size
    tunegate uploaded when it knows it (the upload answer), else 0."""
    dataset_id = short_id(raw.get("name"), account_id, "datasets") or ""
    st = raw.get("status") or {}
    failed = bool(st.get("code")) and st.get("code") != "OK"
    status = "error" if failed else FILE_STATUS.get(raw.get("state") or "STATE_UNSPECIFIED", "uploaded")
    extra: JSON = {"provider_status": raw.get("state") or "STATE_UNSPECIFIED"}
    if raw.get("exampleCount") not in (None, ""):
        extra["example_count"] = int(raw["exampleCount"])
    return models.file(id=dataset_id, bytes=size or 0, created_at=unix(raw.get("createTime")) or 0,
                       filename=raw.get("displayName") or dataset_id, purpose="fine-tune", status=status,
                       status_details=st.get("message") if failed else None, **extra)


def upload_name(filename: str) -> str:
    """The object name Fireworks stores: the client's base name, ending in .jsonl (the SDK helper's
    convention for signed uploads)."""
    base = os.path.basename(filename.replace("\\", "/")) or "data"
    return base if base.endswith(".jsonl") else base + ".jsonl"


class Spool:
    """The upload, written to a temporary file on disk as it arrives (never held in memory), so its
    size and example count are known before anything is created at Fireworks."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.size = 0
        self.examples = 0
        self._open_line = False  # the current (unfinished) line has non-blank bytes

    async def fill(self, chunks: AsyncIterator[bytes]) -> None:
        pending = bytearray()
        async for chunk in chunks:
            self.size += len(chunk)
            *done, rest = chunk.split(b"\n")
            for segment in done:
                self.examples += bool(self._open_line or segment.strip())
                self._open_line = False
            self._open_line = self._open_line or bool(rest.strip())
            pending += chunk
            if len(pending) >= SPOOL_FLUSH:
                await asyncio.to_thread(self.file.write, bytes(pending))
                pending.clear()
        if pending:
            await asyncio.to_thread(self.file.write, bytes(pending))
        self.examples += self._open_line

    async def chunks(self) -> AsyncIterator[bytes]:
        await asyncio.to_thread(self.file.seek, 0)
        while chunk := await asyncio.to_thread(self.file.read, READ_CHUNK):
            yield chunk

    def close(self) -> None:
        self.file.close()
