"""Where a slow list request waits: one ``tunegate serve`` on a fresh data dir, wrk's list jobs at c=64,
and inside the gateway a timer on chosen functions (a ``sitecustomize`` on its PYTHONPATH) that logs
every call slower than a threshold, with when it ended.

    .venv/bin/python bench/list_tail.py [--runs 2] [--seconds 5]
        [--timed tunegate.store.writer:SQLiteWriter:_run_batch,tunegate.api.common::visible]

It prints wrk's row per run (client p50/p99, the lag probe), the gateway's own latency for the same
requests (its request log: time inside the app), when the slow ones ended (seconds from the first run's
start) and the slow calls of each timed function. ``module:Class:function`` (``module::function`` for
a module's function); a coroutine function is timed around its await, a plain one around its call.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402 - bench/run.py: its services, wrk runner and lag probe

HOOK = r'''
import functools, importlib, importlib.abc, inspect, json, os, sys, time

OUT = open(os.environ["TG_TIMED_OUT"] + f".{os.getpid()}", "a", buffering=1)
LIMIT_MS = float(os.environ.get("TG_TIMED_MS", "30"))


def _log(name, started, args):
    ms = (time.perf_counter() - started) * 1000
    if ms > LIMIT_MS:
        OUT.write(json.dumps([time.time(), name, round(ms, 1), str(args[1:2])[:100]]) + "\n")


def _wrap(spec):
    module, cls, name = spec.split(":")
    owner = importlib.import_module(module)
    owner = getattr(owner, cls) if cls else owner
    fn = getattr(owner, name)
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                _log(spec, started, args)
    else:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _log(spec, started, args)
    setattr(owner, name, timed)


class _OnAppImport(importlib.abc.MetaPathFinder):
    """Wrap once tunegate.app is about to load: its imports are done by then."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "tunegate.app":
            sys.meta_path.remove(self)
            for spec in os.environ["TG_TIMED"].split(","):
                _wrap(spec)
        return None


sys.meta_path.insert(0, _OnAppImport())
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--slow-ms", type=float, default=100, help="an answer slower than this counts as slow")
    ap.add_argument("--timed", default="tunegate.store.writer:SQLiteWriter:_run_batch,"
                                       "tunegate.store.reader:SQLiteReader:_fetchall,tunegate.api.common::visible")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tunegate-tail-"))
    (tmp / "hook").mkdir()
    (tmp / "hook" / "sitecustomize.py").write_text(HOOK)
    upstream, up_port = run.start_upstream(tmp, 1)  # before the hook's environment: the upstream goes untimed
    # gateway_env passes PYTHONPATH and other non-TUNEGATE_ variables on; it fixes the log level, which the
    # request log needs at info
    os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [str(tmp / "hook"), os.environ.get("PYTHONPATH")])),
                      TG_TIMED=args.timed, TG_TIMED_OUT=str(tmp / "timed"))
    base_env = run.gateway_env
    run.gateway_env = lambda d: {**base_env(d), "TUNEGATE_LOG_LEVEL": "info"}
    gateway, port, _ = run.start_gateway(tmp, tmp / "data", 1, "tail")
    headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": f"http://127.0.0.1:{up_port}/v1",
               "Authorization": "Bearer sk-bench-provider-key"}
    script = run.lua_script(tmp / "list.lua", "GET", headers, None)
    url = f"http://127.0.0.1:{port}/v1/fine_tuning/jobs?limit=20"
    start = time.time()
    try:
        for _ in range(args.runs):
            r = run.run_wrk(url, script, 64, args.seconds, {"gateway": gateway.pids()}, probe=(port, "/healthz"))
            print({k: r.get(k) for k in ("rps", "p50_ms", "p99_ms", "probe_p99_ms", "probe_max_ms")}, flush=True)
    finally:
        gateway.stop()
        upstream.stop()
    lines = []
    for line in (tmp / "gateway-tail.log").read_text().splitlines():
        if '"latency_ms"' in line and '"/v1/fine_tuning/jobs"' in line:
            lines.append(json.loads(line))
    lat = sorted(r["latency_ms"] for r in lines)
    n = len(lat)
    if n:
        print(f"in the app: {n} lists, p50 {lat[n // 2]:.1f} ms, p99 {lat[int(n * 0.99)]:.1f}, "
              f"p99.9 {lat[int(n * 0.999)]:.1f}, max {lat[-1]:.1f}")
    slow = [r for r in lines if r["latency_ms"] > args.slow_ms]
    print(f"{len(slow)} slower than {args.slow_ms:g} ms in the app, ended at (s from the first run's start):",
          sorted({round(r["ts"] - start, 1) for r in slow}))
    calls: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for path in tmp.glob("timed.*"):
        for line in path.read_text().splitlines():
            ended, name, ms, _arg = json.loads(line)
            calls[name].append((round(ended - start, 2), ms))
    for name, seen in sorted(calls.items()):
        seen.sort()
        print(f"{name}: {len(seen)} slow calls, max {max(ms for _, ms in seen):.0f} ms; (ended s, ms):", seen[:12])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
