"""The store on SQLite and on a real PostgreSQL server (TUNEGATE_TEST_POSTGRES_URL, which .ci/run
sets after starting one): migrations, keys, encrypted connections, the registry, idempotency claims
under concurrency, managed-file pagination and the request log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.gateway import _TEST_FERNET_KEY
from tests.stores import POSTGRES, _reset_postgres
from tunegate.store import Store, Tx
from tunegate.store.secretbox import SecretBox


async def test_migrations_are_idempotent(store: Store) -> None:
    again = await Store.open(store.url, store.box)  # upgrade to head a second time: nothing to do
    assert await again.ping()
    await again.close()


async def test_keys(store: Store) -> None:
    assert not await store.keys_exist()
    key, full = await store.create_key("ci", ["conn-a"], allow_provider_keys=True)
    store._any_keys = None
    assert await store.keys_exist()
    found = await store.authenticate(full)
    assert found is not None and found.id == key.id and found.may_use("conn-a") and not found.may_use("conn-b")
    assert await store.authenticate(full[:-1] + ("x" if full[-1] != "x" else "y")) is None
    assert await store.authenticate("tg-nokey-secret") is None and await store.authenticate("sk-abc") is None
    assert await store.revoke_key(key.id)
    store._key_cache.clear()
    assert await store.authenticate(full) is None
    assert not await store.revoke_key(key.id)


async def test_connections_are_encrypted(store: Store) -> None:
    await store.add_connection("c1", "openai", {"api_key": "sk-super-secret-1"}, base_url="http://x",
                               options={"openai_project": "p"})
    got = await store.get_connection("c1")
    assert got is not None and got.secrets == {"api_key": "sk-super-secret-1"} and got.options["openai_project"] == "p"
    async with store.engine.connect() as conn:
        raw = (await conn.execute(sa.text("SELECT secrets FROM connections"))).scalar_one()
    assert "sk-super-secret-1" not in raw
    assert [c["secret_fields"] for c in await store.list_connections()] == [["api_key"]]
    assert await store.connections_for("openai") == ["c1"]
    assert await store.remove_connection("c1") and await store.get_connection("c1") is None


async def test_registry_first_owner_wins(store: Store) -> None:
    await store.record("job", "ftjob-1", "openai", "c1", "key-a", "queued", {"id": "ftjob-1"})
    # Another key's sighting neither takes the object nor rewrites what its owner sees (issue 17, finding 7).
    await store.record("job", "ftjob-1", "openai", "c1", "key-b", "running", {"id": "ftjob-1", "forged": True})
    found = await store.lookup("job", "ftjob-1")
    assert found is not None and found.key_id == "key-a" and found.status == "queued"
    assert found.snapshot == {"id": "ftjob-1"}
    # Neither does a sighting on another connection or provider, even by the owner.
    await store.record("job", "ftjob-1", "openai", "c2", "key-a", "failed", {"id": "ftjob-1", "other": 1})
    await store.record("job", "ftjob-1", "together-ai", "c1", "key-a", "failed", {"id": "ftjob-1", "other": 2})
    assert (await store.lookup("job", "ftjob-1")).status == "queued"  # type: ignore[union-attr]
    await store.record("job", "ftjob-1", "openai", "c1", "key-a", "running", {"id": "ftjob-1", "status": "running"})
    assert (await store.lookup("job", "ftjob-1")).status == "running"  # type: ignore[union-attr]
    # A sighting that does not claim leaves a new object unowned; the owner's own refresh still lands.
    await store.record("job", "ftjob-9", "openai", "c1", "key-b", "queued", None, claim=False)
    assert (await store.owners("job", ["ftjob-9"])) == {"ftjob-9": None}
    await store.record_many("job", [("ftjob-1", "succeeded", None), ("ftjob-2", "queued", None)], "openai", "c1",
                            "key-a")
    assert await store.owners("job", ["ftjob-1", "ftjob-2", "ftjob-3"]) == {"ftjob-1": "key-a", "ftjob-2": "key-a"}
    assert (await store.lookup("job", "ftjob-1")).status == "succeeded"  # type: ignore[union-attr]
    await store.forget("job", "ftjob-2")
    assert await store.lookup("job", "ftjob-2") is None


def _driver_sql(tx: Tx) -> tuple[list[tuple[Any, ...]], ...]:
    got = tx.rows("SELECT CAST(? AS INTEGER) + 1, CAST(? AS VARCHAR)", (1, "x"))
    none = tx.rows("INSERT INTO job_transitions (job_id, mark, created_at) VALUES (?, ?, ?)", ("j", "queued", 1.0))
    tx.execute_many("INSERT INTO job_transitions (job_id, mark, created_at) VALUES (?, ?, ?)",
                    [("j", "running", 2.0), ("j", "succeeded", 3.0)])
    tx.execute_many("INSERT INTO job_transitions (job_id, mark, created_at) VALUES (?, ?, ?)", [])
    return got, none, tx.rows("SELECT mark FROM job_transitions WHERE job_id = ? ORDER BY created_at", ("j",))


async def test_driver_sql_in_a_registry_write(store: Store) -> None:
    """store/driver.py's ``?``-marked statements in ``Store.write``, on each database's transaction (SQLite's
    writer thread; PostgreSQL's asyncpg pool, numbered marks): rows as tuples, none from a statement without
    rows, a driver error as SQLAlchemy's, and a work that raises leaves nothing behind."""
    got, none, marks = await store.write(_driver_sql)
    assert got == [(2, "x")] and none == [] and marks == [("queued",), ("running",), ("succeeded",)]

    def fails(tx: Tx) -> None:
        tx.rows("INSERT INTO job_transitions (job_id, mark, created_at) VALUES (?, ?, ?)", ("j", "x", 4.0))
        raise RuntimeError("the work failed")

    with pytest.raises(RuntimeError):
        await store.write(fails)
    with pytest.raises(sa.exc.IntegrityError):
        await store.write(lambda tx: tx.rows(
            "INSERT INTO job_transitions (job_id, mark, created_at) VALUES (?, ?, ?)", ("j", "queued", 5.0)))
    assert await store.write(lambda tx: tx.rows(
        "SELECT count(*) FROM job_transitions WHERE job_id = ?", ("j",))) == [(3,)]


@pytest.mark.parametrize("url", ["sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite:///",
                                 "postgresql://u@127.0.0.1/db", "postgresql+psycopg://u@127.0.0.1/db"])
async def test_a_database_that_cannot_hold_the_registry_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="SQLite file"):
        Store(url, SecretBox(_TEST_FERNET_KEY))


