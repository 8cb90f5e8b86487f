"""Per-key request rates and concurrent uploads, answered as 429 with ``Retry-After``.

Counters live in the process: with ``--workers N`` each worker enforces the limit on its own share,
so the effective limit is up to N times the configured one (documented; a shared limiter would need
a round trip to the database on every request).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tunegate.errors import RateLimited


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests, refilled continuously, bursts up to the limit."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def check(self, key: str, per_minute: int) -> None:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - last) * per_minute / 60.0)
        if tokens < 1.0:
            wait = math.ceil((1.0 - tokens) * 60.0 / per_minute)
            self._buckets[key] = (tokens, now)
            raise RateLimited(f"Rate limit of {per_minute} requests per minute reached for this key.",
                              headers={"Retry-After": str(max(1, wait))})
        if len(self._buckets) > 100_000:
            self._buckets.clear()
        self._buckets[key] = (tokens - 1.0, now)


class UploadSlots:
    """At most ``limit`` uploads in flight per key (or per open gateway)."""

    def __init__(self) -> None:
        self._active: dict[str, int] = {}

    @contextmanager
    def hold(self, key: str, limit: int) -> Iterator[None]:
        if self._active.get(key, 0) >= limit:
            raise RateLimited(f"At most {limit} uploads may run at once for this key.",
                              headers={"Retry-After": "1"}, code="too_many_concurrent_uploads")
        self._active[key] = self._active.get(key, 0) + 1
        try:
            yield
        finally:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]
