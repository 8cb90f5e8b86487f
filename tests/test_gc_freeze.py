"""A serving process moves its start-up objects out of the collector's reach (tunegate/app.py), so a
full collection under load walks only what serving made (gen-2 pauses of 45-60 ms -> ~4 ms, issue 16)."""

from __future__ import annotations

import gc
from pathlib import Path

import requests

from tests.gateway import Gateway


def test_start_up_objects_are_frozen_once(tmp_path: Path) -> None:
    with Gateway(tmp_path / "a") as gw:
        assert requests.get(f"{gw.url}/healthz", timeout=10).status_code == 200
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # the modules and objects of a started gateway
    with Gateway(tmp_path / "b") as gw:
        assert requests.get(f"{gw.url}/healthz", timeout=10).status_code == 200
        # Not again: a second app in the same process must not pin what the first one left behind.
        assert gc.get_freeze_count() <= frozen  # (frozen objects freed by refcount leave the count)