async def test_idempotency_claim_is_atomic(store: Store) -> None:
    results = await asyncio.gather(*(store.claim_idempotency("scope", "key-1", "hash") for _ in range(8)))
    assert sum(r is None for r in results) == 1  # exactly one claimant, whatever the interleaving
    await store.finish_idempotency("scope", "key-1", 200, b'{"id": "ftjob-1"}')
    done = await store.claim_idempotency("scope", "key-1", "hash")
    assert done is not None and done["state"] == "done" and bytes(done["body"]) == b'{"id": "ftjob-1"}'
    await store.release_idempotency("scope", "key-1")
    assert await store.claim_idempotency("scope", "key-1", "hash") is None


async def test_managed_file_pages(store: Store) -> None:
    for n in range(5):
        await store.add_managed_file(dict(id=f"file-tg{n}", key_id="k", filename=f"{n}.jsonl", purpose="fine-tune",
                                          bytes=n, sha256="0" * 64, location=f"file-tg{n}", report=None,
                                          created_at=1000 + n, expires_at=None))
    rows, more = await store.list_managed_files(limit=2, after=None, purpose=None, ascending=False, key_id="k")
    assert [r["id"] for r in rows] == ["file-tg4", "file-tg3"] and more
    rows, more = await store.list_managed_files(limit=2, after="file-tg1", purpose=None, ascending=False, key_id="k")
    assert [r["id"] for r in rows] == ["file-tg0"] and not more
    rows, _ = await store.list_managed_files(limit=10, after=None, purpose=None, ascending=True, key_id="other")
    assert rows == []
    await store.add_file_copy("0" * 64, "openai", None, "key-a", "file-remote")
    assert await store.file_copy("0" * 64, "openai", None, "key-a") == "file-remote"
    assert await store.file_copy("0" * 64, "openai", "conn", "key-a") is None
    # Another key never reuses it (issue 17, finding 12), nor does an open gateway.
    assert await store.file_copy("0" * 64, "openai", None, "key-b") is None
    assert await store.file_copy("0" * 64, "openai", None, None) is None


