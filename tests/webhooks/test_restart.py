"""The gateway killed with SIGKILL between the status change and the delivery: the outbox row survived
the kill (it committed with the change), and the next gateway delivers it — once marked delivered, with
the same webhook-id even when the first attempt was already on the wire."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import openai
from aiohttp import web

from tests.gateway import _TEST_FERNET_KEY
from tests.process import ServeProcess
from tests.standins.openai_like import StandIn
from tests.webhooks.helpers import Receiver, create_job, eventually, prepare, register
from tunegate.store import Store
from tunegate.store.secretbox import SecretBox
from tunegate.webhooks.registry import Endpoints

FAST = {"TUNEGATE_WATCH__TICK_SECONDS": "0.05", "TUNEGATE_WATCH__INTERVALS": "{}",
        "TUNEGATE_WATCH__DEFAULT_INTERVAL_SECONDS": "0.1", "TUNEGATE_WATCH__BACKOFF_FACTOR": "1",
        "TUNEGATE_WATCH__LEASE_SECONDS": "2", "TUNEGATE_WEBHOOKS__TICK_SECONDS": "0.05",
        "TUNEGATE_WEBHOOKS__LEASE_SECONDS": "2", "TUNEGATE_WEBHOOKS__RETRY_BASE_SECONDS": "0.2"}


def _deliveries(data: Path, endpoint_id: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        store = await Store.open(f"sqlite+aiosqlite:///{data / 'tunegate.db'}", SecretBox(_TEST_FERNET_KEY))
        try:
            return await Endpoints(store).deliveries(endpoint_id)
        finally:
            await store.close()

    return asyncio.run(run())


def test_kill_9_after_the_change_then_delivered_after_restart(tmp_path: Path, standin: tuple[StandIn, str],
                                                              receiver: Receiver) -> None:
    s, url = standin
    data = tmp_path / "d"
    keys = prepare(data, url, s.api_key)
    # First life: the watcher records the end, the deliverer is off, so the kill lands in between.
    with ServeProcess(data, env={**FAST, "TUNEGATE_WEBHOOKS__ENABLED": "false"}) as first:
        endpoint = register(first.url, keys["alice"], receiver.url)
        job_id = create_job(first.url, keys["alice"])
        pending = eventually(lambda: _deliveries(data, endpoint["id"]))
        assert first.proc is not None
        first.proc.kill()  # SIGKILL: no shutdown code runs
        first.proc.wait(10)
    assert pending[0]["state"] == "pending" and pending[0]["attempts"] == 0 and receiver.got == []
    with ServeProcess(data, env=FAST):
        got = receiver.wait(1)
        time.sleep(1.0)
        log = _deliveries(data, endpoint["id"])
    assert len(receiver.got) == 1
    event = openai.OpenAI(api_key="x").webhooks.unwrap(got[0].body, got[0].headers, secret=endpoint["signing_secret"])
    assert event.type == "fine_tuning.job.succeeded" and event.data.id == job_id
    assert got[0].headers["webhook-id"] == pending[0]["id"]
    assert log[0]["state"] == "delivered" and log[0]["attempts"] == 1 and len(log) == 1


def test_kill_9_during_the_attempt_redelivers_the_same_id(tmp_path: Path, standin: tuple[StandIn, str]) -> None:
    s, url = standin
    data = tmp_path / "d"
    keys = prepare(data, url, s.api_key)
    arrived = threading.Event()
    receiver = Receiver()
    slow_first = [True]

    record = receiver.handle

    async def handle(request: web.Request) -> web.Response:
        response = await record(request)
        if slow_first[0]:
            slow_first[0] = False
            arrived.set()
            await asyncio.sleep(30)  # hold the first attempt open: the gateway dies waiting for the answer
        return response

    receiver.handle = handle  # type: ignore[method-assign]
    receiver.up()
    try:
        with ServeProcess(data, env=FAST) as first:
            endpoint = register(first.url, keys["alice"], receiver.url)
            create_job(first.url, keys["alice"])
            assert arrived.wait(20)
            assert first.proc is not None
            first.proc.kill()
            first.proc.wait(10)
        claimed = _deliveries(data, endpoint["id"])
        with ServeProcess(data, env=FAST):
            got = receiver.wait(2, timeout=30)  # after the dead instance's lease (2 s) runs out
            time.sleep(1.0)
            log = _deliveries(data, endpoint["id"])
    finally:
        receiver.down()
    assert claimed[0]["state"] == "pending"  # the kill came before any outcome was written
    assert len(got) == 2 and got[0].headers["webhook-id"] == got[1].headers["webhook-id"] == log[0]["id"]
    assert json.loads(got[0].body) == json.loads(got[1].body)
    assert log[0]["state"] == "delivered" and log[0]["attempts"] == 1 and len(log) == 1
