"""Benchmark the fine-tuning data validator and converters.

Generates a synthetic OpenAI chat JSONL file (default 1 GiB) in a temp dir,
measures validator throughput (MB/s) and peak RSS (VmHWM from
/proc/self/status, measured in a fresh subprocess), then each converter's
throughput, prints a table and writes bench/results/data.json. The temp file
is deleted afterwards.

    .venv/bin/python bench/bench_data.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tunegate.data.converters import TARGETS  # noqa: E402

WORDS = (
    "the a model data train answer question please help customer order refund shipping weather "
    "python function return value list error because however therefore example simple quickly "
    "résumé naïve café 東京 données"
).split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _example(rng: random.Random) -> dict:
    msgs = [{"role": "system", "content": _sentence(rng, rng.randint(8, 30))}]
    for _ in range(rng.randint(1, 3)):
        msgs.append({"role": "user", "content": _sentence(rng, rng.randint(10, 60))})
        a = {"role": "assistant", "content": _sentence(rng, rng.randint(20, 120))}
        if rng.random() < 0.1:
            a["weight"] = rng.choice([0, 1])
        msgs.append(a)
    return {"messages": msgs}


def _single_turn(rng: random.Random) -> dict:
    """Chat that every supervised target can represent (one turn, no weights, no tools)."""
    return {
        "messages": [
            {"role": "system", "content": _sentence(rng, rng.randint(8, 30))},
            {"role": "user", "content": _sentence(rng, rng.randint(10, 60))},
            {"role": "assistant", "content": _sentence(rng, rng.randint(20, 120))},
        ]
    }


def _dpo(rng: random.Random) -> dict:
    return {
        "input": {
            "messages": [
                {"role": "system", "content": _sentence(rng, 12)},
                {"role": "user", "content": _sentence(rng, 30)},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": _sentence(rng, rng.randint(20, 80))}],
        "non_preferred_output": [{"role": "assistant", "content": _sentence(rng, rng.randint(20, 80))}],
    }


def generate(path: Path, size_mb: int, seed: int = 1, make=_example) -> int:
    rng = random.Random(seed)
    pool = [orjson.dumps(make(rng)) + b"\n" for _ in range(5000)]
    target = size_mb * 1024 * 1024
    written = 0
    with open(path, "wb") as fh:
        while written < target:
            block = b"".join(rng.choice(pool) for _ in range(2000))
            fh.write(block)
            written += len(block)
    return written


_CHILD = r"""
import sys, time, json
sys.path.insert(0, sys.argv[1])
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
from tunegate.data.validator import validate_path
base = hwm()
t = time.perf_counter()
r = validate_path(sys.argv[2], max_bytes=1 << 62)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "hwm_before": base, "hwm_after": hwm(),
                  "ok": r.ok, "errors": r.error_count, "warnings": r.warning_count, "stats": r.stats}))
"""


def bench_validator(path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ROOT), str(path)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def bench_converter(path: Path, target: str, limit: int) -> dict:
    from tunegate.data.converters import convert_lines

    done = 0
    out_bytes = 0
    t = time.perf_counter()
    with open(path, "rb") as fh:

        def lines():
            nonlocal done
            for line in fh:
                done += len(line)
                if done > limit:
                    return
                yield line

        try:
            for out in convert_lines(lines(), target):
                out_bytes += len(out)
        except Exception as exc:  # report, keep benchmarking the others
            return {"error": str(exc)}
    dt = time.perf_counter() - t
    return {"seconds": dt, "input_bytes": min(done, limit), "output_bytes": out_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="synthetic file size in MiB (default 1024)")
    ap.add_argument(
        "--converter-mb", type=int, default=256, help="MiB of synthetic input per converter (default 256)"
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "data.json"))
    ap.add_argument("--skip-converters", action="store_true")
    args = ap.parse_args()

    results: dict = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-") as tmp:
        path = Path(tmp) / "synthetic.jsonl"
        t = time.perf_counter()
        size = generate(path, args.size_mb)
        results["generate_seconds"] = round(time.perf_counter() - t, 2)
        results["file_bytes"] = size
        mb = size / 1e6
        v = bench_validator(path)
        results["validator"] = {
            "seconds": round(v["seconds"], 3),
            "mb_per_s": round(mb / v["seconds"], 1),
            "peak_rss_bytes": v["hwm_after"],
            "rss_before_bytes": v["hwm_before"],
            "peak_rss_increase_bytes": v["hwm_after"] - v["hwm_before"],
            "ok": v["ok"],
            "errors": v["errors"],
            "warnings": v["warnings"],
            "examples": v["stats"]["examples"],
            "estimated_tokens": v["stats"]["estimated_tokens"],
        }
        conv: dict = {}
        if not args.skip_converters:
            path.unlink()  # free the disk before writing the converter inputs
            chat_path = Path(tmp) / "single_turn.jsonl"
            dpo_path = Path(tmp) / "dpo.jsonl"
            generate(chat_path, args.converter_mb, make=_single_turn)
            generate(dpo_path, args.converter_mb, make=_dpo)
            limit = args.converter_mb * 1024 * 1024
            for target in TARGETS:
                src = dpo_path if target == "vertex-gemini-preference" else chat_path
                r = bench_converter(src, target, limit)
                if "seconds" in r:
                    r["mb_per_s"] = round(r["input_bytes"] / 1e6 / r["seconds"], 1)
                    r["seconds"] = round(r["seconds"], 3)
                conv[target] = r
        results["converters"] = conv

    print(
        f"file: {size / 2**20:.0f} MiB ({results['validator']['examples']} examples), python {results['python']}"
    )
    print(f"{'step':<34}{'MB/s':>10}{'seconds':>10}   notes")
    val = results["validator"]
    print(
        f"{'validator':<34}{val['mb_per_s']:>10}{val['seconds']:>10}   "
        f"peak RSS {val['peak_rss_bytes'] / 2**20:.1f} MiB (+{val['peak_rss_increase_bytes'] / 2**20:.1f} MiB over import)"
    )
    for target, r in conv.items():
        if "mb_per_s" in r:
            kind = "DPO" if target == "vertex-gemini-preference" else "single-turn chat"
            print(
                f"{'convert ' + target:<34}{r['mb_per_s']:>10}{r['seconds']:>10}   {r['input_bytes'] / 2**20:.0f} MiB {kind} in"
            )
        else:
            print(f"{'convert ' + target:<34}{'-':>10}{'-':>10}   {r.get('skipped') or r.get('error')}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
