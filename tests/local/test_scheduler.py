"""The scheduler against the database: restart recovery, and several schedulers sharing one database
never starting the same job (SQLite here; PostgreSQL too when TUNEGATE_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tunegate.files import LocalDiskStore
from tunegate.localjobs import JobDB, Scheduler
from tunegate.store import Store
from tunegate.store.schema import local_job_checkpoints, local_job_events, local_jobs
from tunegate.store.secretbox import SecretBox
from tunegate.trainer import TrainResult

KEY = "x7WwR7Sxrz3f8k6m1m1q9W7Q0a3hYtJg0b8p3S2qv5E="
_counter = iter(range(10**6))


def job_row(**over: Any) -> dict[str, Any]:
    n = next(_counter)
    row: dict[str, Any] = dict(
        id=f"ftjob-{time.time_ns() // 1_000_000:012x}test{n:08d}", key_id=None, status="queued", model="m",
        training_file="file-x", validation_file=None, method={"type": "supervised", "supervised": {}},
        hyperparameters={}, seed=1, suffix=None, metadata=None, fine_tuned_model=None, trained_tokens=None,
        error=None, result_files=[], created_at=int(time.time()), started_at=None, finished_at=None,
        estimated_finish=None, claimed_by=None, heartbeat_at=None, pid=None, attempts=0, resume_from=None,
        output_dir=None, cancel_requested=False, pause_requested=False, paused=False)
    row.update(over)
    return row


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


async def open_store(url: str, tmp: Path) -> Store:
    return await Store.open(url, SecretBox.from_settings(KEY, tmp))


def files_in(tmp: Path) -> LocalDiskStore:
    files = LocalDiskStore(tmp / "files")
    files.prepare()
    return files


async def test_restart_recovery(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", tmp_path)
    db = JobDB(store.engine)
    ckpt = tmp_path / "run-1" / "checkpoints" / "step-8"
    ckpt.mkdir(parents=True)
    dead = dead_pid()
    old = time.time() - 3600
    ghost = "ghost-host:4242:dead"
    rows = {
        "resumable": job_row(status="running", claimed_by=ghost, heartbeat_at=old, attempts=1, started_at=1),
        "exhausted": job_row(status="running", claimed_by=ghost, heartbeat_at=old, attempts=3),
        "cancelling": job_row(status="running", claimed_by=ghost, heartbeat_at=old, attempts=1,
                              cancel_requested=True),
        "pausing": job_row(status="running", claimed_by=ghost, heartbeat_at=old, attempts=1, pause_requested=True),
        "alive": job_row(status="running", claimed_by="other-host:1:live", heartbeat_at=time.time(), attempts=1),
        # Same host, its process gone: recovered without waiting for the long stale timeout.
        "local-dead": job_row(status="running", claimed_by=f"{socket.gethostname()}:{dead}:x",
                              heartbeat_at=time.time() - 2, attempts=1),
    }
    for row in rows.values():
        await db.insert_job(row)
    await db.put_checkpoint(rows["resumable"]["id"], 8, {"step": 8, "train_loss": 1.0}, str(ckpt))
    await db.put_checkpoint(rows["pausing"]["id"], 8, {"step": 8}, str(ckpt))

    scheduler = Scheduler(store, files_in(tmp_path), tmp_path, concurrency=0, heartbeat_interval=0.5,
                          stale_after=60)
    await scheduler.start()
    try:
        got = {name: await db.get(row["id"]) for name, row in rows.items()}
        assert got["resumable"]["status"] == "queued" and got["resumable"]["claimed_by"] is None
        assert got["resumable"]["resume_from"] == str(ckpt) and got["resumable"]["heartbeat_at"] is None
        events, _ = await db.list_events(rows["resumable"]["id"], limit=5, after_seq=None)
        assert events[0]["level"] == "warn"
        assert events[0]["message"].startswith("Job requeued to resume from checkpoint at step 8: the gateway "
                                               f"instance running it ({ghost}) stopped responding")
        assert got["exhausted"]["status"] == "failed" and got["exhausted"]["error"]["code"] == "worker_lost"
        assert got["exhausted"]["finished_at"] is not None
        assert got["cancelling"]["status"] == "cancelled"
        assert got["pausing"]["status"] == "queued" and got["pausing"]["paused"] is True
        assert got["pausing"]["resume_from"] == str(ckpt)
        assert got["alive"]["status"] == "running" and got["alive"]["claimed_by"] == "other-host:1:live"
        assert got["local-dead"]["status"] == "queued" and got["local-dead"]["resume_from"] is None
        events, _ = await db.list_events(rows["local-dead"]["id"], limit=5, after_seq=None)
        assert events[0]["message"].startswith("Job requeued to start over (no checkpoint yet)")
    finally:
        await scheduler.stop()
        await store.close()


class FakeProc:
    """A training process that succeeds after a few polls (the claim logic is what is tested here)."""

    starts: list[tuple[str, str]] = []

    def __init__(self, owner: str, spec: Any, on_event: Any) -> None:
        self.owner, self.spec, self.on_event = owner, spec, on_event
        self.polls = 0
        self.pid = os.getpid()
        self.result: TrainResult | None = None
        self.error = None

    def start(self) -> None:
        FakeProc.starts.append((self.owner, self.spec.job_id))

    def poll(self) -> str:
        self.polls += 1
        if self.polls < 3:
            self.on_event({"type": "metrics", "level": "info", "message": f"Step {self.polls}",
                           "data": {"step": self.polls}})
            return "running"
        out = Path(self.spec.output_dir)
        (out / "adapter").mkdir(parents=True, exist_ok=True)
        (out / "adapter" / "adapter_config.json").write_text("{}")
        (out / "metrics.csv").write_text("step,train_loss\n1,1.0\n")
        self.result = TrainResult(fine_tuned_model=f"ft:m::{self.spec.job_id}", adapter_dir=str(out / "adapter"),
                                  metrics_csv=str(out / "metrics.csv"), trained_tokens=10)
        return "succeeded"

    def pause(self) -> None:
        pass

    def cancel(self) -> None:
        pass


def database_urls() -> list[Any]:
    urls: list[Any] = ["sqlite"]
    pg = os.environ.get("TUNEGATE_TEST_POSTGRES_URL")
    urls.append(pytest.param(pg, marks=pytest.mark.postgres) if pg else pytest.param(
        None, marks=pytest.mark.skip(reason="TUNEGATE_TEST_POSTGRES_URL is not set")))
    return urls


@pytest.mark.parametrize("url", database_urls())
async def test_two_schedulers_never_run_the_same_job(tmp_path: Path, url: str) -> None:
    if url == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    elif url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    stores = [await open_store(url, tmp_path), await open_store(url, tmp_path)]
    db = JobDB(stores[0].engine)
    async with stores[0].engine.begin() as conn:  # a clean queue (PostgreSQL may hold earlier runs' rows)
        for table in (local_jobs, local_job_events, local_job_checkpoints):
            await conn.execute(sa.delete(table))
    files = files_in(tmp_path)
    (files.objects / "file-x").write_text("{}\n")
    async with stores[0].engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM managed_files WHERE id = 'file-x'"))
    await stores[0].add_managed_file(dict(id="file-x", key_id=None, filename="t.jsonl", purpose="fine-tune", bytes=3,
                                          sha256="0" * 64, location="file-x", report=None, created_at=1,
                                          expires_at=None))
    FakeProc.starts = []
    schedulers = [Scheduler(store, files, tmp_path, concurrency=3, instance=f"test-host:{i}:s{i}",
                            runner=lambda spec, on_event, i=i: FakeProc(f"s{i}", spec, on_event))
                  for i, store in enumerate(stores)]
    try:
        # The claim itself, raced: 24 concurrent claims over 10 queued jobs.
        ids = [job_row()["id"] for _ in range(10)]
        for job_id in ids:
            await db.insert_job(job_row(id=job_id))
        claims = await asyncio.gather(*(s._claim() for s in schedulers * 12))
        claimed = [c["id"] for c in claims if c is not None]
        assert sorted(claimed) == sorted(ids)  # every job exactly once
        for job_id in ids:
            row = await db.get(job_id)
            assert row["status"] == "running" and row["attempts"] == 1
            assert row["claimed_by"] in ("test-host:0:s0", "test-host:1:s1")

        # Whole ticks, raced: 12 more jobs run to the end, each started by exactly one scheduler.
        more = [job_row()["id"] for _ in range(12)]
        for job_id in more:
            await db.insert_job(job_row(id=job_id))
        for _ in range(100):
            await asyncio.gather(*(s.tick() for s in schedulers))
            rows = [await db.get(j) for j in more]
            if all(r["status"] == "succeeded" for r in rows):
                break
        assert all(r["status"] == "succeeded" and r["claimed_by"] is None for r in rows), [(r["status"], r["error"]) for r in rows]
        started = [job for _, job in FakeProc.starts]
        assert sorted(started) == sorted(more) and len(set(started)) == len(started)
        assert {owner for owner, _ in FakeProc.starts} == {"s0", "s1"}  # both did work
        for r in rows:
            assert len(r["result_files"]) == 2 and r["fine_tuned_model"] == f"ft:m::{r['id']}"
            events, _ = await db.list_events(r["id"], limit=10, after_seq=None)
            assert [e["message"] for e in events if e["type"] == "metrics"] == ["Step 2", "Step 1"]
    finally:
        for s in schedulers:
            await s.stop()
        for store in stores:
            await store.close()
