"""The gateway-managed file store: bytes tunegate keeps itself ("upload once, train anywhere").

Writes are atomic: a temporary file in the same directory, fsync, then rename — so a client that
disconnects mid-upload, or a process killed mid-write, never leaves a partial file under a real name.
Disk I/O runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1024 * 1024
MANAGED_PREFIX = "file-tg"


def new_file_id() -> str:
    """An id for a managed file: milliseconds first, so ids sort in upload order (pagination orders
    by created_at, then id)."""
    return f"{MANAGED_PREFIX}{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


def is_managed_file_id(file_id: str) -> bool:
    return file_id.startswith(MANAGED_PREFIX)


@dataclass(frozen=True)
class Stored:
    location: str
    bytes: int
    sha256: str


class LocalDiskStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"

    def prepare(self) -> None:
        """Create the folders and sweep temporaries a crashed process left behind."""
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)

    async def write(self, name: str, chunks: AsyncIterator[bytes]) -> Stored:
        temp = self.tmp / f"{name}.{secrets.token_hex(4)}.part"
        digest = hashlib.sha256()
        size = 0
        handle = await asyncio.to_thread(open, temp, "xb")
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_flush_and_sync, handle)
            final = self.objects / name
            await asyncio.to_thread(os.replace, temp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                handle.close()
            temp.unlink(missing_ok=True)
            raise
        return Stored(location=name, bytes=size, sha256=digest.hexdigest())

    async def read(self, location: str) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(open, self.path(location), "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield chunk
        finally:
            handle.close()

    def path(self, location: str) -> Path:
        """The file on disk (for the local trainer, which reads it directly)."""
        path = (self.objects / location).resolve()
        if path.parent != self.objects.resolve():
            raise ValueError("location outside the store")
        return path

    async def delete(self, location: str) -> None:
        await asyncio.to_thread(self.path(location).unlink, True)


def _flush_and_sync(handle: object) -> None:
    handle.flush()  # type: ignore[attr-defined]
    os.fsync(handle.fileno())  # type: ignore[attr-defined]
    handle.close()  # type: ignore[attr-defined]
