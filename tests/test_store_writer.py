"""The registry's SQLite writer (tunegate/store/writer.py): concurrent records share one commit, each
caller is answered only once its row is durable, a failing hook undoes its own record only, and a
hook's writes commit or roll back with the status they belong to."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.gateway import _TEST_FERNET_KEY
from tunegate.store import StatusChange, Store, Tx
from tunegate.store.secretbox import SecretBox


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> Any:
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}", SecretBox(_TEST_FERNET_KEY))
    try:
        yield s
    finally:
        await s.close()


def durable_ids(store: Store) -> set[str]:
    """What another connection (another process, after a crash of this one) reads from the file."""
    path = store.url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM objects WHERE kind = 'job'")}


async def test_concurrent_records_share_commits_and_each_is_durable_when_answered(sqlite_store: Store) -> None:
    seen_missing: list[str] = []

    async def create(i: int) -> None:
        job_id = f"ftjob-{i}"
        await sqlite_store.record("job", job_id, "openai", None, "key-a", "validating_files", {"id": job_id})
        if job_id not in durable_ids(sqlite_store):
            seen_missing.append(job_id)

    await asyncio.gather(*(create(i) for i in range(64)))
    writer = sqlite_store._writer
    assert writer is not None
    assert seen_missing == []
    assert durable_ids(sqlite_store) == {f"ftjob-{i}" for i in range(64)}
    # 64 records arrived together: far fewer transactions than records (group commit).
    assert writer.works == 64 and writer.transactions < 32, (writer.transactions, writer.works)
    found = await sqlite_store.lookup("job", "ftjob-7")
    assert found is not None and found.key_id == "key-a" and found.snapshot == {"id": "ftjob-7"}


async def test_a_failing_hook_undoes_its_own_record_only(sqlite_store: Store) -> None:
    def hook(tx: Tx, changes: list[StatusChange]) -> None:
        for change in changes:
            tx.rows("INSERT INTO job_transitions (job_id, mark, created_at) VALUES (?, 'x', 0)", (change.id,))
            if change.id == "ftjob-bad":
                raise RuntimeError("hook failed")

    sqlite_store.on_status("job", hook)
    results = await asyncio.gather(
        *(sqlite_store.record("job", f"ftjob-{i}", "openai", None, None, "queued", None) for i in ("a", "bad", "b")),
        return_exceptions=True)
    assert isinstance(results[1], RuntimeError) and results[0] is None and results[2] is None
    assert durable_ids(sqlite_store) == {"ftjob-a", "ftjob-b"}
    path = sqlite_store.url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        marks = {r[0] for r in conn.execute("SELECT job_id FROM job_transitions")}
    assert marks == {"ftjob-a", "ftjob-b"}  # the failed hook's own write went with its record
    assert await sqlite_store.lookup("job", "ftjob-bad") is None
    # The writer goes on: the next record commits.
    await sqlite_store.record("job", "ftjob-c", "openai", None, None, "queued", None)
    assert "ftjob-c" in durable_ids(sqlite_store)


async def test_a_failed_batch_fails_every_caller_and_commits_nothing(sqlite_store: Store, tmp_path: Path) -> None:
    await sqlite_store.record("job", "ftjob-first", "openai", None, None, "queued", None)
    # Another process holds the write lock past the busy timeout: BEGIN IMMEDIATE cannot start.
    blocker = sqlite3.connect(sqlite_store.url.split("///", 1)[1], isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    writer = sqlite_store._writer
    assert writer is not None
    await writer.call(lambda: writer._connection().execute("PRAGMA busy_timeout=50"))
    try:
        results = await asyncio.gather(
            *(sqlite_store.record("job", f"ftjob-{i}", "openai", None, None, "queued", None) for i in range(3)),
            return_exceptions=True)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert all(isinstance(r, sa.exc.OperationalError) for r in results), results
    assert durable_ids(sqlite_store) == {"ftjob-first"}
    await sqlite_store.record("job", "ftjob-after", "openai", None, None, "queued", None)
    assert durable_ids(sqlite_store) == {"ftjob-first", "ftjob-after"}


async def test_request_log_and_records_go_through_the_same_writer(sqlite_store: Store) -> None:
    entry = dict(ts=1.5, trace_id="t", key_id="key-a", provider="openai", operation="list_jobs", method="GET",
                 path="/v1/fine_tuning/jobs", status=201, upstream_status=202, latency_ms=1.25)
    sqlite_store._log_queue.extend([entry, entry])
    await asyncio.gather(sqlite_store.flush_log(),
                         sqlite_store.record("job", "ftjob-x", "openai", None, None, "queued", None))
    logged = await sqlite_store.recent_requests()
    assert len(logged) == 2 and "ftjob-x" in durable_ids(sqlite_store)
    assert {k: v for k, v in logged[0].items() if k != "id"} == entry  # every column where it belongs


async def test_an_expired_keys_cache_is_refreshed_by_one_query(sqlite_store: Store) -> None:
    """Every request of an open gateway asks whether any key exists; when the 1 s cache runs out, the
    requests in flight share one query instead of queueing 64 of them for the pool (the c=64 p99)."""
    reader = sqlite_store._reader
    assert reader is not None
    queries: list[str] = []
    real = reader.fetchall

    async def counting(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        queries.append(sql)
        rows = await real(sql, params)
        await asyncio.sleep(0.01)  # answered late: every caller finds the refresh in flight
        return rows

    reader.fetchall = counting  # type: ignore[method-assign]
    assert await asyncio.gather(*(sqlite_store.keys_exist() for _ in range(64))) == [False] * 64
    assert len(queries) == 1
    # A key created while a refresh is in flight is seen by every later caller at once.
    sqlite_store._any_keys = None
    stale = asyncio.ensure_future(sqlite_store.keys_exist())
    await asyncio.sleep(0)
    await sqlite_store.create_key("k", ["*"])
    assert await sqlite_store.keys_exist() is True
    await stale
    assert await sqlite_store.keys_exist() is True


async def test_records_made_together_on_every_database(store: Store) -> None:
    """SQLite (the writer thread: records made together share transactions) and PostgreSQL (one transaction
    per record on the pool): each record is visible to another instance once its caller has its answer,
    and one whose hook fails fails alone."""
    other = await Store.open(store.url, store.box)  # another gateway instance on the same database
    missing: list[str] = []

    async def create(i: int) -> None:
        job_id = f"ftjob-g{i}"
        await store.record("job", job_id, "openai", None, "key-a", "validating_files", {"id": job_id})
        found = await other.lookup("job", job_id)
        if found is None or found.key_id != "key-a":
            missing.append(job_id)

    def hook(_tx: Tx, changes: list[StatusChange]) -> None:
        if any(c.id == "ftjob-g45" for c in changes):
            raise RuntimeError("hook failed")

    try:
        await asyncio.gather(*(create(i) for i in range(32)))
        writer = store._writer
        if store.url.startswith("sqlite"):
            assert writer is not None and writer.works == 32 and writer.transactions < 16, (writer.transactions,
                                                                                             writer.works)
        store.on_status("job", hook)
        results = await asyncio.gather(*(create(i) for i in range(40, 48)), return_exceptions=True)
    finally:
        await other.close()
    assert [i for i, r in enumerate(results) if r is not None] == [5] and isinstance(results[5], RuntimeError)
    assert missing == []
    assert await store.lookup("job", "ftjob-g45") is None
