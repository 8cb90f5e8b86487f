"""The chat route's own contract, whatever the provider: request checks, errors before and after the
first byte, no retry once streaming, client disconnect closing the provider's stream, registry routing
of tuned models without a provider header, and per-key isolation.

The upstream here is a scripted OpenAI-shaped chat server (shapes: openai-python
``types/chat/chat_completion_chunk.py``), not a provider stand-in: each test tells it how to misbehave.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from aiohttp import web

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread
from tests.test_errors import assert_error
from tests.test_keys_and_connections import cli, make_key

MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class Scripted:
    """Answers /v1/chat/completions as told: `before` statuses first, then `words` as a stream; `fail_after`
    breaks the stream (an error event, or a cut connection) after that many chunks."""

    words: list[str] = field(default_factory=lambda: ["Hel", "lo", "!"])
    before: list[int] = field(default_factory=list)
    fail_after: int | None = None
    fail_with: str = "event"  # event | cut
    delay: float = 0.0
    seen: list[dict[str, Any]] = field(default_factory=list)
    closed_early: list[int] = field(default_factory=list)  # chunk counts at which the client went away

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(body)
        if self.before:
            status = self.before.pop(0)
            return web.json_response({"error": {"message": f"scripted {status}", "type": "server_error",
                                                "param": None, "code": None}}, status=status)
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-s", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(self.words)}}],
                "usage": {"prompt_tokens": 2, "completion_tokens": len(self.words), "total_tokens": 2 + len(self.words)}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        sent = 0
        try:
            for i, word in enumerate(self.words):
                if self.fail_after is not None and i == self.fail_after:
                    if self.fail_with == "cut":
                        assert request.transport is not None
                        request.transport.close()
                        return resp
                    await resp.write(b'data: {"error": {"message": "scripted failure", "code": "boom"}}\n\n')
                    return resp
                chunk = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                sent += 1
                if self.delay:
                    await asyncio.sleep(self.delay)
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.closed_early.append(sent)
            raise
        return resp


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Scripted, Gateway, Path]]:
    data = tmp_path / "data"
    scripted = Scripted()
    with ServerThread(scripted.app()) as upstream:
        cli(data, "connections", "add", "team", "--provider", "openai", "--base-url", upstream.url + "/v1",
            "--api-key", "sk-upstream-000000")
        with Gateway(data) as gw:
            yield scripted, gw, data


def client(gw: Gateway, key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, default_headers=headers)


@pytest.mark.parametrize(("change", "param"), [
    ({"model": None}, "model"), ({"messages": []}, "messages"), ({"messages": [{"role": "robot"}]}, "messages[0].role"),
    ({"n": 0}, "n"), ({"temperature": 2.5}, "temperature"), ({"top_p": -1}, "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"max_tokens": 0}, "max_tokens"), ({"stream": "yes"}, "stream"), ({"tools": "all"}, "tools"),
])
def test_bad_requests_are_400_and_never_sent(rig: tuple[Scripted, Gateway, Path], change: dict[str, Any],
                                             param: str) -> None:
    scripted, gw, data = rig
    key = make_key(data, "alice", "team")
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, **change}
    body = {k: v for k, v in body.items() if v is not None}
    resp = requests.post(gw.url + "/v1/chat/completions", json=body,
                         headers={"x-portkey-api-key": key, "x-portkey-provider": "openai"})
    assert_error(resp, 400, param=param)
    assert scripted.seen == []


def test_stream_arrives_chunk_by_chunk_with_done(rig: tuple[Scripted, Gateway, Path]) -> None:
    scripted, gw, data = rig
    key = make_key(data, "alice", "team")
    with requests.post(gw.url + "/v1/chat/completions", stream=True, timeout=30,
                       json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
                       headers={"x-portkey-api-key": key, "x-portkey-provider": "openai"}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert events[-1] == b"data: [DONE]"
    words = [json.loads(e[len(b"data: "):])["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert words == ["Hel", "lo", "!"]


def test_error_mid_stream_reaches_the_sdk_as_api_error(rig: tuple[Scripted, Gateway, Path]) -> None:
    scripted, gw, data = rig
    scripted.fail_after = 2
    key = make_key(data, "alice", "team")
    got = []
    with pytest.raises(openai.APIError, match="scripted failure"):
        for chunk in client(gw, key, **{"x-portkey-provider": "openai"}).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
            got.append(chunk.choices[0].delta.content)
    assert got == ["Hel", "lo"]


def test_cut_stream_is_an_error_and_is_not_retried(rig: tuple[Scripted, Gateway, Path]) -> None:
    scripted, gw, data = rig
    scripted.fail_after, scripted.fail_with = 1, "cut"
    key = make_key(data, "alice", "team")
    config = json.dumps({"retry": {"attempts": 3, "on_status_codes": [503]}})
    with pytest.raises(openai.APIError, match="broke off"):
        for _ in client(gw, key, **{"x-portkey-provider": "openai", "x-portkey-config": config}).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
            pass
    assert len(scripted.seen) == 1  # once the first byte went out, nothing is tried again


def test_refusal_before_the_first_byte_is_retried_then_streams(rig: tuple[Scripted, Gateway, Path]) -> None:
    scripted, gw, data = rig
    scripted.before = [503]
    key = make_key(data, "alice", "team")
    config = json.dumps({"retry": {"attempts": 2, "on_status_codes": [503]}})
    words = [c.choices[0].delta.content for c in client(
        gw, key, **{"x-portkey-provider": "openai", "x-portkey-config": config}).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True)]  # type: ignore[arg-type]
    assert words == ["Hel", "lo", "!"] and len(scripted.seen) == 2
    scripted.before = [401]
    with pytest.raises(openai.AuthenticationError, match="scripted 401"):
        client(gw, key, **{"x-portkey-provider": "openai"}).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]


def test_client_disconnect_closes_the_provider_stream(rig: tuple[Scripted, Gateway, Path]) -> None:
    scripted, gw, data = rig
    scripted.words = [f"w{i} " for i in range(400)]
    scripted.delay = 0.01
    key = make_key(data, "alice", "team")
    with requests.post(gw.url + "/v1/chat/completions", stream=True, timeout=30,
                       json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
                       headers={"x-portkey-api-key": key, "x-portkey-provider": "openai"}) as resp:
        next(resp.iter_lines())
    deadline = time.monotonic() + 20
    while not scripted.closed_early and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scripted.closed_early and scripted.closed_early[0] < 400


def _own_model(gw: Gateway, data: Path, owner_key: str, name: str) -> None:
    key_id = owner_key.split("-")[1]

    async def work(store: Any) -> None:
        keys = {k.id: k for k in await store.list_keys()}
        assert key_id in keys
        await store.record("model", name, "openai", "team", key_id, "available", {"job": "ftjob-x"})

    gw.with_store(work)


def test_tuned_model_needs_no_provider_header_and_is_invisible_to_other_keys(
        rig: tuple[Scripted, Gateway, Path]) -> None:
    scripted, gw, data = rig
    alice, bob = make_key(data, "alice", "team"), make_key(data, "bob", "team")
    name = "ft:gpt-4o-mini-2024-07-18:org:marv:ftjob-abc"
    _own_model(gw, data, alice, name)
    answer = client(gw, alice).chat.completions.create(model=name, messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Hello!" and scripted.seen[-1]["model"] == name
    with pytest.raises(openai.NotFoundError):
        client(gw, bob).chat.completions.create(model=name, messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client(gw, bob, **{"x-portkey-provider": "openai"}).chat.completions.create(
            model=name, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    assert len(scripted.seen) == 1


def test_metrics_count_time_to_first_token_and_tokens(rig: tuple[Scripted, Gateway, Path]) -> None:
    scripted, gw, data = rig
    key = make_key(data, "alice", "team")
    model = "gpt-metrics-probe"  # counters are per process: a name no other test uses
    list(client(gw, key, **{"x-portkey-provider": "openai"}).chat.completions.create(
        model=model, messages=MESSAGES, stream=True))  # type: ignore[arg-type]
    text = requests.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {key}"}).text
    assert f'tunegate_chat_time_to_first_token_seconds_count{{model="{model}",provider="openai"}} 1.0' in text
    assert f'tunegate_chat_output_tokens_total{{model="{model}",provider="openai"}} 3.0' in text
