"""The request log (finding 17): anonymous 401s write no row (they are counted in the metrics), and the
table is pruned to its retention (rows and age) while the gateway runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from tests.gateway import Gateway


def _rows(gw: Gateway) -> list[dict[str, Any]]:
    gw.app.state.services.store  # noqa: B018 - the gateway is up
    return gw.with_store(lambda store: store.recent_requests(10_000))


def _key(gw: Gateway) -> str:
    async def make(store):  # type: ignore[no-untyped-def]
        return (await store.create_key("team", ["*"]))[1]

    return gw.with_store(make)  # type: ignore[no-any-return]


def _wait(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_anonymous_401s_write_no_rows_and_are_counted(gateway: Gateway) -> None:
    key = _key(gateway)
    for _ in range(30):
        assert requests.get(gateway.url + "/v1/fine_tuning/jobs", timeout=10).status_code == 401
    good = requests.get(gateway.url + "/v1/files", timeout=10,
                        headers={"Authorization": f"Bearer {key}", "x-portkey-provider": "tunegate"})
    assert good.status_code == 403  # authenticated, yet refused: logged (the key has no connection)
    rows = _wait(lambda: [r for r in _rows(gateway) if r["path"] == "/v1/files"] and _rows(gateway))
    assert [r["status"] for r in rows if r["status"] == 401] == []
    text = requests.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("tunegate_requests_total{")
                and 'provider="none"' in x and 'operation="list_jobs"' in x and 'status="401"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 30


def test_the_log_is_pruned_to_its_newest_rows(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d", request_log_max_rows=10, request_log_prune_seconds=0.2) as gw:
        for _ in range(40):
            requests.get(gw.url + "/v1/files", headers={"x-portkey-provider": "tunegate"}, timeout=10)
        assert _wait(lambda: 0 < len(_rows(gw)) <= 10 and requests.get(gw.url + "/healthz").ok)
        assert len(_rows(gw)) <= 10


def test_entries_older_than_the_retention_are_pruned(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d", request_log_max_age_days=7, request_log_prune_seconds=0.2) as gw:
        old = time.time() - 8 * 86400

        async def backdate(store):  # type: ignore[no-untyped-def]
            for i in range(25):
                store.log_request(dict(ts=old + i, trace_id=f"old{i}", key_id=None, provider=None, operation=None,
                                       method="GET", path="/v1/old", status=200, upstream_status=None,
                                       latency_ms=1.0))
            await store.flush_log()

        gw.with_store(backdate)
        requests.get(gw.url + "/v1/files", headers={"x-portkey-provider": "tunegate"}, timeout=10)
        assert _wait(lambda: not [r for r in _rows(gw) if r["path"] == "/v1/old"]
                     and [r for r in _rows(gw) if r["path"] == "/v1/files"])
