"""Run the real gateway (uvicorn, real sockets) in a background thread for tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import requests
import uvicorn

from tests.standins.openai_like import free_port
from tunegate.app import create_app
from tunegate.config import Settings
from tunegate.store import Store
from tunegate.store.secretbox import SecretBox

T = TypeVar("T")


class Gateway:
    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = Settings(data_dir=data_dir, port=self.port,
                                 secret_key=settings.pop("secret_key", None) or _TEST_FERNET_KEY, **settings)
        self.app = create_app(self.settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Gateway:
        self._thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError("gateway did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(15)

    def with_store(self, work: Callable[[Store], Awaitable[T]]) -> T:
        """Run ``work`` on a second Store over the same database (as another process would)."""

        async def run() -> T:
            store = await Store.open(self.settings.resolved_database_url,
                                     SecretBox.from_settings(self.settings.secret_key, self.settings.data_dir))
            try:
                return await work(store)
            finally:
                await store.close()

        return asyncio.run(run())

    @property
    def services(self) -> Any:
        return self.app.state.services


_TEST_FERNET_KEY = "x7WwR7Sxrz3f8k6m1m1q9W7Q0a3hYtJg0b8p3S2qv5E="
