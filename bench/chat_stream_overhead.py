"""What the gateway adds to a streamed chat completion: the same stream read straight from the upstream
stand-in and through ``tunegate serve``, interleaved in one run.

    .venv/bin/python bench/chat_stream_overhead.py [--streams 200] [--chunks 32] [--gap-ms 2]
                                                   [--json bench/results/chat_stream.json]

The upstream is the OpenAI stand-in (tests/standins/openai_like.py) in its own process, pacing its chunks
``--gap-ms`` apart; the gateway is ``tunegate serve`` (a real subprocess) with ``x-portkey-provider:
openai`` and the stand-in as custom host. The client (this process, aiohttp) reads one stream at a time,
alternating direct and gateway. Rows:

- time to first token (request sent → first content chunk parsed): p50/p95 each way, and the added
  time per pair (gateway − the direct stream read just before it);
- inter-chunk delivery: the gaps between content chunks as the client receives them (p50/p95 each
  way), and how many chunks arrived in the same read as the one before (a gateway that buffered would
  deliver several per read; the upstream sends one per write);
- gateway CPU per chunk: the gateway process's CPU time (utime+stime from /proc) over the gateway
  streams, divided by the chunks it relayed (and per stream: the request's own handling is in it; run with
  two ``--chunks`` values to separate the two). /proc counts in clock ticks (10 ms): read it over many streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")

UPSTREAM = """
import sys
from aiohttp import web
from tests.standins.openai_like import StandIn
s = StandIn()
s.chat.reply = " ".join(f"w{i}" for i in range(int(sys.argv[2])))
s.chat.gap = float(sys.argv[3]) / 1000
web.run_app(s.app(), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def wait_http(url: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


async def one_stream(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict[str, Any]:
    body = {"model": "gpt-4o-mini-2024-07-18", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    sent = time.perf_counter()
    arrivals: list[float] = []
    same_read = 0
    buffer = b""
    async with http.post(url, json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        async for piece in resp.content.iter_any():
            now = time.perf_counter()
            buffer += piece
            in_this_read = 0
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                data = event.removeprefix(b"data: ")
                if data == b"[DONE]":
                    continue
                chunk = json.loads(data)
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    arrivals.append(now)
                    in_this_read += 1
            same_read += max(0, in_this_read - 1)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return {"ttft": arrivals[0] - sent, "gaps": gaps, "chunks": len(arrivals), "same_read": same_read}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


async def run(args: argparse.Namespace, upstream: str, gateway: str, gw_pid: int) -> dict[str, Any]:
    direct_h = {"Authorization": "Bearer sk-standin-secret-0001"}
    gw_h = {**direct_h, "x-portkey-provider": "openai", "x-portkey-custom-host": upstream}
    results: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
    gw_cpu = 0.0
    async with aiohttp.ClientSession() as http:
        for _ in range(5):  # warm both paths (connection pools, first-request imports)
            await one_stream(http, upstream + "/chat/completions", direct_h)
            await one_stream(http, gateway + "/v1/chat/completions", gw_h)
        for _ in range(args.streams):
            results["direct"].append(await one_stream(http, upstream + "/chat/completions", direct_h))
            before = cpu_seconds(gw_pid)
            results["gateway"].append(await one_stream(http, gateway + "/v1/chat/completions", gw_h))
            gw_cpu += cpu_seconds(gw_pid) - before
    out: dict[str, Any] = {"config": vars(args)}
    for side, rows in results.items():
        ttft = [r["ttft"] * 1000 for r in rows]
        gaps = [g * 1000 for r in rows for g in r["gaps"]]
        out[side] = {"ttft_ms_p50": pct(ttft, 50), "ttft_ms_p95": pct(ttft, 95), "gap_ms_p50": pct(gaps, 50),
                     "gap_ms_p95": pct(gaps, 95), "chunks": sum(r["chunks"] for r in rows),
                     "chunks_in_a_shared_read": sum(r["same_read"] for r in rows)}
    added = [(g["ttft"] - d["ttft"]) * 1000 for d, g in zip(results["direct"], results["gateway"], strict=True)]
    out["added_ttft_ms_p50"], out["added_ttft_ms_p95"] = pct(added, 50), pct(added, 95)
    out["gateway_cpu_us_per_chunk"] = gw_cpu / max(1, out["gateway"]["chunks"]) * 1e6
    out["gateway_cpu_ms_per_stream"] = gw_cpu / max(1, args.streams) * 1e3  # request handling included
    out["ratios"] = {"ttft_p50": out["gateway"]["ttft_ms_p50"] / out["direct"]["ttft_ms_p50"],
                     "ttft_p95": out["gateway"]["ttft_ms_p95"] / out["direct"]["ttft_ms_p95"],
                     "gap_p50": out["gateway"]["gap_ms_p50"] / out["direct"]["gap_ms_p50"],
                     "gap_p95": out["gateway"]["gap_ms_p95"] / out["direct"]["gap_ms_p95"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=200, help="streams each way")
    ap.add_argument("--chunks", type=int, default=32, help="content chunks per stream")
    ap.add_argument("--gap-ms", type=float, default=2.0, help="the upstream's pause between chunks")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "chat_stream.json"))
    ap.add_argument("--source", default=None,
                    help="run the gateway from the tunegate package in this directory (e.g. a `git archive` of an "
                         "older commit), the stand-in from this checkout")
    args = ap.parse_args()
    up_port, gw_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEGATE_")}
        env.update(TUNEGATE_DATA_DIR=tmp, TUNEGATE_LOG_LEVEL="warning", PYTHONPATH=str(ROOT))
        upstream_proc = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port), str(args.chunks),
                                          str(args.gap_ms)], cwd=ROOT, env=env, start_new_session=True)
        gw_env = {**env, "PYTHONPATH": str(Path(args.source).resolve()) if args.source else str(ROOT)}
        gateway_proc = subprocess.Popen([str(VENV_BIN / "tunegate"), "serve", "--port", str(gw_port)], cwd=tmp,
                                        env=gw_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        try:
            upstream, gateway = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
            asyncio.run(wait_http(upstream + "/models"))
            asyncio.run(wait_http(gateway + "/healthz"))
            out = asyncio.run(run(args, upstream, gateway, gateway_proc.pid))
        finally:
            for proc in (gateway_proc, upstream_proc):
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(10)
    d, g = out["direct"], out["gateway"]
    print(f"{args.streams} streams each way, {args.chunks} chunks {args.gap_ms:g} ms apart; {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'':<32}{'direct':>10}{'gateway':>10}{'ratio':>8}")
    for label, key, ratio in (("time to first token p50 (ms)", "ttft_ms_p50", "ttft_p50"),
                              ("time to first token p95 (ms)", "ttft_ms_p95", "ttft_p95"),
                              ("inter-chunk gap p50 (ms)", "gap_ms_p50", "gap_p50"),
                              ("inter-chunk gap p95 (ms)", "gap_ms_p95", "gap_p95")):
        print(f"{label:<32}{d[key]:>10.3f}{g[key]:>10.3f}{out['ratios'][ratio]:>8.2f}")
    print(f"{'chunks in a shared read':<32}{d['chunks_in_a_shared_read']:>10}{g['chunks_in_a_shared_read']:>10}"
          f"   (of {g['chunks']})")
    print(f"added time to first token: p50 {out['added_ttft_ms_p50']:.3f} ms, p95 {out['added_ttft_ms_p95']:.3f} ms "
          f"(target: p50 <= 1 ms)")
    print(f"gateway CPU per chunk: {out['gateway_cpu_us_per_chunk']:.1f} µs (the whole stream's CPU, request handling "
          f"included, over its chunks; per stream {out['gateway_cpu_ms_per_stream']:.2f} ms)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
