"""The registry's hot statements on PostgreSQL, on a pool of plain asyncpg connections.

Every created job reads the registry (its training file) and writes it (the job's upsert and the webhook
outbox's statements, in one transaction). Through SQLAlchemy's async engine each statement cost ~75 µs
of CPU besides the driver's own work (the adapted cursor, result wrapping, a greenlet switch), and each
checkout ~70 µs (the sync pool driven through a greenlet). On asyncpg's own pool the same lookup of a
missing object costs 89 instead of 225 µs of CPU, and the create's transaction (BEGIN, upsert, outbox
mark, COMMIT) 231 instead of 498 µs, one at a time (34 vs 157 and 125 vs 278 µs at 64 at once; this
2-core machine, docs/performance.md).

A record that no store hook writes for (``Store.on_status``'s ``writes_for``: a job made with a caller's
own key, in a status without an event) is the upsert alone in autocommit (:meth:`RegistryPool.write_one`),
one round trip instead of ``BEGIN``, the upsert and ``COMMIT``.

What SQLAlchemy's engine did for these statements is kept, on purpose:

- **One transaction per write, durable before the answer**, and it goes on if the caller is cancelled
  (a job just created at the provider must not be forgotten because the client went away).
- **Store hooks stay plain functions of a sync transaction** (:class:`~tunegate.store.driver.Tx`): the
  work runs in a greenlet, as ``AsyncConnection.run_sync`` runs it, and each statement awaits the driver
  from there (SQLAlchemy's ``await_only``).
- **Errors come out as SQLAlchemy's** (``IntegrityError``, ``DBAPIError``), parameters hidden, as from
  every other statement of the store.
- **A dead connection is not used twice.** One the server closed is replaced by asyncpg's pool before
  use. One idle for a while is pinged first (a proxy or a NAT may have dropped it without a word) and
  replaced if the ping fails or goes unanswered. One that fails in use fails that statement, and every
  pooled connection is then replaced (the server restarted, or a proxy dropped them all), as
  SQLAlchemy's disconnect handling does.
- Beyond what the engine did: **no statement waits forever** on a connection that went silent
  (``STATEMENT_TIMEOUT_SECONDS``; the connection is then closed, its transaction rolled back by the
  server).

The other statements of the store (keys, connections, idempotency, files, the request log's reads)
stay on the engine, which keeps a small pool of its own (see ``Store``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import asyncpg
import sqlalchemy as sa
from sqlalchemy.util import await_only, greenlet_spawn

from tunegate.store.driver import numbered

T = TypeVar("T")

# What asyncpg raises for a statement or a connection that failed (a dropped socket is an OSError).
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
# Options SQLAlchemy's asyncpg dialect takes for itself; the rest of the URL's go to asyncpg.connect.
_DIALECT_ONLY = ("async_fallback", "async_creator_fn", "prepared_statement_cache_size", "prepared_statement_name_func")


class _Connection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg's pool takes a connection_class
    released_at = math.inf  # when the pool last took it back (a fresh connection needs no ping)


async def _note_release(con: _Connection) -> None:
    """The pool's reset hook: no reset query (a round trip per checkout; these sessions set nothing, and
    asyncpg rolls back an open transaction before calling this), only the time, for the idle ping."""
    con.released_at = time.monotonic()


class AsyncpgTx:
    """A transaction on one asyncpg connection, for sync code running under ``greenlet_spawn``."""

    def __init__(self, con: asyncpg.Connection) -> None:
        self._con = con

    def rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await_only(self._con.fetch(numbered(sql), *params))]

    def execute_many(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        if params:
            await_only(self._con.executemany(numbered(sql), params))


class RegistryPool:
    STATEMENT_TIMEOUT_SECONDS = 30.0  # the registry's statements take milliseconds; a lock held this long is a fault
    PING_TIMEOUT_SECONDS = 2.0

    def __init__(self, engine: sa.Engine, size: int, ping_after_idle: Callable[[], float]) -> None:
        """Connections to the database ``engine`` connects to (the same host, credentials and TLS
        options), at most ``size``, opened on demand. ``ping_after_idle``: seconds a pooled connection
        may sit unused before it is pinged (read at each checkout)."""
        _args, options = engine.dialect.create_connect_args(engine.url)
        self._options = {k: v for k, v in options.items() if k not in _DIALECT_ONLY}
        self._size = size
        self._ping_after_idle = ping_after_idle
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None

    async def fetchall(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """One ``?``-marked statement, outside a transaction (autocommit); its rows as tuples."""
        pool = await self._opened()
        con = await self._checkout(pool)
        try:
            return [tuple(r) for r in await con.fetch(numbered(sql), *params)]
        except _DRIVER_ERRORS as exc:
            raise await self._failed(pool, con, exc, sql) from exc
        finally:
            await pool.release(con)

    async def write_one(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """One ``?``-marked statement that writes, on its own in autocommit: atomic and durable by itself,
        in one round trip where a transaction around it takes three. It goes on if the caller is
        cancelled, as ``write`` does."""
        return await asyncio.shield(self.fetchall(sql, params))

    async def write(self, work: Callable[[AsyncpgTx], T]) -> T:
        """Run ``work(tx)`` in a transaction; its result once the transaction has committed. The
        transaction goes on if the caller is cancelled."""
        return await asyncio.shield(self._write(work))

    async def _write(self, work: Callable[[AsyncpgTx], T]) -> T:
        pool = await self._opened()
        con = await self._checkout(pool)
        try:
            async with con.transaction():
                return cast(T, await greenlet_spawn(work, AsyncpgTx(con)))
        except _DRIVER_ERRORS as exc:  # from a statement, BEGIN or COMMIT; a hook's own errors pass as they are
            raise await self._failed(pool, con, exc, "(registry write)") from exc
        finally:
            await pool.release(con)

    async def close(self) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 10)
            except TimeoutError:  # a connection stuck in a statement: shut regardless
                self._pool.terminate()
            self._pool = None

    async def _opened(self) -> asyncpg.Pool:
        if self._pool is None:
            self._opening = self._opening or asyncio.Lock()
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        min_size=0, max_size=self._size, connection_class=_Connection, reset=_note_release,
                        **{"command_timeout": self.STATEMENT_TIMEOUT_SECONDS, **self._options})
        return self._pool

    async def _checkout(self, pool: asyncpg.Pool) -> _Connection:
        """A pooled connection; one left idle longer than the ping interval is pinged first, and a dead
        one replaced (each pooled connection at most once, then a new one is opened)."""
        for _attempt in range(self._size + 1):
            try:
                con = cast(_Connection, await pool.acquire())
            except _DRIVER_ERRORS as exc:  # the server cannot be reached
                raise _store_error(exc, "(connect)") from exc
            if time.monotonic() - con.released_at < self._ping_after_idle():
                return con
            try:
                await con.fetchval("SELECT 1", timeout=self.PING_TIMEOUT_SECONDS)
                return con
            except Exception:  # whatever failed, this connection is not trusted again
                con.terminate()  # dead or silent: its holder opens a new connection on the next checkout
                await pool.release(con)
        raise sa.exc.DisconnectionError("no live connection to the database")

    @staticmethod
    async def _failed(pool: asyncpg.Pool, con: _Connection, exc: BaseException, sql: str) -> Exception:
        closed = con.is_closed()
        if isinstance(exc, TimeoutError) and not closed:  # no answer: the connection is in an unknown state
            con.terminate()  # (this also hands it back: the release that follows has nothing to do)
            closed = True
        if closed:  # the connection died in use: the others likely did too (a restart, a proxy)
            await pool.expire_connections()
        return _store_error(exc, sql)


def _store_error(exc: BaseException, sql: str) -> Exception:
    """The asyncpg error as the SQLAlchemy error the engine would have raised, parameters never shown."""
    kind = sa.exc.IntegrityError if isinstance(exc, asyncpg.IntegrityConstraintViolationError) else sa.exc.DBAPIError
    return kind(sql, None, cast(Exception, exc), hide_parameters=True)
