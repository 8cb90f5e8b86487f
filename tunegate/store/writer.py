"""Registry writes on SQLite: one writer thread, and group commit.

Every created job is an ``INSERT … RETURNING`` plus the webhook outbox's statements, in one transaction
that must be durable before the answer. Through SQLAlchemy's async engine each such transaction took a
pooled aiosqlite connection; with 64 creates at once, 16 connections fought over SQLite's one write lock,
and a loser waits in SQLite's busy handler, which *sleeps* (1, 2, 5, 10 … 100 ms): 6 ms of wall time per
record at concurrency 64 for 0.8 ms of CPU (measured on this 2-core machine, bench/micro.py).

Here the writes of one process queue up for one connection on one thread. Whatever arrives while a
transaction runs is written by the next one, together: one ``BEGIN IMMEDIATE`` and one ``COMMIT`` for the
lot, and every caller is answered only after that commit (group commit). Each piece of work runs inside
a ``SAVEPOINT`` when it shares the transaction, so one that fails (a hook that raises) is rolled back
alone and only its caller sees the error.

A piece of work is a plain function of a sync transaction (``driver.Tx``, here the ``sqlite3``
connection; the store hooks too: the webhook outbox runs in the transaction that records the status, as
its contract says), and a whole batch — BEGIN, every work, COMMIT — is **one hop** to the writer thread. Each hop costs
a queue put, a thread wake-up and a ``call_soon_threadsafe`` back; a created job used to make five (the
upsert, three outbox statements, the commit), ~0.1 ms of CPU each on this machine.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tunegate.store.driver import SQLiteTx, Tx, as_store_error

T = TypeVar("T")
Work = Callable[[Tx], Any]
Outcome = tuple[Any, Exception | None]


class CallThread:
    """One thread running calls in order. Lighter than a one-worker ThreadPoolExecutor (no
    concurrent.futures.Future to chain to an asyncio one): a hop costs one queue put and one
    ``call_soon_threadsafe``. ``on_exit`` runs on the thread when it stops (closing what it owns)."""

    def __init__(self, name: str, on_exit: Callable[[], None] | None = None) -> None:
        self._calls: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._on_exit = on_exit
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._serve_calls()
        finally:
            if self._on_exit is not None:
                self._on_exit()

    def _serve_calls(self) -> None:
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
        self._thread: CallThread | None = None  # started on first use
        self._path = path
        self._on_connect = on_connect
        self._conn: sqlite3.Connection | None = None  # opened on the writer thread, used only there
        self._queue: list[tuple[Work, asyncio.Future[Any]]] = []
        self._draining: asyncio.Task[None] | None = None
        self.transactions = 0  # commits made, and the works they carried (the group-commit ratio)
        self.works = 0

    # ---- on the event loop -----------------------------------------------------------------------

    async def submit(self, work: Work) -> Any:
        """Run ``work(connection)`` in a transaction; returns its result once that transaction has committed."""
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
            self._thread = CallThread("tunegate-registry-write")
        return await self._thread.call(fn, *args)

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                outcomes = await self.call(self._run_batch, [work for work, _future in batch])
            except BaseException as exc:  # BEGIN or COMMIT failed (or shutdown): nothing of the batch is durable
                for _work, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("writer stopped"))
                if not isinstance(exc, Exception):
                    raise
                continue
            self.transactions += 1
            self.works += len(batch)
            for (_work, future), (result, error) in zip(batch, outcomes, strict=True):
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

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # isolation_level=None: sqlite3 leaves transactions alone, and this class begins, commits and
            # sets savepoints itself (sqlite3's own transaction handling breaks SAVEPOINT).
            self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._on_connect(self._conn, None)
        return self._conn

    def _run_batch(self, works: list[Work]) -> list[Outcome]:
        """One transaction for the whole batch. A work that raises is undone alone (its savepoint); a
        batch of one needs no savepoint: its failure rolls the transaction back. If BEGIN or COMMIT
        fails, this raises and nothing of the batch is durable. Driver errors come out as SQLAlchemy's,
        as from every other statement of the store."""
        try:
            return self._transaction(works)
        except sqlite3.Error as exc:  # BEGIN or COMMIT (the two that wait for the lock)
            raise as_store_error(exc) from exc

    def _transaction(self, works: list[Work]) -> list[Outcome]:
        raw = self._connection()
        tx = SQLiteTx(raw)
        # BEGIN, COMMIT and savepoints on the driver's connection, like the registry's hot statements
        # (store/driver.py): ~0.5 µs each instead of ~15 through SQLAlchemy. IMMEDIATE: the write lock at
        # once, so no statement fails half-way on a lock upgrade.
        raw.execute("BEGIN IMMEDIATE")
        try:
            if len(works) == 1:
                try:
                    outcomes: list[Outcome] = [(works[0](tx), None)]
                except Exception as exc:
                    raw.execute("ROLLBACK")
                    return [(None, as_store_error(exc))]
            else:
                outcomes = [self._in_savepoint(raw, tx, work) for work in works]
            raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise
        return outcomes

    @staticmethod
    def _in_savepoint(raw: sqlite3.Connection, tx: Tx, work: Work) -> Outcome:
        raw.execute("SAVEPOINT tg_work")
        try:
            result = work(tx)
        except Exception as exc:  # this work alone is undone; the others still commit
            raw.execute("ROLLBACK TO tg_work")
            raw.execute("RELEASE tg_work")
            return None, as_store_error(exc)
        raw.execute("RELEASE tg_work")
        return result, None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
