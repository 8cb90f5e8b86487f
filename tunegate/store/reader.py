"""Registry reads on SQLite without the async ORM's cost: a plain ``sqlite3`` connection on a thread of
its own (PostgreSQL's are on the registry's asyncpg pool, store/postgres.py).

A chat request naming a base model, a list of jobs, a retrieve: each asks the registry who owns an id,
and most of those ids are not there. Through SQLAlchemy's async engine and aiosqlite such a primary-key
read costs ~0.5 ms of CPU (statement handling, a greenlet, a queue hop to aiosqlite's thread); the same
read on a plain ``sqlite3`` connection, on one reader thread of its own, costs ~60 µs, nearly all of it
the hop off the event loop (518 µs vs 60 µs per read, measured on this 2-core machine).

Only reads go here; writes go to the writer thread (store/writer.py). In WAL mode this connection sees every committed
write, its own process's and other processes' alike, and never blocks a writer.

It takes SQL with ``?`` marks and returns rows as tuples.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from tunegate.store.writer import CallThread


class SQLiteReader:
    def __init__(self, path: str) -> None:
        self.path = path
        self._thread: CallThread | None = None  # started on first read
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:  # opened on the reader thread, and only ever used there
            conn = sqlite3.connect(self.path, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA query_only=1")
            # Primary-key reads touch a few pages; the OS page cache holds the file. SQLite's default
            # (2 MiB per connection) would be resident memory for nothing.
            conn.execute("PRAGMA cache_size=-256")
            self._conn = conn
        return self._conn

    def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._connection().execute(sql, params).fetchall()

    async def fetchall(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        # A CallThread, not run_in_executor: ThreadPoolExecutor.submit and the concurrent future chained
        # to an asyncio one were ~10 % of a streamed chat request's samples (its one registry read).
        if self._thread is None:
            self._thread = CallThread("tunegate-registry-read", on_exit=self._shut)
        return await self._thread.call(self._fetchall, sql, params)

    def _shut(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        """Stop the thread (after the reads queued before this), closing the connection on it."""
        if self._thread is not None:
            thread, self._thread = self._thread, None
            await asyncio.to_thread(thread.stop)  # joins the thread: not on the loop
