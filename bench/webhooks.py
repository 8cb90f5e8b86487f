"""Benchmark of issue 19: the job watcher's upstream calls per job per hour, and the delivery latency
from a status change to the receiver's receipt.

1. Calls per job per hour: jobs on a stand-in whose status follows the clock (validating 5 min, queued
   15 min, running 60 min, then succeeded), watched with the *default* intervals and back-off, with all
   times scaled down by --scale (time ratios, and so calls per hour, are unchanged by the scaling).
2. Delivery latency: jobs run to the end under fast polling; for each `succeeded` event, the time from
   the change being recorded (the outbox row's created_at) to the receiver's receipt.

    .venv/bin/python bench/webhooks.py [--jobs 10] [--scale 360] [--json bench/results/webhooks.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from tests.gateway import Gateway  # noqa: E402
from tests.standins.openai_like import ServerThread, StandIn  # noqa: E402
from tests.webhooks.helpers import Receiver, create_job, prepare, register  # noqa: E402
from tunegate.store.schema import webhook_events  # noqa: E402
from tunegate.webhooks.settings import WatchSettings, WebhookSettings  # noqa: E402

PHASES = [("validating_files", 5 * 60), ("queued", 15 * 60), ("running", 60 * 60)]  # seconds, unscaled


class Timed(StandIn):
    """A job's status follows its age (scaled), not the number of retrieves."""

    scale: float = 1.0

    def advance(self, job: dict[str, Any]) -> None:
        age = (time.time() - job["_t0"]) * self.scale
        for status, length in PHASES:
            if age < length:
                job["status"] = status
                return
            age -= length
        if job["status"] != "succeeded":
            job["status"] = "running"
            super().advance(job)  # running -> succeeded, with the result file

    async def create_job(self, request: Any) -> Any:
        response = await super().create_job(request)
        newest = max(self.jobs)
        self.jobs[newest]["_t0"] = time.time()
        return response


def calls_per_job_hour(jobs: int, scale: float) -> dict[str, Any]:
    defaults = WatchSettings()
    watch = defaults.model_copy(update={
        "tick_seconds": 0.02, "intervals": {k: v / scale for k, v in defaults.intervals.items()},
        "default_interval_seconds": defaults.default_interval_seconds / scale,
        "max_interval_seconds": defaults.max_interval_seconds / scale,
        "error_backoff_seconds": defaults.error_backoff_seconds / scale})
    s = Timed()
    s.scale = scale
    lifetime = sum(length for _, length in PHASES)
    with tempfile.TemporaryDirectory() as tmp, ServerThread(s.app()) as upstream:
        keys = prepare(Path(tmp) / "d", upstream.url, s.api_key)
        receiver = Receiver().up()
        try:
            with Gateway(Path(tmp) / "d", watch=watch) as gw:
                register(gw.url, keys["alice"], receiver.url)
                ids = [create_job(gw.url, keys["alice"]) for _ in range(jobs)]
                receiver.wait(jobs, timeout=lifetime / scale * 2 + 30)
                time.sleep(2 * defaults.max_interval_seconds / scale)  # no polls may follow the end
        finally:
            receiver.down()
    polls = {i: len([r for r in s.requests if r.method == "GET" and r.path == f"/fine_tuning/jobs/{i}"]) for i in ids}
    per_hour = [n / (lifetime / 3600) for n in polls.values()]
    return {"jobs": jobs, "lifetime_minutes": lifetime / 60, "scale": scale, "events": len(receiver.got),
            "polls_per_job": statistics.median(polls.values()), "calls_per_job_hour": round(statistics.median(per_hour), 2),
            "phases": {k: v for k, v in PHASES}, "intervals": defaults.intervals,
            "backoff_factor": defaults.backoff_factor, "max_interval_seconds": defaults.max_interval_seconds}


def delivery_latency(jobs: int) -> dict[str, Any]:
    watch = WatchSettings(tick_seconds=0.05, intervals={}, default_interval_seconds=0.1, backoff_factor=1.0)
    s = StandIn()
    with tempfile.TemporaryDirectory() as tmp, ServerThread(s.app()) as upstream:
        keys = prepare(Path(tmp) / "d", upstream.url, s.api_key)
        receiver = Receiver().up()
        try:
            with Gateway(Path(tmp) / "d", watch=watch, webhooks=WebhookSettings()) as gw:  # default delivery
                register(gw.url, keys["alice"], receiver.url)
                for _ in range(jobs):
                    create_job(gw.url, keys["alice"])
                receiver.wait(jobs, timeout=60)

                async def created(store: Any) -> dict[str, float]:
                    async with store.engine.connect() as conn:
                        rows = await conn.execute(sa.select(webhook_events.c.id, webhook_events.c.created_at))
                        return {r[0]: r[1] for r in rows}

                made = gw.with_store(created)
        finally:
            receiver.down()
    latencies = sorted((r.at - made[json.loads(r.body)["id"]]) * 1000 for r in receiver.got)
    return {"events": len(latencies), "p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1), "max_ms": round(latencies[-1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--scale", type=float, default=360.0, help="clock speed-up of the calls-per-hour run")
    parser.add_argument("--json", type=Path, default=Path("bench/results/webhooks.json"))
    args = parser.parse_args()
    result = {"watcher": calls_per_job_hour(args.jobs, args.scale), "delivery": delivery_latency(args.jobs * 2)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
