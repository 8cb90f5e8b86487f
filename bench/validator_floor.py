"""What the upload validator's time is made of, and how far under it compiled parts alone would go.

The validated upload row (issue 16: 200 MiB at >= 400 MB/s) is bounded by ``tunegate.data.Validator``
running on one core (in the helper process). This times, on bench_data's file cut into line-aligned
1 MiB chunks (what the validator is fed), the validator as a whole and each step of its raw fast path
alone:

- ``utf8``: ``validator._clean`` (no backslash, UTF-8 proven by CPython's decoder);
- ``split``: the chunk into lines;
- ``decode``: ``fastpath.decode_raw`` per line (msgspec: JSON syntax, schema, no ``str`` made);
- ``messages``: ``validator._raw_messages`` per example (token estimate, roles, trained turns);
- ``len_loop``: the least a per-message sum can cost in Python (one ``len`` a message, nothing checked).

It prints each step's CPU seconds (the best of ``--repeat``), the MB/s each bound allows, and the budget
a target leaves: at 400 MB/s the whole file must be validated in ``size / 400e6`` seconds, so the steps
that only C does (``utf8`` + ``decode``) must fit in it with room for the rest.

    .venv/bin/python bench/validator_floor.py [--mb 200] [--repeat 5] [--file train.jsonl]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import bench_data  # noqa: E402

from tunegate.data import fastpath  # noqa: E402
from tunegate.data.validator import Validator, _clean, _raw_messages  # noqa: E402


def line_chunks(data: bytes, size: int) -> list[bytes]:
    """``data`` in pieces of at most ``size`` bytes, each ending at a newline (the raw path's input)."""
    chunks, start = [], 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + size) + 1
        if end <= start:  # a line longer than a chunk: take it whole
            end = data.find(b"\n", start) + 1 or len(data)
        chunks.append(data[start:end])
        start = end
    return chunks


def best_cpu(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def whole(chunks: list[bytes]) -> None:
    v = Validator()
    for chunk in chunks:
        v.feed(chunk)
    report = v.finish()
    assert report.ok, report.summary()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="size of the generated file in MiB")
    ap.add_argument("--file", help="validate this JSONL instead of a generated one")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--target", type=float, default=400.0, help="the upload target in MB/s")
    args = ap.parse_args()
    if args.file:
        data = Path(args.file).read_bytes()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "train.jsonl"
            bench_data.generate(path, args.mb)
            data = path.read_bytes()
    chunks = line_chunks(data, 1 << 20)
    assert all(_clean(c) for c in chunks), "the steps below time the raw path: the file must take it"
    lines = [c.split(b"\n")[:-1] for c in chunks]
    decoded = [[fastpath.decode_raw(line).messages for line in ls] for ls in lines]

    def len_loop() -> None:
        for examples in decoded:
            for msgs in examples:
                total = 0
                for m in msgs:
                    total += len(m.content)

    steps = {
        "validator": lambda: whole(chunks),
        "utf8": lambda: [_clean(c) for c in chunks],
        "split": lambda: [c.split(b"\n") for c in chunks],
        "decode": lambda: [[fastpath.decode_raw(line) for line in ls] for ls in lines],
        "messages": lambda: [[_raw_messages(m) for m in ex] for ex in decoded],
        "len_loop": len_loop,
    }
    mb = len(data) / 1e6
    budget = mb / args.target
    print(f"{mb:.1f} MB, {sum(map(len, lines))} lines, {sum(len(m) for ex in decoded for m in ex)} messages; "
          f"{args.target:g} MB/s leaves {budget:.3f} s for the whole file")
    cpu = {name: best_cpu(fn, args.repeat) for name, fn in steps.items()}
    for name, s in cpu.items():
        print(f"  {name:10s} {s:6.3f} s CPU   {mb / s:7.0f} MB/s if it were all")
    floor = cpu["utf8"] + cpu["decode"]
    print(f"  utf8 + decode (C only) {floor:.3f} s = {floor / budget:.0%} of the budget; "
          f"+ split + len_loop {floor + cpu['split'] + cpu['len_loop']:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
