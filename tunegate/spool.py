"""A body parked on disk while something it depends on is still unknown.

Used where a stream cannot go straight on: a multipart upload whose ``file`` part comes before the
``purpose`` it needs (the Node SDK sends ``file`` first), and Fireworks, which wants a dataset's size
before its bytes. The bytes go to an anonymous temporary file (unlinked at once, so a crash leaves
nothing behind) in 1 MiB writes off the event loop, never held whole in memory.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from typing import IO

FLUSH = 1024 * 1024  # bytes gathered before each write to disk
READ_CHUNK = 256 * 1024  # bytes per chunk when the spool is read back


class Spool:
    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.size = 0

    def observe(self, chunk: bytes) -> None:
        """Sees every chunk as it is spooled (subclasses count what they need)."""

    async def fill(self, chunks: AsyncIterator[bytes]) -> None:
        pending = bytearray()
        async for chunk in chunks:
            self.size += len(chunk)
            self.observe(chunk)
            pending += chunk
            if len(pending) >= FLUSH:
                await asyncio.to_thread(self.file.write, bytes(pending))
                pending.clear()
        if pending:
            await asyncio.to_thread(self.file.write, bytes(pending))

    async def chunks(self) -> AsyncIterator[bytes]:
        """The spooled bytes from the start (may be read again)."""
        await asyncio.to_thread(self.file.seek, 0)
        while chunk := await asyncio.to_thread(self.file.read, READ_CHUNK):
            yield chunk

    def close(self) -> None:
        self.file.close()
