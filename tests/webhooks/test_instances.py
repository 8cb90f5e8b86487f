"""Several gateway instances on one database: each job is polled by one instance at a time (leases), one
event per change even when instances record the same status at once, and a dead instance's jobs are
taken over once its leases expire."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.gateway import _TEST_FERNET_KEY, Gateway
from tests.standins.openai_like import StandIn
from tests.stores import POSTGRES, _reset_postgres
from tests.webhooks.helpers import FAST_HOOKS, FAST_WATCH, Receiver, create_job, prepare, register
from tunegate.store import Store
from tunegate.store.schema import job_watch, webhook_deliveries
from tunegate.store.secretbox import SecretBox
from tunegate.webhooks.outbox import Outbox
from tunegate.webhooks.registry import Endpoints
from tunegate.webhooks.settings import WatchSettings


@pytest.mark.postgres
def test_two_instances_on_postgres_share_the_jobs(tmp_path: Path, standin: tuple[StandIn, str],
                                                  receiver: Receiver) -> None:
    if not POSTGRES:
        pytest.skip("TUNEGATE_TEST_POSTGRES_URL not set (bash .ci/run starts a server)")
    asyncio.run(_reset_postgres(POSTGRES))
    s, url = standin
    keys = prepare(tmp_path / "d", url, s.api_key, database_url=POSTGRES)
    watch = FAST_WATCH.model_copy(update={"max_jobs": 3, "lease_seconds": 5.0})
    polls: list[tuple[str, str]] = []
    with Gateway(tmp_path / "a", database_url=POSTGRES, watch=watch, webhooks=FAST_HOOKS) as a, \
            Gateway(tmp_path / "b", database_url=POSTGRES, watch=watch, webhooks=FAST_HOOKS) as b:
        for name, gw in (("a", a), ("b", b)):
            _spy(gw, name, polls)
        register(a.url, keys["alice"], receiver.url)
        jobs = [create_job((a, b)[i % 2].url, keys["alice"]) for i in range(8)]
        receiver.wait(8, timeout=40)
        time.sleep(1.5)  # room for a duplicate
    events = [json.loads(r.body) for r in receiver.got]
    assert sorted(e["data"]["id"] for e in events) == sorted(jobs)  # one succeeded event per job
    assert len({r.headers["webhook-id"] for r in receiver.got}) == 8
    pollers = {job: {who for who, j in polls if j == job} for job in jobs}
    assert all(len(who) == 1 for who in pollers.values()), pollers  # each job polled by one instance
    assert {who for who, _ in polls} == {"a", "b"}  # 8 jobs, 3 per instance at most: both took part
    for job in jobs:  # validating_files -> queued -> running -> succeeded: 3 polls, none after the end
        assert len([r for r in s.requests if r.method == "GET" and r.path == f"/fine_tuning/jobs/{job}"]) == 3


def _spy(gw: Gateway, name: str, polls: list[tuple[str, str]]) -> None:
    watcher = gw.app.state.webhooks.watcher
    inner = watcher.poll

    async def poll(job: Any) -> None:
        polls.append((name, job.job_id))
        await inner(job)

    watcher.poll = poll


async def test_same_status_recorded_at_once_is_one_event(store: Store) -> None:
    """Two stores (as two instances) record the same end of a job concurrently: one event, one delivery."""
    other = await Store.open(store.url, SecretBox(_TEST_FERNET_KEY))
    try:
        for s in (store, other):
            s.on_status("job", Outbox(WatchSettings()).on_job_status)
        endpoint, _secret = await Endpoints(store).create(None, "x", "http://127.0.0.1:9/x",
                                                          ["fine_tuning.job.succeeded", "fine_tuning.job.running"])
        await store.record("job", "ftjob-1", "openai", "c", None, "running", {"id": "ftjob-1"})
        snapshot = {"id": "ftjob-1", "status": "succeeded", "finished_at": 1700000000}
        await asyncio.gather(*(s.record("job", "ftjob-1", "openai", "c", None, "succeeded", snapshot)
                               for s in (store, other, store, other)))
        await other.record("job", "ftjob-1", "openai", "c", None, "running", {"id": "ftjob-1"})  # a stale sighting
        log = await Endpoints(store).deliveries(endpoint.id)
        async with store.engine.connect() as conn:
            watch = (await conn.execute(sa.select(job_watch))).mappings().all()
            pending = (await conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries))).scalar()
    finally:
        await other.close()
    assert sorted(d["type"] for d in log) == ["fine_tuning.job.running", "fine_tuning.job.succeeded"] and pending == 2
    assert [dict(w)["active"] for w in watch] == [False]  # the end stopped the watch


async def test_a_dead_instance_loses_its_leases(store: Store) -> None:
    from tunegate.webhooks.watcher import Watcher

    await store.record("job", "ftjob-2", "openai", "c", None, "running", {"id": "ftjob-2"})
    async with store.engine.begin() as conn:
        await conn.execute(job_watch.insert().values(job_id="ftjob-2", active=True, status="running", next_poll_at=0,
                                                     unchanged=0, failures=0, polls=0, updated_at=0))
    settings = WatchSettings(max_jobs=5, lease_seconds=0.3)
    first, second = (Watcher(store, None, settings, name) for name in ("first", "second"))  # type: ignore[arg-type]
    assert await first.claim() == 1
    assert await second.claim() == 0  # held, and renewed by the first on its next tick
    assert await first.claim() == 0
    await asyncio.sleep(0.4)  # the first stops renewing (killed)
    assert await second.claim() == 1
    async with store.engine.connect() as conn:
        assert (await conn.execute(sa.select(job_watch.c.lease_owner))).scalar() == "second"
