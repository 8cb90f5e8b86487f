"""Registry reads without the async ORM's cost: on SQLite through a plain ``sqlite3`` connection, on
PostgreSQL through the pooled connection's own asyncpg driver.

A chat request naming a base model, a list of jobs, a retrieve: each asks the registry who owns an id,
and most of those ids are not there. Through SQLAlchemy's async engine and aiosqlite such a primary-key
read costs ~0.5 ms of CPU (statement handling, a greenlet, a queue hop to aiosqlite's thread); the same
read on a plain ``sqlite3`` connection, on one reader thread of its own, costs ~60 µs, nearly all of it
the hop off the event loop (518 µs vs 60 µs per read, measured on this 2-core machine).

Only reads go here; every write stays on the engine. In WAL mode this connection sees every committed
write, its own process's and other processes' alike, and never blocks a writer.

On PostgreSQL the same read through SQLAlchemy Core cost 360 µs of CPU (statement compile-cache lookup,
a greenlet, result processing; 488 µs before reads ran in autocommit, without BEGIN/ROLLBACK); the pool's
same SELECT as driver SQL costs ~200 µs (a miss on the objects table, this machine; the asyncpg driver
alone 139 µs, but without SQLAlchemy's handling of a dead connection).
Both readers take SQL with ``?`` marks and return rows as tuples.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tunegate.store.driver import numbered
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

    def close(self) -> None:
        """Stop the thread (after the reads queued before this), closing the connection on it."""
        if self._thread is not None:
            self._thread.stop()
            self._thread = None


class PostgresReader:
    """Reads on a connection of the store's own pool (autocommit: no transaction around one SELECT), as
    driver SQL: no statement construction or compile-cache lookup. Through SQLAlchemy's connection still,
    not the asyncpg driver beneath it (139 µs): a dead connection must fail as ``DBAPIError`` and make the
    pool drop its connections, as every other statement of the store does. Values come back as the driver
    decodes them; a JSON column may be text (SQLAlchemy's pass-through JSON codec): callers accept both."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def fetchall(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self._engine.connect() as conn:
            result = await conn.exec_driver_sql(numbered(sql), params)  # asyncpg's $n marks
            return [tuple(row) for row in result]

    def close(self) -> None:
        """Nothing of its own to close: the connections are the engine's."""
