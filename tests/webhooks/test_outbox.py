"""The outbox hook (tunegate/webhooks/outbox.py) on every database: which jobs it enrols for the watcher,
the events it writes for jobs it does not enrol, a stale sighting after the end, and the deliverer's
wake-up from the writer thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from tunegate.store import StatusChange, Store
from tunegate.store.schema import job_transitions, job_watch, webhook_events
from tunegate.webhooks.outbox import Outbox, pollable
from tunegate.webhooks.registry import Endpoints
from tunegate.webhooks.settings import WatchSettings


def _outbox(store: Store, wake: Callable[[], None] | None = None) -> Outbox:
    """The hook, registered as the gateway registers it (webhooks/__init__.py), with its ``writes_for``."""
    outbox = Outbox(WatchSettings(), wake)
    store.on_status("job", outbox.on_job_status, outbox.writes_for)
    return outbox


async def _rows(store: Store, query: sa.Select) -> list[tuple]:  # type: ignore[type-arg]
    async with store.engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(query)]


def test_what_the_watcher_can_poll() -> None:
    assert pollable("openai", "oa")  # a stored connection
    assert pollable("local", None)  # jobs that live in the gateway
    assert not pollable("openai", None)  # a caller's own provider key: nothing stored to poll with
    assert not pollable("no-such-provider", None)


class _Recording:
    """A transaction that answers every statement with one row and keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        self.sent.append(sql)
        return [("endpoint", "[]")] if sql.startswith("SELECT") else [("ftjob-1",)]

    def execute_many(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        self.sent.append(sql)


@pytest.mark.parametrize("status", ["validating_files", "queued", "running", "paused", "succeeded", "failed",
                                    "cancelled", "some_new_status"])
@pytest.mark.parametrize(("provider", "connection"), [("openai", None), ("openai", "oa"), ("local", None)])
def test_writes_for_is_true_wherever_the_hook_writes(status: str, provider: str, connection: str | None) -> None:
    """The store runs a record as one statement when ``writes_for`` says the hook writes nothing: it must
    never say so of a change the hook would write for (the hook is given a transaction where every
    statement finds something, its most writing case)."""
    tx = _Recording()
    Outbox(WatchSettings()).on_job_status(tx, [StatusChange("job", "ftjob-1", provider, connection, None, status,
                                                            None)])
    assert Outbox.writes_for(status, provider, connection) == bool(tx.sent)


async def test_only_pollable_jobs_are_enrolled_and_every_job_gets_its_events(store: Store) -> None:
    woken = asyncio.Event()
    _outbox(store, woken.set)
    await Endpoints(store).create(None, "x", "http://127.0.0.1:9/x", ["fine_tuning.job.running"])
    await store.record("job", "ftjob-own-key", "openai", None, None, "validating_files", {"id": "ftjob-own-key"})
    await store.record("job", "ftjob-stored", "openai", "oa", None, "validating_files", {"id": "ftjob-stored"})
    await store.record("job", "ftjob-local", "local", None, None, "queued", {"id": "ftjob-local"})
    watched = await _rows(store, sa.select(job_watch.c.job_id, job_watch.c.active).order_by(job_watch.c.job_id))
    assert watched == [("ftjob-local", True), ("ftjob-stored", True)]
    # Not polled, but any request that sees it still writes its transitions and events.
    await store.record("job", "ftjob-own-key", "openai", None, None, "running", {"id": "ftjob-own-key"})
    events = await _rows(store, sa.select(webhook_events.c.job_id, webhook_events.c.type))
    assert events == [("ftjob-own-key", "fine_tuning.job.running")]
    await asyncio.wait_for(woken.wait(), 2)  # the hook ran off the loop; the deliverer is told on it
    assert not await _rows(store, sa.select(job_watch).where(job_watch.c.job_id == "ftjob-own-key"))


async def test_a_stale_sighting_after_the_end_is_not_announced(store: Store) -> None:
    _outbox(store)
    await Endpoints(store).create(None, "x", "http://127.0.0.1:9/x",
                                  ["fine_tuning.job.running", "fine_tuning.job.failed"])
    await store.record("job", "ftjob-1", "openai", "oa", None, "failed", {"id": "ftjob-1"})
    await store.record("job", "ftjob-1", "openai", "oa", None, "running", {"id": "ftjob-1"})
    events = await _rows(store, sa.select(webhook_events.c.type))
    assert events == [("fine_tuning.job.failed",)]
    marks = await _rows(store, sa.select(job_transitions.c.mark))
    assert marks == [("failed",)]
    assert await _rows(store, sa.select(job_watch.c.active)) == []  # ended before it was ever enrolled


async def test_a_status_with_nothing_to_follow_writes_nothing(store: Store) -> None:
    """A job made with a caller's own key, in a status without an event: no mark, no watch, no event (the
    common create); its later statuses are announced as usual."""
    _outbox(store)
    await Endpoints(store).create(None, "x", "http://127.0.0.1:9/x",
                                  ["fine_tuning.job.running", "fine_tuning.job.succeeded"])
    await store.record("job", "ftjob-1", "openai", None, None, "validating_files", {"id": "ftjob-1"})
    await store.record("job", "ftjob-1", "openai", None, None, "queued", {"id": "ftjob-1"})
    assert await _rows(store, sa.select(job_transitions.c.mark)) == []
    for status in ("running", "succeeded", "running"):  # the last one stale: after the end
        await store.record("job", "ftjob-1", "openai", None, None, status, {"id": "ftjob-1"})
    events = await _rows(store, sa.select(webhook_events.c.type).order_by(webhook_events.c.created_at))
    assert events == [("fine_tuning.job.running",), ("fine_tuning.job.succeeded",)]
    assert sorted(await _rows(store, sa.select(job_transitions.c.mark))) == [("running",), ("succeeded",)]


async def test_a_create_the_outbox_writes_nothing_for_is_one_statement(store: Store) -> None:
    """On PostgreSQL such a record is its upsert alone, in autocommit (no BEGIN, no COMMIT); one the outbox
    writes for is still one transaction with the outbox's rows. On SQLite both go through the writer."""
    _outbox(store)
    registry = store._registry
    transactions = 0
    if registry is not None:
        real_write = registry.write

        async def counted(work: Any) -> Any:
            nonlocal transactions
            transactions += 1
            return await real_write(work)

        registry.write = counted  # type: ignore[method-assign]
    await store.record("job", "ftjob-own-key", "openai", None, "key-a", "validating_files", {"id": "ftjob-own-key"})
    assert transactions == 0
    found = await store.lookup("job", "ftjob-own-key")
    assert found is not None and (found.key_id, found.status) == ("key-a", "validating_files")
    await store.record("job", "ftjob-stored", "openai", "oa", "key-a", "validating_files", {"id": "ftjob-stored"})
    assert transactions == (1 if registry is not None else 0)
    assert await _rows(store, sa.select(job_watch.c.job_id)) == [("ftjob-stored",)]
    # Another key's sighting of the own-key job writes nothing, as before (the upsert's guard).
    await store.record("job", "ftjob-own-key", "openai", None, "key-b", "queued", None, claim=False)
    found = await store.lookup("job", "ftjob-own-key")
    assert found is not None and (found.key_id, found.status) == ("key-a", "validating_files")
