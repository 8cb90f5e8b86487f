"""At-least-once delivery of the outbox: claim due deliveries under a lease, sign, POST, record.

Each delivery has a stable ``webhook-id`` (its row id) and fixed body bytes; every attempt is signed
with its own ``webhook-timestamp`` (receivers refuse one older than 5 minutes). A 2xx answer delivers
it; anything else — a redirect included, since none is followed — is retried with exponential back-off
and full jitter, until ``max_age_hours`` after the change, then it is marked failed. Instances sharing a
database claim deliveries with a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL); a claim whose
instance died is retaken when its lease runs out, so a delivery may arrive twice (same webhook-id) but
is marked delivered once: only the update that finds it still pending does it.

The receiver's URL was checked like a custom host when it was registered; every attempt connects
through the upstream's guarded pool (no trusted host), whose resolver refuses private, link-local and
metadata addresses unless the operator lists them. Nothing of the body, the secret or the receiver's
answer is logged: the log keeps status, latency and a short reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tunegate.config import RetryPolicy, Timeouts
from tunegate.errors import APIError
from tunegate.store import Store
from tunegate.store.schema import webhook_deliveries, webhook_events
from tunegate.upstream import CallPolicy, Upstream
from tunegate.webhooks import signing
from tunegate.webhooks.registry import Endpoints
from tunegate.webhooks.settings import WebhookSettings

log = logging.getLogger("tunegate.webhooks")
USER_AGENT = "tunegate-webhooks/0.1"
ANSWER_BYTES = 64 * 1024  # of a receiver's answer, read and dropped


@dataclass
class Attempt:
    id: str
    endpoint_id: str
    attempts: int
    created_at: float
    body: bytes


def retry_delay(attempts: int, settings: WebhookSettings) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: exponential, full jitter."""
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** min(attempts - 1, 30))
    return random.uniform(ceiling / 2, ceiling)


class Deliverer:
    def __init__(self, store: Store, settings: WebhookSettings, upstream: Upstream, instance: str) -> None:
        self.store = store
        self.settings = settings
        self.upstream = upstream
        self.instance = instance
        self.endpoints = Endpoints(store)
        self.stats = {"attempts": 0, "delivered": 0, "failed_attempts": 0}
        self._wake = asyncio.Event()

    def policy(self) -> CallPolicy:
        seconds = self.settings.timeout_seconds
        # trusted_hosts stays empty: every receiver is reached through the guarded pool.
        return CallPolicy(timeouts=Timeouts(connect=min(5.0, seconds), first_byte=seconds, idle=seconds),
                          retry=RetryPolicy(attempts=1), max_answer_bytes=ANSWER_BYTES)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                while await self.round():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database briefly away: try again next tick
                log.warning("webhook delivery round failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.tick_seconds)
            self._wake.clear()

    async def round(self) -> bool:
        """Claim and attempt the due deliveries; True when a full batch was claimed (more may be due)."""
        claimed = await self.claim(self.settings.concurrency)
        if claimed:
            await asyncio.gather(*(self.attempt(a) for a in claimed))
        return len(claimed) >= self.settings.concurrency

    async def claim(self, limit: int) -> list[Attempt]:
        now = time.time()
        d = webhook_deliveries.c
        due = (sa.select(d.id).where(d.state == "pending", d.next_attempt_at <= now,
                                     sa.or_(d.lease_until.is_(None), d.lease_until < now))
               .order_by(d.next_attempt_at).limit(limit).with_for_update(skip_locked=True))
        async with self.store.engine.begin() as conn:
            ids = [r[0] for r in await conn.execute(due)]
            if not ids:
                return []
            # The lease is only taken where it is still free: on SQLite (no row locks) this compare-and-set
            # is what keeps two claimers apart.
            taken = [r[0] for r in await conn.execute(
                webhook_deliveries.update().where(d.id.in_(ids), d.state == "pending",
                                                  sa.or_(d.lease_until.is_(None), d.lease_until < now))
                .values(lease_owner=self.instance, lease_until=now + self.settings.lease_seconds)
                .returning(d.id))]
            if not taken:
                return []
            rows = await conn.execute(sa.select(d.id, d.endpoint_id, d.attempts, d.created_at, webhook_events.c.payload)
                                      .join(webhook_events, webhook_events.c.id == d.event_id).where(d.id.in_(taken)))
            return [Attempt(r[0], r[1], r[2], r[3], r[4].encode()) for r in rows]

    async def attempt(self, attempt: Attempt) -> None:
        target = await self.endpoints.secret(attempt.endpoint_id)
        if target is None:  # the endpoint was deleted meanwhile
            return
        status, error, latency = await self.send(*target, attempt.id, attempt.body)
        await self.record(attempt, status, error, latency)

    async def send_once(self, endpoint_id: str, webhook_id: str, body: bytes) -> tuple[int | None, str | None]:
        """One signed POST outside the outbox (``/v1/webhooks/{id}/test``): the receiver's status, if any,
        and why the attempt failed (None for a 2xx)."""
        target = await self.endpoints.secret(endpoint_id)
        if target is None:
            return None, "endpoint_deleted"
        status, error, _latency = await self.send(*target, webhook_id, body)
        return status, error

    async def send(self, url: str, secret: str, webhook_id: str, body: bytes) -> tuple[int | None, str | None, float]:
        """(receiver's status, why it failed or None, milliseconds) of one attempt, signed now."""
        status, error, started = None, None, time.perf_counter()
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json",
                   **signing.headers(secret, webhook_id, int(time.time()), body)}
        self.stats["attempts"] += 1
        try:
            response = await self.upstream.request("POST", url, self.policy(), headers=headers, data=body)
            status = response.status
            if not 200 <= status < 300:
                error = "redirect (not followed)" if 300 <= status < 400 else f"HTTP {status}"
        except APIError as exc:  # unreachable, timed out, refused address, answer too large
            error = (exc.code or "upstream_error")[:200]
        except Exception as exc:
            # A stored URL the HTTP client cannot even build a request for (one saved before URLs were
            # checked, e.g. port 99999): a failed attempt like any other, not a failed delivery round or
            # a 500 on /test. The exception's type only: its message may quote the URL and its userinfo.
            error = f"request_failed ({type(exc).__name__})"[:200]
        return status, error, (time.perf_counter() - started) * 1000

    async def record(self, attempt: Attempt, status: int | None, error: str | None, latency_ms: float) -> None:
        now = time.time()
        d = webhook_deliveries.c
        common: dict[str, Any] = dict(attempts=d.attempts + 1, last_attempt_at=now, last_status=status,
                                      last_error=error, latency_ms=round(latency_ms, 3), lease_owner=None,
                                      lease_until=None)
        if error is None:
            values = dict(common, state="delivered", delivered_at=now)
            self.stats["delivered"] += 1
        else:
            self.stats["failed_attempts"] += 1
            expired = now - attempt.created_at >= self.settings.max_age_hours * 3600
            values = dict(common, state="failed" if expired else "pending",
                          next_attempt_at=now + retry_delay(attempt.attempts + 1, self.settings))
        async with self.store.engine.begin() as conn:
            # Only a delivery still pending changes: a second instance that also sent it (its lease ran
            # out meanwhile) cannot mark it delivered twice, nor undo the delivered mark.
            await conn.execute(webhook_deliveries.update().where(d.id == attempt.id, d.state == "pending")
                               .values(**values))
