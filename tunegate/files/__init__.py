"""The gateway-managed file store: bytes tunegate keeps itself ("upload once, train anywhere").

Two implementations of ``FileStore``: ``LocalDiskStore`` (below, the default) and ``S3Store``
(``tunegate.files.s3``, ``file_store = "s3"``: an S3-compatible bucket shared by several instances).

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
from typing import TYPE_CHECKING, Protocol

from tunegate.private import create_private, private_dir

if TYPE_CHECKING:
    from tunegate.config import Settings
    from tunegate.upstream import Upstream

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


class FileStore(Protocol):
    """Where managed files' bytes live. ``location`` is the store's own name for an object (kept in the
    database row); a write is all-or-nothing: a failed or abandoned write leaves nothing behind."""

    def prepare(self) -> None:
        """Blocking set-up at startup (run in a worker thread)."""

    async def write(self, name: str, chunks: AsyncIterator[bytes]) -> Stored: ...

    def read(self, location: str) -> AsyncIterator[bytes]: ...

    def path(self, location: str) -> Path:
        """A local file holding the object, when one exists without I/O (see ``local_path``)."""
        ...

    async def local_path(self, location: str) -> Path:
        """A local file holding the object (downloaded first where the store is remote): for the local
        trainer, which reads files from disk."""
        ...

    async def delete(self, location: str) -> None: ...


def open_file_store(settings: Settings, upstream: Upstream) -> FileStore:
    """The store ``settings.file_store`` names; ``upstream`` is the store's own HTTP session (remote stores)."""
    if settings.file_store == "s3":
        from tunegate.files.s3 import S3Store

        return S3Store.from_settings(settings, upstream)
    return LocalDiskStore(settings.data_dir / "files")


class LocalDiskStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"

    def prepare(self) -> None:
        """Create the folders (0700) and sweep temporaries a crashed process left behind."""
        for folder in (self.root, self.objects, self.tmp):
            private_dir(folder)
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)

    async def write(self, name: str, chunks: AsyncIterator[bytes]) -> Stored:
        temp = self.tmp / f"{name}.{secrets.token_hex(4)}.part"
        digest = hashlib.sha256()
        size = 0
        handle = await asyncio.to_thread(create_private, temp)  # 0600, whatever the umask
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

    async def local_path(self, location: str) -> Path:
        return self.path(location)

    async def delete(self, location: str) -> None:
        await asyncio.to_thread(self.path(location).unlink, True)


def _flush_and_sync(handle: object) -> None:
    handle.flush()  # type: ignore[attr-defined]
    os.fsync(handle.fileno())  # type: ignore[attr-defined]
    handle.close()  # type: ignore[attr-defined]
