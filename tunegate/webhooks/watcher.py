"""The job watcher: every non-terminal job in the registry is polled in the background, on every
backend, and each status it sees goes through the registry's normal write (``remember`` → ``record``),
which updates the snapshot and, in the same transaction, the webhook outbox.

Work is shared through ``job_watch``: an instance holds a lease on up to ``max_jobs`` jobs, renews it
every tick, and polls each held job when it is due. An instance that stops (crash, kill -9) stops
renewing; once ``lease_seconds`` pass, another instance claims its jobs (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL; on SQLite, writers are serialised and the claim is a compare-and-set). So each job is polled
by one instance at a time.

Back-off follows the phase (``WatchSettings.intervals``): fast while validating, slower while training,
stretched by each poll that sees no change, and stopped at a terminal status. A 429 pauses every poll on
that provider connection until its Retry-After has passed; other failures back off exponentially.

Only jobs the gateway can reach on its own are polled: those with a stored connection, and those of
providers whose jobs live in the gateway itself (``keeps_files``: ``local``). A job made with a caller's
own provider key has no stored credential (the gateway never keeps those keys): it is not polled, but any
request that sees it still updates the registry and the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tunegate.api.common import remember
from tunegate.config import RetryPolicy, Timeouts
from tunegate.context import ContextResolver, RequestContext, new_trace_id
from tunegate.errors import APIError
from tunegate.providers import provider_named
from tunegate.providers.base import Page
from tunegate.store import Store, Tx
from tunegate.store.schema import job_watch, webhook_endpoints
from tunegate.upstream import retry_after_seconds
from tunegate.webhooks import outbox
from tunegate.webhooks.settings import WatchSettings

log = logging.getLogger("tunegate.watcher")
# Provider answers that mean "this job cannot be polled from here any more" (not a passing failure).
_GONE = {401: "credentials refused", 403: "not allowed", 404: "not found at the provider"}


@dataclass
class Due:
    job_id: str
    status: str | None
    unchanged: int
    failures: int


class Watcher:
    def __init__(self, store: Store, resolver: ContextResolver, settings: WatchSettings, instance: str) -> None:
        self.store = store
        self.resolver = resolver
        self.settings = settings
        self.instance = instance
        self.stats = {"polls": 0, "changes": 0, "rate_limited": 0, "errors": 0, "checkpoint_calls": 0}
        self._paused: dict[tuple[str, str | None], float] = {}  # (provider, connection) -> until (a 429)

    # ---- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database briefly away: try again next tick
                log.warning("job watcher tick failed: %s", type(exc).__name__)
            await asyncio.sleep(self.settings.tick_seconds)

    async def tick(self) -> int:
        """Renew and claim leases, then poll the held jobs that are due; the number polled."""
        await self.claim()
        due = await self.due()
        slots = asyncio.Semaphore(self.settings.concurrency)

        async def one(job: Due) -> None:
            async with slots:
                await self.poll(job)

        await asyncio.gather(*(one(j) for j in due))
        return len(due)

    async def claim(self) -> int:
        now = time.time()
        w = job_watch.c
        until = now + self.settings.lease_seconds
        async with self.store.engine.begin() as conn:
            await conn.execute(job_watch.update().where(w.lease_owner == self.instance, w.active.is_(True))
                               .values(lease_until=until))
            held = int((await conn.execute(sa.select(sa.func.count()).select_from(job_watch).where(
                w.lease_owner == self.instance, w.active.is_(True)))).scalar() or 0)
            room = self.settings.max_jobs - held
            if room <= 0:
                return 0
            free = sa.or_(w.lease_owner.is_(None), w.lease_until < now)
            ids = [r[0] for r in await conn.execute(
                sa.select(w.job_id).where(w.active.is_(True), free).order_by(w.next_poll_at).limit(room)
                .with_for_update(skip_locked=True))]
            if not ids:
                return 0
            result = await conn.execute(job_watch.update().where(w.job_id.in_(ids), w.active.is_(True), free)
                                        .values(lease_owner=self.instance, lease_until=until))
            return int(result.rowcount or 0)

    async def due(self) -> list[Due]:
        w = job_watch.c
        query = (sa.select(w.job_id, w.status, w.unchanged, w.failures)
                 .where(w.lease_owner == self.instance, w.active.is_(True), w.next_poll_at <= time.time())
                 .order_by(w.next_poll_at).limit(self.settings.concurrency * 4))
        async with self.store.engine.connect() as conn:
            return [Due(*r) for r in await conn.execute(query)]

    async def release(self) -> None:
        """Give the leases back at shutdown, so another instance takes the jobs over at once."""
        async with self.store.engine.begin() as conn:
            await conn.execute(job_watch.update().where(job_watch.c.lease_owner == self.instance)
                               .values(lease_owner=None, lease_until=None))

    # ---- one poll ----------------------------------------------------------------------------------

    async def poll(self, job: Due) -> None:
        recorded = await self.store.lookup("job", job.job_id)
        if recorded is None:
            await self._stop(job.job_id, "no longer in the registry")
            return
        provider = provider_named(recorded.provider)
        if recorded.connection is None and not (provider is not None and provider.keeps_files):
            await self._stop(job.job_id, "no stored connection to poll with")
            return
        scope = (recorded.provider, recorded.connection)
        if self._paused.get(scope, 0.0) > time.time():
            await self._schedule(job, job.status, next_at=self._paused[scope], failures=job.failures, polled=False)
            return
        try:
            ctx = await self.resolver.for_job(recorded, new_trace_id())
            self._limit(ctx)
            answer = await ctx.provider.retrieve_job(ctx, job.job_id)
            self.stats["polls"] += 1
            await remember(ctx, "job", answer)
            if isinstance(answer.get("status"), str):  # viewers read this snapshot (the snapshot route)
                await self.store.refresh("job", job.job_id, ctx.provider_name, ctx.connection, answer["status"],
                                         answer)
        except APIError as exc:
            await self._failed(job, scope, exc)
            return
        status = answer.get("status") if isinstance(answer.get("status"), str) else job.status
        if status != job.status:
            self.stats["changes"] += 1
        if status == "running":
            await self._checkpoints(ctx, job.job_id, recorded.key_id)
        unchanged = 0 if status != job.status else job.unchanged + 1
        await self._schedule(job, status, next_at=time.time() + self.interval(status, unchanged), failures=0,
                             unchanged=unchanged)

    def _limit(self, ctx: RequestContext) -> None:
        """One try per poll (a 429 is waited out here, not inside the call) and the watcher's timeout."""
        seconds = self.settings.timeout_seconds
        ctx.policy.retry = RetryPolicy(attempts=1)
        timeouts = ctx.policy.timeouts
        ctx.policy.timeouts = Timeouts(connect=min(timeouts.connect, seconds), first_byte=min(timeouts.first_byte,
                                       seconds), idle=min(timeouts.idle, seconds))

    def interval(self, status: str | None, unchanged: int) -> float:
        base = self.settings.intervals.get(status or "", self.settings.default_interval_seconds)
        stretched = min(self.settings.max_interval_seconds, base * self.settings.backoff_factor ** min(unchanged, 50))
        return stretched * random.uniform(0.9, 1.1)  # instances do not poll a provider in lockstep

    async def _failed(self, job: Due, scope: tuple[str, str | None], exc: APIError) -> None:
        now = time.time()
        if exc.status == 429:
            self.stats["rate_limited"] += 1
            wait = retry_after_seconds(exc.headers) or self.settings.rate_limited_seconds
            self._paused[scope] = max(self._paused.get(scope, 0.0), now + wait)
            await self._schedule(job, job.status, next_at=now + wait, failures=job.failures)
            return
        if exc.status in _GONE:
            await self._stop(job.job_id, f"{_GONE[exc.status]} ({exc.status})")
            return
        self.stats["errors"] += 1
        failures = job.failures + 1
        ceiling = min(self.settings.max_interval_seconds, self.settings.error_backoff_seconds * 2 ** min(failures, 20))
        log.info("watcher poll of a %s job failed: %s", scope[0], exc.code)
        await self._schedule(job, job.status, next_at=now + random.uniform(ceiling / 2, ceiling), failures=failures)

    async def _schedule(self, job: Due, status: str | None, *, next_at: float, failures: int,
                        unchanged: int | None = None, polled: bool = True) -> None:
        w = job_watch.c
        values: dict[str, object] = dict(status=status, next_poll_at=next_at, failures=failures, updated_at=time.time(),
                                         unchanged=job.unchanged if unchanged is None else unchanged)
        if polled:
            values["polls"] = w.polls + 1
        async with self.store.engine.begin() as conn:
            # Only while still active and ours: a terminal status (the outbox hook) or a lost lease wins.
            await conn.execute(job_watch.update().where(w.job_id == job.job_id, w.active.is_(True),
                                                        w.lease_owner == self.instance).values(**values))

    async def _stop(self, job_id: str, reason: str) -> None:
        async with self.store.engine.begin() as conn:
            await conn.execute(job_watch.update().where(job_watch.c.job_id == job_id).values(
                active=False, lease_owner=None, lease_until=None, reason=reason[:200], updated_at=time.time()))

    # ---- tunegate's own checkpoint events ----------------------------------------------------------

    async def _checkpoints(self, ctx: RequestContext, job_id: str, key_id: str | None) -> None:
        """``fine_tuning.job.checkpoint.created`` for each new checkpoint of a running job — one more
        upstream call per poll, made only while an endpoint of the job's owner subscribes to it."""
        if not await self._wanted(key_id, outbox.CHECKPOINT_EVENT):
            return
        self.stats["checkpoint_calls"] += 1
        with contextlib.suppress(APIError):  # a provider without checkpoints, or a passing failure
            listing = await ctx.provider.list_checkpoints(ctx, job_id, Page(limit=10))
            for checkpoint in listing.get("data") or []:
                if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("id"), str):
                    continue
                await self.store.write(functools.partial(_checkpoint_event, job_id=job_id, key_id=key_id,
                                                         checkpoint=checkpoint))

    async def _wanted(self, key_id: str | None, event_type: str) -> bool:
        owner = webhook_endpoints.c.key_id
        async with self.store.engine.connect() as conn:
            rows = await conn.execute(sa.select(webhook_endpoints.c.event_types).where(
                owner.is_(None) if key_id is None else owner == key_id))
            return any(event_type in (r[0] or []) for r in rows)


def _checkpoint_event(tx: Tx, job_id: str, key_id: str | None, checkpoint: dict[str, Any]) -> None:
    """The event of a checkpoint not announced before, in the registry's write transaction (the
    outbox's writes are sync: see Outbox)."""
    if outbox.mark_once(tx, job_id, "checkpoint:" + checkpoint["id"][:280]):
        now = time.time()
        data = {"id": job_id, "checkpoint_id": checkpoint["id"], "step_number": checkpoint.get("step_number"),
                "fine_tuned_model_checkpoint": checkpoint.get("fine_tuned_model_checkpoint")}
        outbox.emit(tx, job_id, key_id, outbox.CHECKPOINT_EVENT, data, int(checkpoint.get("created_at") or now), now)
