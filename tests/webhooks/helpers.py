"""Shared parts of the webhook tests: a receiver on a real socket, fast watcher settings, keys and a
stored connection to the OpenAI stand-in."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.gateway import _TEST_FERNET_KEY
from tests.standins.openai_like import ServerThread, StandIn, free_port
from tests.test_errors import TRAINING
from tunegate.store import Store
from tunegate.store.secretbox import SecretBox
from tunegate.webhooks.settings import WatchSettings, WebhookSettings

FAST_WATCH = WatchSettings(tick_seconds=0.05, intervals={}, default_interval_seconds=0.1, backoff_factor=1.0,
                           error_backoff_seconds=0.1, lease_seconds=2.0)
FAST_HOOKS = WebhookSettings(tick_seconds=0.05, retry_base_seconds=0.2, retry_max_seconds=0.5, timeout_seconds=3.0)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver: records every POST; answers `status` (or the next of `script`)."""

    port: int = field(default_factory=free_port)
    status: int = 200
    script: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)
    _server: ServerThread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            self.got.append(Received(dict(request.headers), body, time.time()))
            status = self.script.pop(0) if self.script else self.status
        return web.Response(status=status, text="ok")

    def up(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._server = ServerThread(app, port=self.port)
        self._server.__enter__()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.__exit__(None, None, None)
            self._server = None

    def wait(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.got) < count:
            time.sleep(0.02)
        return list(self.got)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().up()
    yield r
    r.down()


@pytest.fixture
def standin() -> Iterator[tuple[StandIn, str]]:
    s = StandIn()
    with ServerThread(s.app()) as server:
        yield s, server.url


def prepare(data_dir: Path, standin_url: str, api_key: str, keys: tuple[str, ...] = ("alice",),
            database_url: str | None = None) -> dict[str, str]:
    """Keys (name -> full key) granted one stored connection `oa` to the stand-in."""
    url = database_url or f"sqlite+aiosqlite:///{data_dir / 'tunegate.db'}"

    async def run() -> dict[str, str]:
        store = await Store.open(url, SecretBox(_TEST_FERNET_KEY))
        try:
            await store.add_connection("oa", "openai", {"api_key": api_key}, base_url=standin_url)
            return {name: (await store.create_key(name, ["oa"]))[1] for name in keys}
        finally:
            await store.close()

    data_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run())


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0,
                         default_headers={"x-portkey-provider": "openai"})


def create_job(url: str, key: str, model: str = "gpt-4o-mini-2024-07-18") -> str:
    c = client(url, key)
    f = c.files.create(file=("t.jsonl", io.BytesIO(TRAINING)), purpose="fine-tune")
    return c.fine_tuning.jobs.create(training_file=f.id, model=model).id


def register(url: str, key: str, target: str, event_types: list[str] | None = None) -> dict[str, Any]:
    import requests

    body: dict[str, Any] = {"url": target, "name": "test"}
    if event_types is not None:
        body["event_types"] = event_types
    answer = requests.post(url + "/v1/webhooks", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
