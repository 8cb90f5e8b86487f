"""Fireworks datasets as OpenAI files, and the upload spool. See MAPPING.md."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from tunegate import models, spool
from tunegate.providers.base import JSON, whole_number
from tunegate.providers.fireworks.wire import short_id, unix

# Dataset state → OpenAI file status (a non-OK `status` wins: the file is in error).
FILE_STATUS = {"READY": "processed", "UPLOADING": "uploaded", "STATE_UNSPECIFIED": "uploaded"}

def to_file(raw: JSON, account_id: str, *, size: int | None = None) -> JSON:
    """A Dataset as an OpenAI file. Fireworks keeps no byte count on a dataset: `bytes` is the size
    tunegate uploaded when it knows it (the upload answer), else 0."""
    dataset_id = short_id(raw.get("name"), account_id, "datasets") or ""
    st = raw.get("status") or {}
    failed = bool(st.get("code")) and st.get("code") != "OK"
    status = "error" if failed else FILE_STATUS.get(raw.get("state") or "STATE_UNSPECIFIED", "uploaded")
    extra: JSON = {"provider_status": raw.get("state") or "STATE_UNSPECIFIED"}
    if (examples := whole_number(raw.get("exampleCount"))) is not None:  # an int64, sent as a string
        extra["example_count"] = examples
    return models.file(id=dataset_id, bytes=size or 0, created_at=unix(raw.get("createTime")) or 0,
                       filename=raw.get("displayName") or dataset_id, purpose="fine-tune", status=status,
                       status_details=st.get("message") if failed else None, **extra)


def upload_name(filename: str) -> str:
    """The object name Fireworks stores: the client's base name, ending in .jsonl (the SDK helper's
    convention for signed uploads)."""
    base = os.path.basename(filename.replace("\\", "/")) or "data"
    return base if base.endswith(".jsonl") else base + ".jsonl"


class Spool(spool.Spool):
    """The upload on disk, so its size and example count are known before anything is created at Fireworks."""

    def __init__(self) -> None:
        super().__init__()
        self.examples = 0
        self._open_line = False  # the current (unfinished) line has non-blank bytes

    def observe(self, chunk: bytes) -> None:
        *done, rest = chunk.split(b"\n")
        for segment in done:
            self.examples += bool(self._open_line or segment.strip())
            self._open_line = False
        self._open_line = self._open_line or bool(rest.strip())

    async def fill(self, chunks: AsyncIterator[bytes]) -> None:
        await super().fill(chunks)
        self.examples += self._open_line  # a last line without a newline
