"""tunegate.allocator.tune_allocator: glibc's trim threshold (freed body chunks stay resident, no page
fault per chunk) and mmap threshold, and a no-op where there is no glibc."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from tunegate import allocator as server

# What uvicorn does with a request body (a bytearray grown by 64 KiB reads, then copied into bytes and
# freed), 400 times, and the minor page faults that took: with glibc's trim threshold frozen at its
# 128 KiB default, each free hands the top of the heap back to the kernel and the next chunk faults
# its pages in again.
CHURN = r"""
import ctypes, resource, sys
if sys.argv[1] == "tuned":
    from tunegate.allocator import tune_allocator
    assert tune_allocator()
else:
    ctypes.CDLL("libc.so.6").mallopt(-3, 1024 * 1024)  # the mmap threshold alone, as before
keep = []
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(400):
    buffer = bytearray()
    for _ in range(4):
        buffer += b"y" * 65536
    chunk = bytes(buffer)
    keep.append(b"z" * 100)  # something small that stays, as a request's objects do
    del chunk, buffer
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout.strip())


def _glibc() -> bool:
    try:
        ctypes.CDLL("libc.so.6").mallopt  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _glibc(), reason="glibc only")
def test_freed_chunks_stay_resident() -> None:
    untuned, tuned = _faults("plain"), _faults("tuned")
    assert untuned > 400 * 32  # the churn faults without the trim threshold (~110 pages per round here)
    assert tuned < untuned / 20


def test_no_glibc_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(server.ctypes, "CDLL", missing)
    assert server.tune_allocator() is False
