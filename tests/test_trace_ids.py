"""Trace ids: drawn from the OS's random source many at a time (tunegate.context.new_trace_id), yet each
one fresh, well formed, never repeated by another thread or by a forked worker."""

from __future__ import annotations

import os
import re
import threading

from tunegate import context
from tunegate.context import TRACE_IDS_PER_DRAW, new_trace_id

TRACE_ID = re.compile(r"[0-9a-f]{32}")


def test_ids_are_128_bit_hex_and_never_repeat_across_draws() -> None:
    ids = [new_trace_id() for _ in range(5 * TRACE_IDS_PER_DRAW + 3)]
    assert all(TRACE_ID.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert len({i[:8] for i in ids}) > len(ids) * 0.99  # not a counter: the leading bits vary too


def test_threads_drawing_at_once_never_share_an_id() -> None:
    seen: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def draw(mine: list[str]) -> None:
        start.wait()
        mine.extend(new_trace_id() for _ in range(3 * TRACE_IDS_PER_DRAW))

    threads = [threading.Thread(target=draw, args=(s,)) for s in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for s in seen for i in s]
    assert len(set(every)) == len(every) == 4 * 3 * TRACE_IDS_PER_DRAW


def test_a_forked_child_does_not_hand_out_its_parents_ids() -> None:
    context._trace_ids.clear()  # (else the draw below may take the pool's last id, leaving it empty)
    new_trace_id()  # a fresh draw: the pool now holds ids the parent will hand out next
    assert context._trace_ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first ids go back to the parent
        os.close(read)
        os.write(write, "".join(new_trace_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        got = pipe.read().decode()
    os.waitpid(pid, 0)
    child = {got[i:i + 32] for i in range(0, len(got), 32)}
    parent = {new_trace_id() for _ in range(TRACE_IDS_PER_DRAW)}
    assert len(child) == 8 and not child & parent
