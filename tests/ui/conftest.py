from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread
from tests.ui.standin import MetricsStandIn
from tunegate.webhooks.settings import WatchSettings

EXAMPLES = b"".join(
    json.dumps({"messages": [{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": f"Say {i}"},
                             {"role": "assistant", "content": f"{i}"}]}).encode() + b"\n"
    for i in range(12)
)


@dataclass
class Env:
    gateway: Gateway
    standin: MetricsStandIn
    key: str
    key_id: str
    tmp: Path

    @property
    def cli_env(self) -> dict[str, str]:
        return {"TUNEGATE_URL": self.gateway.url, "TUNEGATE_API_KEY": self.key, "TUNEGATE_PROVIDER": "openai",
                "COLUMNS": "160"}

    def training_file(self, name: str = "train.jsonl", data: bytes = EXAMPLES) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A gateway with one tunegate key and one stored OpenAI connection pointing at the stand-in."""
    standin = MetricsStandIn()
    # No job watcher: the stand-in advances per retrieve, so these tests follow jobs by live reads (a watcher
    # claiming a job mid-test would make `jobs watch` wait for its 10 s polls); tests/webhooks cover snapshots.
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data", watch=WatchSettings(enabled=False)) as gw:
        async def setup(store):  # type: ignore[no-untyped-def]
            await store.add_connection("oa", "openai", {"api_key": standin.api_key}, base_url=upstream.url)
            key, full = await store.create_key("ci", ["*"])
            return key.id, full

        key_id, full = gw.with_store(setup)
        yield Env(gw, standin, full, key_id, tmp_path)
