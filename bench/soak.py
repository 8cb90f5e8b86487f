"""Soak test: ``tunegate serve`` (a subprocess) proxying a fast local upstream, driven for N minutes at
C concurrent connections with a mix of list / retrieve / create; reports requests, errors, latency and the
gateway's resident memory at start and end (drift).

    .venv/bin/python bench/soak.py                 # 10 minutes, 256 connections
    .venv/bin/python bench/soak.py --minutes 2 --json bench/results/soak.json

Loopback only (127.0.0.1); stops by itself (a hard stop ``--minutes`` + 60 s later, whatever happens).
The upstream runs in its own process (``--serve-upstream``) so it does not share the client's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FERNET_KEY = "x7WwR7Sxrz3f8k6m1m1q9W7Q0a3hYtJg0b8p3S2qv5E="
MIX = (("list", 0.4), ("retrieve", 0.4), ("create", 0.2))


# ---- the fast upstream ----------------------------------------------------------------------------

def serve_upstream(port: int) -> None:
    from aiohttp import web

    jobs: dict[str, dict[str, Any]] = {}
    counter = iter(range(1, 10**12))

    def job(job_id: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
        return {"object": "fine_tuning.job", "id": job_id, "model": model, "created_at": 1700000000,
                "finished_at": None, "fine_tuned_model": None, "organization_id": "org-soak", "result_files": [],
                "status": "queued", "validation_file": None, "training_file": "file-soak", "hyperparameters": {},
                "trained_tokens": None, "error": None, "seed": 1, "estimated_finish": None, "integrations": None,
                "metadata": None, "method": {"type": "supervised"}}

    fixed = [job(f"ftjob-soak{i:04d}") for i in range(20)]

    async def list_jobs(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": fixed[:3], "has_more": True})

    async def retrieve(request: web.Request) -> web.Response:
        return web.json_response(jobs.get(request.match_info["id"]) or job(request.match_info["id"]))

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        new = job(f"ftjob-new{next(counter):08d}", body.get("model", "m"))
        if len(jobs) < 10000:
            jobs[new["id"]] = new
        return web.json_response(new)

    app = web.Application()
    app.router.add_get("/fine_tuning/jobs", list_jobs)
    app.router.add_get("/fine_tuning/jobs/{id}", retrieve)
    app.router.add_post("/fine_tuning/jobs", create)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---- helpers --------------------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def wait_http(url: str, seconds: float) -> None:
    import aiohttp

    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status < 500:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


# ---- the load -------------------------------------------------------------------------------------

async def drive(gateway: str, upstream: str, seconds: float, concurrency: int, pid: int) -> dict[str, Any]:
    import aiohttp

    headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream,
               "Authorization": "Bearer sk-soak-0000000000", "x-portkey-config": '{"retry": {"attempts": 0}}'}
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    rss: list[tuple[float, int]] = [(0.0, rss_kib(pid))]
    started = time.monotonic()
    deadline = started + seconds
    names = [n for n, _ in MIX]
    weights = [w for _, w in MIX]

    async def one(session: aiohttp.ClientSession, rng: random.Random) -> None:
        op = rng.choices(names, weights)[0]
        t0 = time.perf_counter()
        try:
            if op == "list":
                req = session.get(f"{gateway}/v1/fine_tuning/jobs?limit=3", headers=headers)
            elif op == "retrieve":
                req = session.get(f"{gateway}/v1/fine_tuning/jobs/ftjob-soak{rng.randrange(20):04d}", headers=headers)
            else:
                req = session.post(f"{gateway}/v1/fine_tuning/jobs", headers=headers,
                                   json={"model": "gpt-4o-mini", "training_file": "file-soak"})
            async with req as resp:
                await resp.read()
                if resp.status != 200:
                    errors[f"{op}:{resp.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            errors[f"{op}:{type(exc).__name__}"] += 1
        counts[op] += 1
        if len(latencies) < 2_000_000:
            latencies.append(time.perf_counter() - t0)

    async def worker(n: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(n)
        while time.monotonic() < deadline:
            await one(session, rng)

    async def sampler() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(5)
            try:
                rss.append((round(time.monotonic() - started, 1), rss_kib(pid)))
            except OSError:
                errors["gateway-process-gone"] += 1
                return

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(sampler(), *(worker(n, session) for n in range(concurrency)))
    elapsed = time.monotonic() - started
    rss.append((round(elapsed, 1), rss_kib(pid)))
    total = sum(counts.values())
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else 0.0

    # "start" is after the first sample (5 s in): the first seconds include imports and pool warm-up.
    warm = rss[1][1] if len(rss) > 2 else rss[0][1]
    return {
        "duration_s": round(elapsed, 1), "concurrency": concurrency, "requests": total,
        "requests_per_s": round(total / elapsed, 1) if elapsed else 0, "by_operation": dict(counts),
        "errors": sum(errors.values()), "errors_by_kind": dict(errors),
        "error_rate": round(sum(errors.values()) / total, 6) if total else 0,
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0),
                       "mean": round(statistics.fmean(lat) * 1000, 1) if lat else 0},
        "rss_kib": {"at_launch": rss[0][1], "start": warm, "end": rss[-1][1], "peak": max(r for _, r in rss),
                    "drift": rss[-1][1] - warm},
        "rss_samples": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--log-level", default="warning", help="the gateway's log level (default warning)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return

    seconds = args.minutes * 60
    work = Path(tempfile.mkdtemp(prefix="tunegate-soak-"))
    up_port, gw_port = free_port(), free_port()
    upstream_url, gateway_url = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
    env = {**os.environ, "TUNEGATE_DATA_DIR": str(work / "data"), "TUNEGATE_SECRET_KEY": FERNET_KEY,
           "TUNEGATE_LOG_LEVEL": args.log_level}
    log = open(work / "gateway.log", "wb")  # noqa: SIM115
    procs: list[subprocess.Popen[bytes]] = []

    def stop_all() -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()

    # Whatever happens, stop by ourselves.
    def hard_stop(*_: object) -> None:
        stop_all()
        os._exit(3)

    signal.signal(signal.SIGALRM, hard_stop)
    signal.alarm(int(seconds) + 120)
    try:
        procs.append(subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(up_port)]))
        procs.append(subprocess.Popen([sys.executable, "-m", "tunegate", "serve", "--port", str(gw_port)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
        asyncio.run(wait_http(upstream_url + "/fine_tuning/jobs", 30))
        asyncio.run(wait_http(gateway_url + "/healthz", 60))
        print(f"soak: {args.minutes:g} min at {args.concurrency} connections against {gateway_url} "
              f"(upstream {upstream_url}, data {work})", flush=True)
        report = asyncio.run(drive(gateway_url, upstream_url, seconds, args.concurrency, procs[1].pid))
        report["gateway_alive"] = procs[1].poll() is None
        report["gateway_log_errors"] = sum(1 for line in (work / "gateway.log").read_text(errors="replace")
                                           .splitlines() if '"level":"error"' in line)
    finally:
        stop_all()
        log.close()
    summary = {k: v for k, v in report.items() if k != "rss_samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
