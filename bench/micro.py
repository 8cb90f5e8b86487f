"""Per-call cost of the pieces a proxied request goes through, measured in-process, one at a time —
so a profile's share can be turned into microseconds and a proposed fix into an expected gain.

    .venv/bin/python bench/micro.py [--n 2000] [--json bench/results/micro.json]
    PYTHONPATH=/some/tree .venv/bin/python bench/micro.py   # another tunegate tree

Each row: wall µs per call and process CPU µs per call (all threads: aiosqlite runs queries in a
worker thread, so its CPU counts too). Uses a SQLite file in a temp dir (WAL, as the gateway does)
and, for the upstream rows, bench/upstream.py on a loopback port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(ROOT))


async def timed(name: str, fn: Any, n: int, rows: list[dict[str, Any]], *, sync: bool = False) -> None:
    for _ in range(min(50, n)):  # warm caches (SQLAlchemy's compiled-statement cache, pools)
        fn() if sync else await fn()
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn() if sync else await fn()
    c1, w1 = time.process_time(), time.perf_counter()
    row = {"name": name, "wall_us": round((w1 - w0) / n * 1e6, 1), "cpu_us": round((c1 - c0) / n * 1e6, 1), "n": n}
    rows.append(row)
    print(f"{name:<58}{row['wall_us']:>10.1f}{row['cpu_us']:>10.1f}", flush=True)


async def main_async(n: int) -> list[dict[str, Any]]:
    import orjson
    import sqlalchemy as sa

    from tunegate.config import Settings
    from tunegate.context import ContextResolver
    from tunegate.files import LocalDiskStore
    from tunegate.hosts import check_custom_host
    from tunegate.store import Store
    from tunegate.store.secretbox import SecretBox
    from tunegate.upstream import Upstream

    sys.path.insert(0, str(ROOT / "bench"))
    import upstream as fake  # bench/upstream.py: the same bodies the benchmark serves

    rows: list[dict[str, Any]] = []
    print(f"{'piece':<58}{'wall µs':>10}{'cpu µs':>10}")
    with tempfile.TemporaryDirectory(prefix="tunegate-micro-") as tmp:
        port = _free_port()
        up = subprocess.Popen(  # noqa: ASYNC220 - started before any timing
            [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(port)],
            stdout=subprocess.PIPE, cwd=tmp)
        assert up.stdout is not None
        up.stdout.readline()
        settings = Settings(data_dir=Path(tmp) / "data", secret_key=None)
        box = SecretBox.from_settings(settings.secret_key, settings.data_dir)
        store = await Store.open(settings.resolved_database_url, box)
        upstream = Upstream()
        files = LocalDiskStore(settings.data_dir / "files")
        files.prepare()
        resolver = ContextResolver(settings, store, upstream, files)
        custom = f"http://127.0.0.1:{port}/v1"
        headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": custom,
                   "authorization": "Bearer sk-bench-provider-key", "host": "127.0.0.1", "user-agent": "wrk"}
        listing = orjson.loads(fake.LIST_BODY)
        ids = [j["id"] for j in listing["data"]]
        await store.record_many("job", [(j["id"], j["status"], j) for j in listing["data"]], "openai", None, None)
        try:
            # ---- the database, as the request path uses it ----
            async def select1() -> None:
                async with store.engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))

            await timed("engine.connect + SELECT 1 (floor of any query)", select1, n, rows)
            store.KEY_CACHE_SECONDS = 0  # type: ignore[misc]
            await timed("store.keys_exist (cache miss: a query)", store.keys_exist, n, rows)
            store.KEY_CACHE_SECONDS = 1.0  # type: ignore[misc]
            await timed("store.keys_exist (cached)", store.keys_exist, n, rows)
            await timed("store.owners('job', 20 ids)  [list: every request]", lambda: store.owners("job", ids), n, rows)
            await timed("store.lookup('job', id)  [retrieve/cancel/...: every request]",
                        lambda: store.lookup("job", ids[0]), n, rows)
            await timed("store.get_managed_file(id)  [create: every request]",
                        lambda: store.get_managed_file("file-abc123"), n, rows)
            counter = iter(range(10**9))
            job = orjson.loads(fake.CREATE_HEAD + b"0" * 24 + fake.CREATE_TAIL)
            await timed("store.record(new job)  [create/retrieve: every request]",
                        lambda: store.record("job", f"ftjob-m{next(counter)}", "openai", None, None, "queued", job),
                        max(200, n // 4), rows)
            await timed("store.record_many(20 known jobs)  [if list re-recorded]",
                        lambda: store.record_many("job", [(j["id"], j["status"], j) for j in listing["data"]],
                                                  "openai", None, None), max(200, n // 4), rows)
            entry = dict(ts=time.time(), trace_id="t" * 32, key_id=None, provider="openai", operation="list_jobs",
                         method="GET", path="/v1/fine_tuning/jobs", status=200, upstream_status=200, latency_ms=1.0)

            async def log_batch() -> None:
                for _ in range(100):
                    store._log_queue.append(dict(entry))
                await store.flush_log()

            await timed("store.flush_log(batch of 100 request-log entries)", log_batch, max(50, n // 40), rows)
            rows.append({"name": "  ... per request-log entry", "wall_us": round(rows[-1]["wall_us"] / 100, 1),
                         "cpu_us": round(rows[-1]["cpu_us"] / 100, 1), "n": rows[-1]["n"] * 100})
            print(f"{rows[-1]['name']:<58}{rows[-1]['wall_us']:>10.1f}{rows[-1]['cpu_us']:>10.1f}")

            async def owners_64() -> None:
                await asyncio.gather(*(store.owners("job", ids) for _ in range(64)))

            await timed("64 concurrent store.owners (gather)", owners_64, max(20, n // 64), rows)
            rows.append({"name": "  ... per call at concurrency 64 (pool 5+10, overflow churn)",
                         "wall_us": round(rows[-1]["wall_us"] / 64, 1), "cpu_us": round(rows[-1]["cpu_us"] / 64, 1),
                         "n": rows[-1]["n"] * 64})
            print(f"{rows[-1]['name']:<58}{rows[-1]['wall_us']:>10.1f}{rows[-1]['cpu_us']:>10.1f}")
            pool = store.engine.pool
            print(f"   pool after: {pool.status()}")
            threads_before = len(__import__("threading").enumerate())
            await owners_64()
            print(f"   threads alive after a burst of 64: {len(__import__('threading').enumerate())} "
                  f"(before {threads_before})")

            # ---- alternatives, for the expected gain of the proposed changes ----
            import sqlite3

            db_path = str(settings.data_dir / "tunegate.db")
            raw = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
            q = f"SELECT id, key_id FROM objects WHERE kind = ? AND id IN ({','.join('?' * len(ids))})"
            await timed("ALT owners: sqlite3 in asyncio.to_thread (1 hop)",
                        lambda: asyncio.to_thread(lambda: raw.execute(q, ["job", *ids]).fetchall()), n, rows)
            await timed("ALT owners: sqlite3 inline on the loop (no hop)",
                        lambda: raw.execute(q, ["job", *ids]).fetchall(), n, rows, sync=True)
            known = {("job", i) for i in ids}
            await timed("ALT owners: in-process set of recorded ids",
                        lambda: [i for i in ids if ("job", i) not in known], n, rows, sync=True)
            raw.close()
            from sqlalchemy import event

            @event.listens_for(store.engine.sync_engine, "connect")
            def _sync_normal(dbapi_conn: Any, _rec: Any) -> None:
                dbapi_conn.execute("PRAGMA synchronous=NORMAL")

            await store.engine.dispose()
            await timed("ALT store.record with PRAGMA synchronous=NORMAL (WAL)",
                        lambda: store.record("job", f"ftjob-m{next(counter)}", "openai", None, None, "queued", job),
                        max(200, n // 4), rows)

            # ---- context resolution ----
            await timed("check_custom_host(loopback literal)", lambda: check_custom_host(custom,
                                                                                         settings.allowed_custom_hosts),
                        n, rows)
            await timed("ContextResolver.resolve(list headers)  [every request]",
                        lambda: resolver.resolve(headers, "trace"), n, rows)
            await timed("ContextResolver.resolve(.., ref=job)  [retrieve etc.]",
                        lambda: resolver.resolve(headers, "trace", ("job", ids[0])), n, rows)

            # ---- JSON ----
            await timed("orjson.loads(16.9 KB job list)", lambda: orjson.loads(fake.LIST_BODY), n * 5, rows, sync=True)
            await timed("orjson.dumps(16.9 KB job list)", lambda: orjson.dumps(listing), n * 5, rows, sync=True)
            await timed("json.loads(16.9 KB job list)  (stdlib, for comparison)",
                        lambda: json.loads(fake.LIST_BODY), n, rows, sync=True)

            # ---- the upstream client ----
            from tunegate.config import RetryPolicy, Timeouts
            from tunegate.upstream import CallPolicy

            policy = CallPolicy(timeouts=Timeouts(), retry=RetryPolicy())
            url = custom + "/fine_tuning/jobs"
            hdrs = {"Authorization": "Bearer sk-bench-provider-key"}
            await timed("Upstream.request GET list (aiohttp, 16.9 KB, keep-alive)",
                        lambda: upstream.request("GET", url, policy, headers=hdrs, params=[("limit", "20")],
                                                 idempotent=True), n, rows)
            body = {"model": "gpt-4o-mini-2024-07-18", "training_file": "file-abc123"}
            await timed("Upstream.request POST create (aiohttp)",
                        lambda: upstream.request("POST", url, policy, headers=hdrs, json=body), n, rows)

            import aiohttp

            async with aiohttp.ClientSession() as plain:
                async def bare() -> None:
                    async with plain.get(url, params=[("limit", "20")], headers=hdrs) as r:
                        await r.read()

                await timed("bare aiohttp session.get + read (no tunegate wrapper)", bare, n, rows)
        finally:
            await upstream.close()
            await store.close()
            up.terminate()
            up.wait(5)
    return rows


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "micro.json"))
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()  # as the gateway runs (uvicorn picks uvloop when installed)
    except ImportError:
        pass
    rows = asyncio.run(main_async(args.n))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg": os.getloadavg(), "rows": rows},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
