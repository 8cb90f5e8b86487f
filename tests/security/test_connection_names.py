"""Connection names cannot be enumerated (finding 23; the fix lives in tunegate/context.py): for a key
granted some connections, naming one it is not granted and naming one that does not exist get the same
answer, status and words alike. Over the real server."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.gateway import Gateway


def test_not_granted_and_nonexistent_connections_answer_alike(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d") as gw:
        async def setup(store):  # type: ignore[no-untyped-def]
            await store.add_connection("team-a", "openai", {"api_key": "sk-a-000000"})
            await store.add_connection("team-b", "mistral-ai", {"api_key": "sk-b-000000"})
            return (await store.create_key("alice", ["team-a"]))[1]

        key = gw.with_store(setup)

        def ask(name: str, **extra: str) -> tuple[int, str]:
            r = requests.get(gw.url + "/v1/files", timeout=10, headers={
                "Authorization": f"Bearer {key}", "x-portkey-virtual-key": name, **extra})
            return r.status_code, r.text.replace(name, "NAME")

        for extra in ({}, {"x-portkey-provider": "openai"}, {"x-portkey-provider": "mistral-ai"}):
            assert ask("team-b", **extra) == ask("no-such-connection", **extra), extra
        assert "mistral" not in ask("team-b")[1]  # nor is the other team's provider said
