"""Two gateway instances on one database receive the same create with the same Idempotency-Key at the
same moment: exactly one job is created at the provider, and both clients end up with that job (one of
them may first get 409 ``idempotency_in_progress`` and then the job on retry).

SQLite: two instances on one data directory (one file). PostgreSQL: set ``TUNEGATE_TEST_POSTGRES_URL``
(``postgresql+asyncpg://…``)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, StandIn

ROUNDS = 6


@web.middleware
async def _slow_creates(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.method == "POST" and request.path == "/fine_tuning/jobs":
        await asyncio.sleep(0.3)  # keeps the first claim pending while the other instance arrives
    return await handler(request)  # type: ignore[no-any-return]


@pytest.fixture
def standin() -> Iterator[tuple[StandIn, str]]:
    s = StandIn()
    app = s.app()
    app.middlewares.insert(0, _slow_creates)
    with ServerThread(app) as server:
        s.files["file-1"] = {"id": "file-1"}
        yield s, server.url


def _race(urls: list[str], upstream: str, key: str, standin: StandIn) -> list[dict[str, Any]]:
    body = {"model": "gpt-4o-mini", "training_file": "file-1", "suffix": "race"}
    headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream,
               "Authorization": f"Bearer {standin.api_key}", "Idempotency-Key": key}
    barrier = threading.Barrier(len(urls))
    results: list[dict[str, Any]] = [{} for _ in urls]

    def client(i: int, url: str) -> None:
        barrier.wait()
        statuses = []
        deadline = time.monotonic() + 20
        while True:
            resp = requests.post(url + "/v1/fine_tuning/jobs", json=body, headers=headers, timeout=30)
            statuses.append(resp.status_code)
            if resp.status_code == 409 and time.monotonic() < deadline:
                assert resp.json()["error"]["code"] == "idempotency_in_progress", resp.text
                time.sleep(0.1)
                continue
            break
        results[i] = {"statuses": statuses, "body": resp.json()}

    threads = [threading.Thread(target=client, args=(i, u)) for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _check(results: list[dict[str, Any]], standin: StandIn, jobs_before: int) -> None:
    assert len(standin.jobs) == jobs_before + 1, (results, list(standin.jobs))
    ids = {r["body"].get("id") for r in results}
    assert len(ids) == 1 and None not in ids, results
    for r in results:
        assert r["statuses"][-1] == 200, r
        assert set(r["statuses"][:-1]) <= {409}, r


def _two_instances(tmp_path: Path, database_url: str | None) -> tuple[Gateway, Gateway]:
    data = tmp_path / "shared-data"
    return Gateway(data, database_url=database_url), Gateway(data, database_url=database_url)


def test_two_instances_sqlite(tmp_path: Path, standin: tuple[StandIn, str]) -> None:
    s, upstream = standin
    a, b = _two_instances(tmp_path, None)
    with a, b:
        assert a.settings.resolved_database_url == b.settings.resolved_database_url
        for _n in range(ROUNDS):
            before = len(s.jobs)
            _check(_race([a.url, b.url], upstream, f"sqlite-{uuid.uuid4()}", s), s, before)
        creates = [r for r in s.requests if r.method == "POST" and r.path == "/fine_tuning/jobs"]
        assert len(creates) == ROUNDS


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("TUNEGATE_TEST_POSTGRES_URL"), reason="TUNEGATE_TEST_POSTGRES_URL not set")
def test_two_instances_postgres(tmp_path: Path, standin: tuple[StandIn, str]) -> None:
    s, upstream = standin
    a, b = _two_instances(tmp_path, os.environ["TUNEGATE_TEST_POSTGRES_URL"])
    with a, b:
        for _n in range(ROUNDS):
            before = len(s.jobs)
            _check(_race([a.url, b.url, a.url, b.url], upstream, f"pg-{uuid.uuid4()}", s), s, before)