async def test_request_log(store: Store) -> None:
    for n in range(3):
        store.log_request(dict(ts=float(n), trace_id=f"t{n}", key_id=None, provider="openai", operation="list_jobs",
                               method="GET", path="/v1/fine_tuning/jobs", status=200, upstream_status=200,
                               latency_ms=1.5))
    await store.flush_log()
    assert [r["trace_id"] for r in await store.recent_requests()] == ["t2", "t1", "t0"]


@pytest.mark.postgres
def test_gateway_end_to_end_on_postgres(tmp_path: Path) -> None:
    """The whole gateway with its registry on PostgreSQL, as a scale-out deployment runs it."""
    import io

    import openai

    from tests.gateway import Gateway
    from tests.standins.openai_like import ServerThread, StandIn
    from tests.test_errors import TRAINING

    if not POSTGRES:
        pytest.skip("TUNEGATE_TEST_POSTGRES_URL not set (bash .ci/run starts a server)")
    asyncio.run(_reset_postgres(POSTGRES))
    standin = StandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "d", database_url=POSTGRES) as gw:
        sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=standin.api_key, max_retries=0, default_headers={
            "x-portkey-provider": "openai", "x-portkey-custom-host": upstream.url})
        f = sdk.files.create(file=("t.jsonl", io.BytesIO(TRAINING)), purpose="fine-tune")
        job = sdk.fine_tuning.jobs.create(training_file=f.id, model="gpt-4o-mini",
                                          extra_headers={"Idempotency-Key": "pg-1"})
        again = sdk.fine_tuning.jobs.create(training_file=f.id, model="gpt-4o-mini",
                                            extra_headers={"Idempotency-Key": "pg-1"})
        assert again.id == job.id and len(standin.jobs) == 1
        assert [j.id for j in sdk.fine_tuning.jobs.list()] == [job.id]
        assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        recorded = gw.with_store(lambda s: s.lookup("job", job.id))
        assert recorded is not None and recorded.status == "cancelled" and recorded.provider == "openai"


async def test_placement_cache_is_bounded(store: Store) -> None:
    store.PLACEMENTS_CACHED = 50  # type: ignore[misc]
    for n in range(120):
        await store.record("job", f"ftjob-{n}", "openai", None, "key-a", "queued",
                           {"id": f"ftjob-{n}", "big": "x" * 100})
    assert len(store._placements) == 50
    assert all(p.snapshot is None for p in store._placements.values())
    found = await store.placement("job", "ftjob-0")  # evicted long ago: read back from the database
    assert found is not None and found.key_id == "key-a" and found.provider == "openai"


