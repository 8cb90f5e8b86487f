"""Cost of a registry write (``Store.record`` of a new job) on a SQLite file, with and without the webhook
outbox hook (for a job made with a caller's own provider key, and for one on a stored connection, which the
outbox also enrols for the watcher), one at a time and 64 at once — the write every created job makes before
its answer.

    .venv/bin/python bench/store_write.py [--n 640] [--database postgresql+asyncpg://...]
    PYTHONPATH=/some/tree .venv/bin/python bench/store_write.py   # another tunegate tree (before/after)

Each row: wall µs per record (or lookup) and process CPU µs per record (all threads).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(ROOT))


async def main_async(n: int, database: str | None) -> None:
    from tunegate.store import Store
    from tunegate.store.secretbox import SecretBox
    from tunegate.webhooks.outbox import Outbox
    from tunegate.webhooks.settings import WatchSettings

    with tempfile.TemporaryDirectory(prefix="tunegate-store-write-") as tmp:
        store = await Store.open(database or f"sqlite+aiosqlite:///{tmp}/bench.db", SecretBox(os.urandom(32)))
        snapshot = {"id": "x", "status": "validating_files", "model": "gpt-4o-mini-2024-07-18"}
        counter = iter(range(int(time.time() * 1000), 10**15))  # fresh ids on a database that persists

        async def record(label: str) -> None:
            # "stored connection": a job the watcher can poll (enrolled in job_watch by the outbox); the
            # others are made with a caller's own provider key (no connection: never enrolled).
            connection = "oa" if "connection" in label else None
            await store.record("job", f"ftjob-{label}-{next(counter)}", "openai", connection, "key-a",
                               "validating_files", snapshot, claim=True)

        async def lookup(_label: str) -> None:  # the read every create makes (its training file): a miss
            await store.lookup("file", f"file-missing-{next(counter)}")

        async def bench(label: str, concurrency: int, call: Callable[[str], Awaitable[None]] = record) -> None:
            for _ in range(max(1, 64 // concurrency)):  # warm
                await asyncio.gather(*(call(label) for _ in range(concurrency)))
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(max(1, n // concurrency)):
                await asyncio.gather(*(call(label) for _ in range(concurrency)))
            done = max(1, n // concurrency) * concurrency
            wall = (time.perf_counter() - w0) / done * 1e6
            cpu = (time.process_time() - c0) / done * 1e6
            print(f"{call.__name__} {label:<31} concurrency {concurrency:<3} {wall:>9.0f} µs wall "
                  f"{cpu:>9.0f} µs CPU", flush=True)

        await bench("(a miss)", 1, lookup)
        await bench("(a miss)", 64, lookup)
        await bench("no hook", 1)
        await bench("no hook", 64)
        outbox = Outbox(WatchSettings())
        if hasattr(outbox, "writes_for"):  # as the gateway registers it (a tree before it had no writes_for)
            store.on_status("job", outbox.on_job_status, outbox.writes_for)
        else:
            store.on_status("job", outbox.on_job_status)
        await bench("outbox hook", 1)
        await bench("outbox hook", 64)
        await bench("outbox hook, stored connection", 1)
        await bench("outbox hook, stored connection", 64)
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=640)
    ap.add_argument("--database", help="a database URL instead of a fresh SQLite file (e.g. PostgreSQL)")
    args = ap.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(main_async(args.n, args.database))
    else:
        uvloop.run(main_async(args.n, args.database))


if __name__ == "__main__":
    main()
