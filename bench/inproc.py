"""CPU per request of the gateway's ASGI app (or the floor's) driven in-process, without a server.

Neither uvicorn nor an HTTP parser sits in front, so what is left is the app's own work plus the
upstream call (aiohttp to bench/upstream.py on a loopback port). The floor (bench/floor.py) driven the
same way costs what the upstream call costs; tunegate's figure minus the floor's is tunegate's own work
per request, with far less noise than a wrk run on 2 cores.

    .venv/bin/python bench/inproc.py --app tunegate --op list      # or --app floor, --op create
    .venv/bin/python bench/inproc.py --profile                      # + cProfile of one more round
    TREE=/other/tree .venv/bin/python bench/inproc.py               # another tunegate tree (A/B)
    .venv/bin/py-spy record -r 2000 -f raw -o list.raw -- .venv/bin/python bench/inproc.py --n 20000 --rounds 1

Prints sorted per-round CPU µs and wall µs per request (process CPU: every thread of this process, so
the store's threads count too). Request lines go to stderr: run with ``2>/dev/null``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, os.environ.get("TREE", str(BENCH.parent)))
sys.path.insert(0, str(BENCH))

CREATE_BODY = b'{"model":"gpt-4o-mini-2024-07-18","training_file":"file-abc123"}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start(app: Any) -> None:
    """Run the app's lifespan start-up (its shutdown is left to process exit)."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    asyncio.get_running_loop().create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                               inbox.get, outbox.put))
    message = await outbox.get()
    if message["type"] != "lifespan.startup.complete":
        raise SystemExit(f"start-up failed: {message}")


def _scope(method: str, target: str, port: int, body: bytes) -> dict[str, Any]:
    headers = [(b"host", b"gateway"), (b"x-portkey-provider", b"openai"), (b"authorization", b"Bearer sk-bench"),
               (b"x-portkey-custom-host", f"http://127.0.0.1:{port}/v1".encode()), (b"accept", b"*/*")]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    path, _, query = target.partition("?")
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


async def _call(app: Any, template: dict[str, Any], body: bytes) -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({**template, "headers": list(template["headers"]), "state": {}}, receive, send)
    if sent[0]["status"] != 200:
        raise SystemExit(f"answered {sent[0]['status']}: {sent[1:2]}")


async def main_async(args: argparse.Namespace, port: int) -> None:
    await asyncio.sleep(1.0)  # the upstream's start
    os.environ["TUNEGATE_DATA_DIR"] = tempfile.mkdtemp(prefix="tunegate-inproc-")
    if args.app == "floor":
        import floor
        app: Any = floor.Floor()
    else:
        from tunegate.app import create_app
        from tunegate.config import Settings
        app = create_app(Settings.load())
    await _start(app)
    body = CREATE_BODY if args.op == "create" else b""
    template = _scope("POST", "/v1/fine_tuning/jobs", port, body) if args.op == "create" else \
        _scope("GET", "/v1/fine_tuning/jobs?limit=20", port, body)
    for _ in range(300):  # warm caches, pools, the registry's rows for the listed jobs
        await _call(app, template, body)
    rounds = []
    for _ in range(args.rounds):
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(args.n):
            await _call(app, template, body)
        rounds.append(((time.process_time() - cpu) / args.n * 1e6, (time.perf_counter() - wall) / args.n * 1e6))
    print(f"{args.app} {args.op}: cpu µs/request {sorted(round(c) for c, _ in rounds)}, "
          f"wall µs {sorted(round(w) for _, w in rounds)}", flush=True)
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.n):
            await _call(app, template, body)
        profile.disable()
        pstats.Stats(profile).sort_stats(args.sort).print_stats(args.lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", choices=("tunegate", "floor"), default="tunegate")
    ap.add_argument("--op", choices=("list", "create"), default="list")
    ap.add_argument("--n", type=int, default=2000, help="requests per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sort", default="cumulative")
    ap.add_argument("--lines", type=int, default=60)
    args = ap.parse_args()
    import uvloop
    port = _free_port()
    upstream = subprocess.Popen([sys.executable, str(BENCH / "upstream.py"), "--port", str(port)])
    try:
        uvloop.run(main_async(args, port))
    finally:
        upstream.terminate()


if __name__ == "__main__":
    main()