async def test_placements_read_what_is_not_cached_in_one_query(store: Store) -> None:
    """placements (a create's model and files): the cached pairs from the cache, the rest in one query,
    the same answers as placement one by one, by kind as well as id."""
    await store.record("model", "ft:alice", "openai", "team", "key-a", None)
    await store.record("file", "file-1", "openai", None, "key-b", "processed")
    await store.record("file", "ft:alice", "openai", None, "key-c", "processed")  # same id, another kind
    store._placements.clear()
    await store.placement("file", "file-1")  # cached from here on
    queries = 0
    real_fetchall = store._reader.fetchall

    async def counted(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        nonlocal queries
        queries += sql.startswith("SELECT")
        return await real_fetchall(sql, params)

    store._reader.fetchall = counted  # type: ignore[method-assign]
    wanted = [("model", "ft:alice"), ("file", "file-1"), ("file", "file-nobody"), ("model", "ft:alice"),
              ("file", "ft:alice")]
    found = await store.placements(wanted)
    assert queries == 1
    assert set(found) == {("model", "ft:alice"), ("file", "file-1"), ("file", "ft:alice")}
    assert found[("model", "ft:alice")].key_id == "key-a" and found[("model", "ft:alice")].connection == "team"
    assert found[("file", "file-1")].key_id == "key-b"
    assert found[("file", "ft:alice")].key_id == "key-c"
    assert await store.placements([("model", "ft:alice"), ("file", "file-1")]) == {
        k: v for k, v in found.items() if k in {("model", "ft:alice"), ("file", "file-1")}}
    assert queries == 1  # all cached now
    assert await store.placements([]) == {}


async def test_a_written_once_row_is_read_once_a_while(store: Store) -> None:
    """lookup_written_once (a dataset's validation facts, asked by every create that names a file): a
    miss and a hit are each one query, then reused; this instance's own record or forget is seen at once,
    another instance's once the answer is older than WRITTEN_ONCE_SECONDS; the answers kept are bounded."""
    queries = 0
    real_fetchall = store._reader.fetchall

    async def counted(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        nonlocal queries
        queries += sql.startswith("SELECT")  # (on PostgreSQL the same pool also runs a record's upsert)
        return await real_fetchall(sql, params)

    store._reader.fetchall = counted  # type: ignore[method-assign]
    assert await store.lookup_written_once("dataset", "file-a") is None
    assert await store.lookup_written_once("dataset", "file-a") is None
    assert queries == 1
    await store.record("dataset", "file-a", "openai", None, "key-a", None, {"report": {"examples": 12}})
    found = await store.lookup_written_once("dataset", "file-a")
    assert found is not None and found.key_id == "key-a" and found.snapshot == {"report": {"examples": 12}}
    assert await store.lookup_written_once("dataset", "file-a") is found
    assert queries == 2
    await store.forget("dataset", "file-a")
    assert await store.lookup_written_once("dataset", "file-a") is None
    assert queries == 3

    other = await Store.open(store.url, store.box)  # another instance on the same database
    try:
        await other.record("dataset", "file-a", "openai", None, "key-b", None, {"report": {"examples": 3}})
        assert await store.lookup_written_once("dataset", "file-a") is None  # this instance's answer, kept
        store._written_once[("dataset", "file-a")] = (0.0, None)  # as if WRITTEN_ONCE_SECONDS had passed
        found = await store.lookup_written_once("dataset", "file-a")
        assert found is not None and found.key_id == "key-b"
    finally:
        await other.close()

    store.WRITTEN_ONCE_CACHED = 10  # type: ignore[misc]
    for n in range(25):
        await store.lookup_written_once("dataset", f"file-{n}")
    assert len(store._written_once) == 10 and ("dataset", "file-24") in store._written_once
    assert await store.lookup_written_once("dataset", "file-" + "x" * 10_000) is None  # asked, not kept
    assert ("dataset", "file-24") in store._written_once and len(store._written_once) == 10


async def test_postgres_pings_only_connections_left_idle(store: Store) -> None:
    """SQLAlchemy's engine (keys, connections, idempotency …): no round trip on every checkout
    (pool_pre_ping is off); a connection idle for a while in the pool is pinged before use, and a dead one
    replaced; one reused at once is not pinged. (The registry's own pool: tests/test_registry_pool.py.)"""
    if not store.url.startswith("postgresql"):
        pytest.skip("the idle ping is PostgreSQL's (SQLite has no server to lose)")
    assert await store.get_key("key-none") is None  # a pooled connection, just checked in

    await kill_other_connections(store.url)
    store.PING_AFTER_IDLE_SECONDS = 0.0  # every pooled connection counts as idle: pinged, found dead, replaced
    assert await store.get_key("key-none") is None
    await kill_other_connections(store.url)
    store.PING_AFTER_IDLE_SECONDS = 3600.0  # none counts as idle: the dead one is used, and that query fails
    with pytest.raises(sa.exc.DBAPIError):
        await store.get_key("key-none")
    assert await store.get_key("key-none") is None  # the pool dropped it: the next query reconnects


async def kill_other_connections(url: str) -> None:
    """Every server connection to the database but this one's, ended by the server (as a restart does);
    each termination waited for (PostgreSQL 14+)."""
    other = create_async_engine(url)
    try:
        async with other.begin() as conn:
            await conn.execute(sa.text("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                                       "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    finally:
        await other.dispose()


@pytest.mark.parametrize("hooked", [False, True], ids=["one-statement", "transaction"])
async def test_a_write_goes_on_when_its_caller_is_cancelled(store: Store, hooked: bool) -> None:
    """A job just created at the provider is recorded even if the client went away meanwhile: a record with
    no hook to run (one statement on PostgreSQL), and one with a hook (a transaction)."""
    if hooked:
        store.on_status("job", lambda tx, changes: None)  # no writes_for: it may write, so a transaction
    task = asyncio.ensure_future(store.record("job", "ftjob-orphan", "openai", None, "key-a", "queued", None))
    await asyncio.sleep(0)  # the write has started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        if (found := await store.lookup("job", "ftjob-orphan")) is not None:
            break
        await asyncio.sleep(0.01)
    assert found is not None and found.key_id == "key-a"
