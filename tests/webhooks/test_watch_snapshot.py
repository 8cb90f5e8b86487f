"""`GET /v1/tunegate/jobs/{id}/snapshot` and `tunegate jobs watch` on it (issue 19): viewers read the job
watcher's snapshot, so N of them cost the provider nothing beyond the watcher's own polls; ownership as a
retrieve; a job not watched, or watched late or failing, is read live. Real sockets throughout: the
gateway under uvicorn, the OpenAI stand-in (tests/standins/openai_like.py) under aiohttp."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from aiohttp import web
from rich.console import Console

from tests.gateway import _TEST_FERNET_KEY, Gateway
from tests.standins.openai_like import ServerThread, StandIn
from tests.webhooks.helpers import create_job, eventually, prepare
from tunegate.client.http import Client
from tunegate.client.watch import Watcher
from tunegate.store import Store
from tunegate.store.schema import job_watch
from tunegate.store.secretbox import SecretBox
from tunegate.webhooks.settings import WatchSettings

# Polls every 0.15 s, whatever the phase (the default pacing would make these tests minutes long).
WATCH = WatchSettings(tick_seconds=0.05, intervals={}, default_interval_seconds=0.15, backoff_factor=1.0,
                      lease_seconds=5.0)
OFF = WatchSettings(enabled=False)  # the outbox still enrols jobs in job_watch; nobody polls them
VIEWERS = 4


@dataclass
class Clocked(StandIn):
    """Jobs move on with time, not per retrieve (so only what reaches the stand-in could drive them):
    validating, queued, running with `trained_tokens` growing every 0.4 s, then succeeded. (OpenAI itself
    reports `trained_tokens` only at the end; tunegate's `local` jobs report it as they train, see
    tunegate/localjobs/scheduler.py — this stand-in does the same so the snapshot's progress shows.)"""

    phases: tuple[float, float, float] = (0.4, 0.8, 2.8)  # ends of validating_files, queued, running
    born: dict[str, float] = field(default_factory=dict)
    served: list[tuple[Any, Any]] = field(default_factory=list)  # (status, trained_tokens) of each job read

    def advance(self, job: dict[str, Any]) -> None:
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return
        age = time.monotonic() - self.born.setdefault(job["id"], time.monotonic())
        validating, queued, running = self.phases
        if age >= running:
            job["status"] = "running"
            super().advance(job)  # -> succeeded: fine_tuned_model, trained_tokens, result file
        elif age >= queued:
            job.update(status="running", trained_tokens=1000 * (1 + int((age - queued) / 0.4)))
        else:
            job["status"] = "validating_files" if age < validating else "queued"

    async def get_job(self, request: web.Request) -> web.Response:
        answer = await super().get_job(request)
        job = self.jobs.get(request.match_info["id"])
        if job is not None:
            self.served.append((job["status"], job.get("trained_tokens")))
        return answer


def calls(s: StandIn, job_id: str, suffix: str = "") -> int:
    return sum(1 for r in s.requests if r.method == "GET" and r.path == f"/fine_tuning/jobs/{job_id}{suffix}")


def snapshot(gw: Gateway, key: str, job_id: str, **headers: str) -> requests.Response:
    return requests.get(f"{gw.url}/v1/tunegate/jobs/{job_id}/snapshot", timeout=10,
                        headers={"Authorization": f"Bearer {key}", **headers})


def set_watch(gw: Gateway, job_id: str, **values: Any) -> None:
    async def write(store: Store) -> None:
        async with store.engine.begin() as conn:
            await conn.execute(job_watch.update().where(job_watch.c.job_id == job_id).values(**values))

    gw.with_store(write)


def leased(gw: Gateway, job_id: str) -> bool:
    async def read(store: Store) -> bool:
        async with store.engine.connect() as conn:
            row = (await conn.execute(job_watch.select().where(job_watch.c.job_id == job_id))).mappings().first()
        return row is not None and row["lease_owner"] is not None

    return gw.with_store(read)


def test_viewers_cost_no_upstream_call_beyond_the_watcher(tmp_path: Path) -> None:
    s = Clocked()
    with ServerThread(s.app()) as upstream:
        keys = prepare(tmp_path / "d", upstream.url, s.api_key)
        with Gateway(tmp_path / "d", watch=WATCH) as gw:
            job_id = create_job(gw.url, keys["alice"])
            assert eventually(lambda: leased(gw, job_id), timeout=10)
            viewers = [Watcher(Client(url=gw.url, api_key=keys["alice"]), job_id, Console(file=io.StringIO()))
                       for _ in range(VIEWERS)]
            codes: list[int] = []
            threads = [threading.Thread(target=lambda v=v: codes.append(v.run(0.02, 30))) for v in viewers]
            probes: list[tuple[str, Any, Any, int]] = []  # a script reading the route as the job runs
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                answer = snapshot(gw, keys["alice"], job_id)
                job = answer.json()
                probes.append((answer.headers["x-tunegate-source"], job["status"], job["trained_tokens"],
                               int(answer.headers.get("x-tunegate-snapshot-age", "-1"))))
                time.sleep(0.05)
            for t in threads:
                t.join(30)
            polls = gw.app.state.webhooks.watcher.stats["polls"]

    assert codes == [0] * VIEWERS
    reads = [v.reads for v in viewers]
    print(f"watcher polls {polls}; upstream job reads {calls(s, job_id)}, event reads {calls(s, job_id, '/events')};"
          f" viewers {reads}; probe reads {len(probes)}")  # pytest -s
    # Every job read that reached the provider was one of the watcher's polls; the viewers' hundreds of
    # reads and the probe's were all snapshots.
    assert calls(s, job_id) == polls
    assert all(r["live"] == 0 and r["snapshot"] >= 20 for r in reads), reads
    # The watcher's polls refresh the snapshot while the status stays the same: progress shows, and the
    # age stays within about one poll (0.15 s; whole seconds, and a loaded machine, give it slack).
    assert len({p[2] for p in probes if p[1] == "running"}) >= 2, probes
    assert {p[0] for p in probes} == {"snapshot"} and all(0 <= p[3] <= 2 for p in probes), probes
    # Events: read once per change the watcher saw (status or trained_tokens), not once per poll.
    changes = len(set(s.served)) + 1  # + the create answer (validating_files)
    assert all(2 <= r["events"] <= changes for r in reads), (reads, changes)
    assert calls(s, job_id, "/events") == sum(r["events"] for r in reads)
    for v in viewers:
        assert v.job["status"] == "succeeded" and v.job["fine_tuned_model"]
        assert "Fine-tuning job started" in {e["message"] for e in v.events.values()}


async def test_refresh_rewrites_only_the_objects_own_placement_and_status(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", SecretBox(_TEST_FERNET_KEY))
    try:
        await store.record("job", "ftjob-1", "openai", "oa", "key-a", "running", {"status": "running", "n": 1})
        await store.refresh("job", "ftjob-1", "openai", "other", "running", {"status": "running", "n": 2})
        await store.refresh("job", "ftjob-1", "together-ai", "oa", "running", {"status": "running", "n": 3})
        await store.refresh("job", "ftjob-1", "openai", "oa", "queued", {"status": "queued", "n": 4})
        untouched = await store.lookup("job", "ftjob-1")
        await store.refresh("job", "ftjob-1", "openai", "oa", "running", {"status": "running", "n": 5})
        refreshed = await store.lookup("job", "ftjob-1")
    finally:
        await store.close()
    assert untouched is not None and untouched.snapshot == {"status": "running", "n": 1}
    assert refreshed is not None and refreshed.snapshot == {"status": "running", "n": 5}
    assert refreshed.status == "running" and refreshed.key_id == "key-a"


def test_a_key_cannot_read_another_keys_snapshot(tmp_path: Path) -> None:
    s = StandIn()
    with ServerThread(s.app()) as upstream:
        keys = prepare(tmp_path / "d", upstream.url, s.api_key, keys=("alice", "bob"))
        with Gateway(tmp_path / "d", watch=OFF) as gw:
            job_id = create_job(gw.url, keys["alice"])
            now = time.time()
            set_watch(gw, job_id, lease_owner="elsewhere", lease_until=now + 60, next_poll_at=now + 60)
            mine = snapshot(gw, keys["alice"], job_id)
            theirs = snapshot(gw, keys["bob"], job_id)
            retrieve = requests.get(f"{gw.url}/v1/fine_tuning/jobs/{job_id}", timeout=10,
                                    headers={"Authorization": f"Bearer {keys['bob']}"})
            anonymous = snapshot(gw, "tg-nope.nope", job_id)
    assert mine.status_code == 200 and mine.headers["x-tunegate-source"] == "snapshot"
    assert mine.json()["id"] == job_id
    # As a retrieve answers: a 404 that does not say the job exists, in OpenAI's error shape.
    assert theirs.status_code == 404 == retrieve.status_code
    assert theirs.json() == retrieve.json() and set(theirs.json()["error"]) == {"message", "type", "param", "code"}
    assert "x-tunegate-source" not in theirs.headers
    assert anonymous.status_code == 401
    assert calls(s, job_id) == 0  # nothing above reached the provider


def test_unwatched_stale_or_failing_snapshots_are_read_live(tmp_path: Path) -> None:
    s = Clocked(phases=(600, 700, 800))  # stays validating_files until the test ends it
    with ServerThread(s.app()) as upstream:
        keys = prepare(tmp_path / "d", upstream.url, s.api_key)
        with Gateway(tmp_path / "d", watch=OFF) as gw:
            job_id = create_job(gw.url, keys["alice"])

            def read(expected_calls: int, **headers: str) -> tuple[str, str, str | None]:
                answer = snapshot(gw, keys["alice"], job_id, **headers)
                assert answer.status_code == 200, answer.text
                assert calls(s, job_id) == expected_calls
                return (answer.headers["x-tunegate-source"], answer.json()["status"],
                        answer.headers.get("x-tunegate-live-reason") or answer.headers.get("x-tunegate-snapshot-age"))

            assert read(1)[::2] == ("live", "not_watched")  # enrolled in job_watch, but no instance holds it
            now = time.time()
            set_watch(gw, job_id, lease_owner="elsewhere", lease_until=now + 60, next_poll_at=now + 60)
            source, status, age = read(1)
            assert (source, status) == ("snapshot", "validating_files") and age is not None and 0 <= int(age) <= 1
            set_watch(gw, job_id, next_poll_at=now - 100)  # the watcher is far behind: older than its interval
            assert read(2)[::2] == ("live", "stale")
            set_watch(gw, job_id, next_poll_at=now + 60, failures=2)
            assert read(3)[::2] == ("live", "watch_failing")
            set_watch(gw, job_id, failures=0, lease_until=now - 1)  # its instance stopped renewing
            assert read(4)[::2] == ("live", "not_watched")
            set_watch(gw, job_id, lease_until=now + 60)
            # A request that would read the job otherwise than the watcher does (its own OpenAI project).
            assert read(5, **{"x-portkey-openai-project": "proj_other"})[::2] == ("live", "other_view")
            assert read(5)[:2] == ("snapshot", "validating_files")

            s.phases = (0, 0, 0)  # the job ends; the next live read sees it
            set_watch(gw, job_id, failures=1)
            assert read(6) == ("live", "succeeded", "watch_failing")
            assert read(6)[:2] == ("snapshot", "succeeded")  # the outbox stopped the watch; an end is final
            assert read(7, **{"x-portkey-openai-project": "proj_other"})[::2] == ("live", "other_view")


def test_the_route_is_tunegates_own_and_documented(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d", watch=OFF) as gw:
        doc = requests.get(gw.url + "/openapi.json", timeout=10).json()
        unknown = snapshot(gw, "", "ftjob-nope")
    operation = doc["paths"]["/v1/tunegate/jobs/{job_id}/snapshot"]["get"]
    assert set(operation["responses"]["200"]["headers"]) == {"x-tunegate-source", "x-tunegate-snapshot-age",
                                                             "x-tunegate-live-reason"}
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "missing_provider"


class OldGateway:
    """A gateway from before the snapshot route: 404 unknown_route there, the job and events as OpenAI."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.statuses = ["running", "succeeded"]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/tunegate/jobs/{id}/snapshot", self.unknown)
        app.router.add_get("/v1/fine_tuning/jobs/{id}", self.job)
        app.router.add_get("/v1/fine_tuning/jobs/{id}/events", self.events)
        return app

    async def unknown(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.json_response({"error": {"message": f"Unknown route: GET {request.path}", "type":
                                            "invalid_request_error", "param": None, "code": "unknown_route"}},
                                 status=404)

    async def job(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return web.json_response({"object": "fine_tuning.job", "id": request.match_info["id"], "status": status,
                                  "fine_tuned_model": "ft:x" if status == "succeeded" else None})

    async def events(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.json_response({"object": "list", "has_more": False, "data": [
            {"object": "fine_tuning.job.event", "id": "ev-1", "created_at": 1, "level": "info",
             "message": "Fine-tuning job started", "type": "message"}]})


def test_jobs_watch_reads_live_from_a_gateway_without_the_route() -> None:
    old = OldGateway()
    with ServerThread(old.app()) as server:
        watcher = Watcher(Client(url=server.url), "ftjob-1", Console(file=io.StringIO()))
        assert watcher.run(0.01, 10) == 0
    assert watcher.reads == {"snapshot": 0, "live": 2, "events": 2}  # live answers: events on every poll
    assert old.paths.count("/v1/tunegate/jobs/ftjob-1/snapshot") == 1  # asked once, then the job itself
    assert watcher.job["status"] == "succeeded" and list(watcher.events) == ["ev-1"]
