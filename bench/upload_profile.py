"""Where an upload's CPU goes: one ``tunegate serve`` and the bench upstream, N uploads of a generated
chat JSONL through ``POST /v1/files`` (validation on and off), the CPU seconds of every participant
(gateway tree incl. any helper it starts, upstream, client) and optionally a py-spy profile of the
gateway tree.

    .venv/bin/python bench/upload_profile.py --mb 200 --rounds 3 [--spy out.txt] [--source DIR]

The row of record is bench/run.py's upload row; this is the quicker loop for working on it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_data  # noqa: E402
import run  # noqa: E402 - bench/run.py: its services, upload client and /proc readers


def threads_cpu(pids: list[int]) -> dict[str, float]:
    """CPU seconds per thread name (comm) of these processes: which thread of the gateway works."""
    out: dict[str, float] = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                raw = (task / "stat").read_text()
            except OSError:
                continue
            name = raw[raw.index("(") + 1:raw.rindex(")")]
            f = raw.rsplit(")", 1)[1].split()
            out[f"{pid}/{name}"] = out.get(f"{pid}/{name}", 0.0) + (int(f[11]) + int(f[12])) / run.TICK
    return out


def minor_faults(pids: list[int]) -> int:
    """Minor page faults of these processes (and of their children that were waited for)."""
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[7]) + int(f[8])  # minflt, cminflt
    return total


def one(port: int, path: Path, custom_host: str, gw: run.Service, up: run.Service, validate: bool) -> dict:
    up_pids = up.pids()
    idle = run.tree_rss_bytes(gw.pid)
    c_gw, c_up, f_gw = run.tree_cpu_seconds(gw.pid), run.cpu_seconds(up_pids), minor_faults(gw.pids())
    th0 = threads_cpu(gw.pids())
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", run.UPLOAD_CHILD, str(port), str(path), custom_host,
                             "on" if validate else "off"], stdout=subprocess.PIPE, text=True)
    peak = 0
    with run.LagProbe(port, "/healthz") as lag:  # how long a cheap request waits behind the upload
        while proc.poll() is None:
            peak = max(peak, run.tree_rss_bytes(gw.pid))  # the tree now: a helper started per upload counts
            time.sleep(0.02)
    out = json.loads(proc.stdout.read() if proc.stdout else "{}")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter() - t
    th1 = threads_cpu(gw.pids())
    busy = {k: round(v - th0.get(k, 0.0), 2) for k, v in th1.items() if v - th0.get(k, 0.0) > 0.005}
    return {"status": out["status"], "mb_s": round(out["bytes"] / run.MB / out["seconds"], 1),
            "gw_cpu_s": round(run.tree_cpu_seconds(gw.pid) - c_gw, 3),
            "gw_faults": minor_faults(gw.pids()) - f_gw, "idle_rss_mb": round(idle / run.MB, 1),
            "up_cpu_s": round(run.cpu_seconds(up_pids) - c_up, 3),
            "client_cpu_s": round(ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime, 3), "wall_s": round(wall, 3),
            "peak_rss_mb": round(peak / run.MB, 1), "threads": busy, "lag": lag.summary(), "body": out["body"][:200] if out["status"] != 200 else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--spy", help="py-spy raw stacks of the gateway tree during the validated uploads")
    ap.add_argument("--spy-validate", choices=("on", "off"), default="on", help="which uploads --spy records")
    ap.add_argument("--source", help="import tunegate from this directory (e.g. a git archive of a base)")
    ap.add_argument("--file", help="upload this JSONL instead of a generated one")
    ap.add_argument("--helper-from", type=int, metavar="BYTES",
                    help="validate uploads of at least BYTES in the helper process (validate_uploads_in_helper_from_bytes)")
    args = ap.parse_args()
    if args.helper_from is not None:
        run.GATEWAY_SETTINGS["TUNEGATE_VALIDATE_UPLOADS_IN_HELPER_FROM_BYTES"] = str(args.helper_from)
    if args.source:
        run.SOURCE = Path(args.source).resolve()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        path = Path(args.file) if args.file else tmp / "train.jsonl"
        if not args.file:
            bench_data.generate(path, args.mb)
        up, up_port = run.start_upstream(tmp, 1)
        gw, port, _ = run.start_gateway(tmp, tmp / "data", 1, "upload")
        custom_host = f"http://127.0.0.1:{up_port}/v1"
        try:
            one(port, path, custom_host, gw, up, True)  # warm-up
            spy = None
            if args.spy:
                spy = subprocess.Popen([str(run.VENV_BIN / "py-spy"), "record", "-p", str(gw.pid), "-s", "-r", "200",
                                        "-f", "raw", "-o", args.spy], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            rows: dict[str, list[dict]] = {"on": [], "off": []}
            for _ in range(args.rounds):
                if spy is None or args.spy_validate == "on":
                    rows["on"].append(one(port, path, custom_host, gw, up, True))
                if spy is None or args.spy_validate == "off":
                    rows["off"].append(one(port, path, custom_host, gw, up, False))
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
            for k, rs in rows.items():
                if not rs:
                    continue
                print(f"validation {k:3s}: " + "  ".join(
                    f"{r['mb_s']:7.1f} MB/s gw {r['gw_cpu_s']:.2f}s up {r['up_cpu_s']:.2f}s cl {r['client_cpu_s']:.2f}s rss {r['idle_rss_mb']}->{r['peak_rss_mb']} pf {r['gw_faults']}"
                    f" lag p50/p99/max {r['lag'].get('probe_p50_ms')}/{r['lag'].get('probe_p99_ms')}/{r['lag'].get('probe_max_ms')} ms"
                    f" [{r['status']}]{r['body']}" for r in rs)
                    + f"  | threads {rs[-1]['threads']}  | median {statistics.median(r['mb_s'] for r in rs):.1f} MB/s")
        finally:
            gw.stop()
            up.stop()


if __name__ == "__main__":
    main()
