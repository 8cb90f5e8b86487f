"""Registry writes on SQLite: one writer thread, and group commit.

Every created job is an ``INSERT … RETURNING`` plus the webhook outbox's statements, in one transaction
that must be durable before the answer. Through SQLAlchemy's async engine each such transaction took a
pooled aiosqlite connection; with 64 creates at once, 16 connections fought over SQLite's one write lock,
and a loser waits in SQLite's busy handler, which *sleeps* (1, 2, 5, 10 … 100 ms): 6 ms of wall time per
record at concurrency 64 for 0.8 ms of CPU (measured on this 2-core machine, bench/micro.py).

Here the writes of one process queue up for one connection on one thread. Whatever arrives while a
transaction runs is written by the next one, together: one ``BEGIN IMMEDIATE`` and one ``COMMIT`` for the
lot, and every caller is answered only after that commit (group commit). Each piece of work runs inside
a ``SAVEPOINT``, so one that fails (a hook that raises) is rolled back alone and only its caller sees the
error. Statements are SQLAlchemy constructs executed on a *sync* connection over the plain ``sqlite3``
driver, one hop to the thread per statement, instead of aiosqlite's several per statement plus a greenlet.

The work itself is a coroutine run on the event loop: store hooks (the webhook outbox) get a connection
whose ``execute`` has AsyncConnection's signature and answers a buffered result, so they run unchanged in
the transaction that records the status, as their contract says.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event

T = TypeVar("T")
Work = Callable[["WriteConnection"], Awaitable[Any]]


class WriteConnection:
    """The part of ``AsyncConnection`` that registry writes and store hooks use: ``execute``. Rows come
    back buffered (read in the writer thread), so the result may be used anywhere."""

    def __init__(self, writer: SQLiteWriter) -> None:
        self._writer = writer

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return await self._writer.call(self._writer.execute_now, statement, parameters)


class _Thread:
    """One thread running calls in order. Lighter than a one-worker ThreadPoolExecutor (no
    concurrent.futures.Future to chain to an asyncio one): a hop costs one queue put and one
    ``call_soon_threadsafe``, and a record makes several."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            loop, future, fn, args = item
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the awaiting coroutine
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop was closed meanwhile: nobody is waiting any more
                pass

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, fn, args))
        return await future

    def stop(self) -> None:
        self._calls.put(None)
        self._thread.join(10)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SQLiteWriter:
    def __init__(self, path: str, on_connect: Callable[[Any, Any], None]) -> None:
        self._thread: _Thread | None = None  # started on first use
        # AUTOCOMMIT: sqlite3 and SQLAlchemy then leave transactions alone, and this class begins,
        # commits and sets savepoints itself (pysqlite's own transaction handling breaks SAVEPOINT).
        self._engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.StaticPool,
                                        connect_args={"check_same_thread": False},
                                        isolation_level="AUTOCOMMIT")
        event.listen(self._engine, "connect", on_connect)
        self._conn: sa.Connection | None = None  # opened on the writer thread, used only there
        self._queue: list[tuple[Work, asyncio.Future[Any]]] = []
        self._draining: asyncio.Task[None] | None = None
        self._pending: list[str] = []  # savepoint statements sent with the next statement (no extra hop)
        self.transactions = 0  # commits made, and the works they carried (the group-commit ratio)
        self.works = 0

    # ---- on the event loop -----------------------------------------------------------------------

    async def submit(self, work: Work) -> Any:
        """Run ``work`` in a transaction; returns its result once that transaction has committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((work, future))
        if self._draining is None or self._draining.done():
            self._draining = loop.create_task(self._drain())
        # The transaction goes on if this caller is cancelled: what it records (a job just created at
        # the provider) must not be lost because the client went away.
        return await asyncio.shield(future)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            self._thread = _Thread("tunegate-registry-write")
        return await self._thread.call(fn, *args)

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[Work, asyncio.Future[Any]]]) -> None:
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        conn = WriteConnection(self)
        try:
            self._begin()  # sent with the first statement
            for work, future in batch:
                self._pending.append("SAVEPOINT tg_work")
                try:
                    result = await work(conn)
                except Exception as exc:  # this work alone is undone; the others still commit
                    await self.call(self._undo_work)
                    done.append((future, None, exc))
                    continue
                self._pending.append("RELEASE tg_work")
                done.append((future, result, None))
            await self.call(self._commit)
        except BaseException as exc:  # BEGIN or COMMIT failed (or shutdown): nothing of the batch is durable
            await asyncio.shield(self.call(self._rollback))
            for _work, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("writer stopped"))
            if not isinstance(exc, Exception):
                raise
            return
        self.transactions += 1
        self.works += len(batch)
        for future, result, error in done:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    async def close(self) -> None:
        if self._draining is not None and not self._draining.done():
            await asyncio.wait([self._draining])
        if self._thread is not None:
            await self.call(self._close)
            self._thread.stop()
            self._thread = None

    # ---- on the writer thread ----------------------------------------------------------------------

    def _connection(self) -> sa.Connection:
        if self._conn is None:
            self._conn = self._engine.connect()
        return self._conn

    def _flush_pending(self) -> None:
        conn = self._connection()
        while self._pending:  # each one off the list once it has run: a failure leaves the rest
            conn.exec_driver_sql(self._pending[0])
            del self._pending[0]

    def execute_now(self, statement: Any, parameters: Any) -> Any:
        self._flush_pending()
        conn = self._connection()
        result = conn.execute(statement) if parameters is None else conn.execute(statement, parameters)
        # Buffered here: the rows are read before the thread moves on to the next statement.
        return result.freeze()() if result.returns_rows else result

    def _begin(self) -> None:
        # IMMEDIATE: the write lock at once, so no statement of the batch fails half-way on a lock upgrade.
        self._pending[:] = ["BEGIN IMMEDIATE"]

    def _undo_work(self) -> None:
        if self._pending and self._pending[-1].startswith("SAVEPOINT"):
            self._pending.pop()  # the work failed before its first statement: nothing to undo
            return
        self._flush_pending()
        self._connection().exec_driver_sql("ROLLBACK TO tg_work")
        self._connection().exec_driver_sql("RELEASE tg_work")

    def _commit(self) -> None:
        if self._pending[:1] == ["BEGIN IMMEDIATE"]:  # no work ran a statement: nothing to commit
            self._pending.clear()
            return
        self._flush_pending()
        self._connection().exec_driver_sql("COMMIT")

    def _rollback(self) -> None:
        self._pending.clear()
        if self._conn is None:
            return
        conn = self._conn
        raw = conn.connection.dbapi_connection
        if isinstance(raw, sqlite3.Connection) and raw.in_transaction:
            conn.exec_driver_sql("ROLLBACK")

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._engine.dispose()

