"""The outbox hook (tunegate/webhooks/outbox.py) on every database: which jobs it enrols for the watcher,
the events it writes for jobs it does not enrol, a stale sighting after the end, and the deliverer's
wake-up from the writer thread."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from tunegate.store import Store
from tunegate.store.schema import job_transitions, job_watch, webhook_events
from tunegate.webhooks.outbox import Outbox, pollable
from tunegate.webhooks.registry import Endpoints
from tunegate.webhooks.settings import WatchSettings


async def _rows(store: Store, query: sa.Select) -> list[tuple]:  # type: ignore[type-arg]
    async with store.engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(query)]


def test_what_the_watcher_can_poll() -> None:
    assert pollable("openai", "oa")  # a stored connection
    assert pollable("local", None)  # jobs that live in the gateway
    assert not pollable("openai", None)  # a caller's own provider key: nothing stored to poll with
    assert not pollable("no-such-provider", None)


async def test_only_pollable_jobs_are_enrolled_and_every_job_gets_its_events(store: Store) -> None:
    woken = asyncio.Event()
    store.on_status("job", Outbox(WatchSettings(), woken.set).on_job_status)
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
    store.on_status("job", Outbox(WatchSettings()).on_job_status)
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
    store.on_status("job", Outbox(WatchSettings()).on_job_status)
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
