"""The watcher's pacing: a 429's Retry-After pauses the connection's polls; intervals follow the phase
and stretch while nothing changes; a delivery still failing after max_age_hours is given up."""

from __future__ import annotations

import time
from pathlib import Path

from aiohttp import web

from tests.gateway import _TEST_FERNET_KEY, Gateway
from tests.standins.openai_like import ServerThread, StandIn
from tests.webhooks.helpers import FAST_HOOKS, FAST_WATCH, Receiver, create_job, prepare, register
from tunegate.store import Store
from tunegate.store.secretbox import SecretBox
from tunegate.webhooks.delivery import Attempt, Deliverer, retry_delay
from tunegate.webhooks.outbox import emit
from tunegate.webhooks.registry import Endpoints
from tunegate.webhooks.settings import WatchSettings, WebhookSettings
from tunegate.webhooks.watcher import Watcher


class Limited(StandIn):
    """The first job retrieve answers 429 with Retry-After: 2."""

    limited = True
    seen: list[float] = []

    async def get_job(self, request: web.Request) -> web.Response:
        self.seen.append(time.monotonic())
        if self.limited:
            self.limited = False
            return web.json_response({"error": {"message": "Rate limit reached", "type": "requests",
                                                 "param": None, "code": "rate_limit_exceeded"}}, status=429,
                                     headers={"Retry-After": "2"})
        return await super().get_job(request)


def test_retry_after_is_respected(tmp_path: Path, receiver: Receiver) -> None:
    s = Limited()
    s.seen = []
    with ServerThread(s.app()) as upstream:
        keys = prepare(tmp_path / "d", upstream.url, s.api_key)
        with Gateway(tmp_path / "d", watch=FAST_WATCH, webhooks=FAST_HOOKS) as gw:
            register(gw.url, keys["alice"], receiver.url)
            job_id = create_job(gw.url, keys["alice"])
            receiver.wait(1)
            stats = dict(gw.app.state.webhooks.watcher.stats)
    gets = [r for r in s.requests if r.method == "GET" and r.path == f"/fine_tuning/jobs/{job_id}"]
    assert len(gets) == 4 and stats["rate_limited"] == 1  # the 429, then the 3 polls of a normal life
    assert s.seen[1] - s.seen[0] >= 1.9  # the next poll waited out Retry-After (polls are 0.1 s apart otherwise)
    assert all(b - a < 1.5 for a, b in zip(s.seen[1:], s.seen[2:], strict=False))
    assert len(receiver.got) == 1


def test_intervals_follow_the_phase_and_stretch() -> None:
    settings = WatchSettings(intervals={"validating_files": 10, "running": 60}, backoff_factor=2,
                             max_interval_seconds=300, default_interval_seconds=30)
    w = Watcher(None, None, settings, "x")  # type: ignore[arg-type]
    assert 9 <= w.interval("validating_files", 0) <= 11
    assert 54 <= w.interval("running", 0) <= 66
    assert 108 <= w.interval("running", 1) <= 132
    assert w.interval("running", 10) <= 330  # capped
    assert 27 <= w.interval("queued", 0) <= 33  # not listed: the default


def test_retry_delays_grow_with_jitter_and_a_ceiling() -> None:
    s = WebhookSettings(retry_base_seconds=5, retry_max_seconds=3600)
    delays = [retry_delay(n, s) for n in range(1, 20)]
    assert 2.5 <= delays[0] <= 5 and 5 <= delays[1] <= 10 and all(d <= 3600 for d in delays)
    assert max(delays) >= 1800


async def test_a_delivery_older_than_max_age_is_given_up(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", SecretBox(_TEST_FERNET_KEY))
    try:
        endpoint, _ = await Endpoints(store).create(None, "x", "http://127.0.0.1:9/x", ["fine_tuning.job.failed"])
        await store.write(lambda tx: emit(tx, "ftjob-9", None, "fine_tuning.job.failed", {"id": "ftjob-9"}, 1,
                                          time.time()))
        deliverer = Deliverer(store, WebhookSettings(max_age_hours=72), None, "x")  # type: ignore[arg-type]
        row = (await Endpoints(store).deliveries(endpoint.id))[0]
        await deliverer.record(Attempt(row["id"], endpoint.id, 5, time.time() - 71 * 3600, b""), 503, "HTTP 503", 1.0)
        still = (await Endpoints(store).deliveries(endpoint.id))[0]
        await deliverer.record(Attempt(row["id"], endpoint.id, 6, time.time() - 73 * 3600, b""), 503, "HTTP 503", 1.0)
        given_up = (await Endpoints(store).deliveries(endpoint.id))[0]
        await deliverer.record(Attempt(row["id"], endpoint.id, 7, time.time(), b""), 200, None, 1.0)
        after = (await Endpoints(store).deliveries(endpoint.id))[0]
    finally:
        await store.close()
    assert still["state"] == "pending" and still["next_attempt_at"] > time.time()
    assert given_up["state"] == "failed" and given_up["attempts"] == 2
    assert after["state"] == "failed"  # a late success of a stale claim changes nothing
