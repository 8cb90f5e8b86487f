"""Chat through tunegate on every OpenAI-shaped remote backend (OpenAI, Azure GA and v1, Together,
Mistral, Fireworks), with the unmodified openai SDK over real sockets: sync, async, streamed with and
without usage, errors before and after the first byte, retries only before it, and a tuned model
called through the registry by its owner only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway import Gateway
from tests.serving.remote_chat import BACKENDS, MESSAGES, NO_RETRY, Backend, backend, stream_text, train
from tests.standins.openai_like import reply_pieces


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("gw") / "data") as gateway:
        yield gateway


@pytest.fixture(scope="module", params=BACKENDS)
def started(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with backend(request.param) as b:
        yield b


@pytest.fixture
def be(started: Backend) -> Backend:
    started.reset()
    return started


def test_sync_chat(be: Backend, gw: Gateway) -> None:
    answer = be.client(gw).chat.completions.create(model=be.model, messages=MESSAGES, max_completion_tokens=50,
                                                   temperature=0.5, stop=["\n\n"])
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content == be.standin.chat.reply
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == "stop"  # Together's "eos" included
    assert answer.usage is not None and answer.usage.completion_tokens == len(reply_pieces(be.standin.chat.reply))
    (sent,) = be.chat_requests()
    assert sent.path == be.chat_path
    body = json.loads(sent.body)
    # OpenAI and Azure take max_completion_tokens as it is; the look-alikes read max_tokens.
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 50
    assert "stream_options" not in body


def test_stream_with_usage(be: Backend, gw: Gateway) -> None:
    chunks = list(be.client(gw).chat.completions.create(model=be.model, messages=MESSAGES, stream=True,
                                                        stream_options={"include_usage": True}))
    assert stream_text(chunks) == be.standin.chat.reply
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == len(reply_pieces(be.standin.chat.reply))
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in body)
    assert [c.choices[0].finish_reason for c in body if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert len(be.chat_requests()) == 1


def test_stream_without_usage(be: Backend, gw: Gateway) -> None:
    chunks = list(be.client(gw).chat.completions.create(model=be.model, messages=MESSAGES, stream=True))
    assert stream_text(chunks) == be.standin.chat.reply
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)  # no usage-only chunk, no empty preamble (Azure's filter results)


def test_async_chat_and_stream(be: Backend, gw: Gateway) -> None:
    async def run() -> tuple[Any, list[Any]]:
        client = be.async_client(gw)
        answer = await client.chat.completions.create(model=be.model, messages=MESSAGES)
        stream = await client.chat.completions.create(model=be.model, messages=MESSAGES, stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        await client.close()
        return answer, chunks

    answer, chunks = asyncio.run(run())
    assert answer.choices[0].message.content == be.standin.chat.reply
    assert stream_text(chunks) == be.standin.chat.reply
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_refusals_before_the_first_byte_are_sdk_exceptions(be: Backend, gw: Gateway) -> None:
    wrong = openai.OpenAI(base_url=gw.url + "/v1", api_key="wrong-key-000000", max_retries=0,
                          default_headers=be.headers)
    for stream in (False, True):
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.chat.completions.create(model=be.model, messages=MESSAGES, stream=stream)
        assert "wrong-key-000000" not in str(caught.value.body)
    unknown = "nobody/unknown-model" if be.name in ("together",) else "unknown-model"
    headers = {"x-portkey-azure-deployment-id": "no-such-deployment"} if be.name.startswith("azure") else {}
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as missing:
            be.client(gw, **headers).chat.completions.create(model=unknown, messages=MESSAGES, stream=stream)
        assert missing.value.status_code == 404
        assert str(missing.value.message)  # the provider's own words travel on
    be.standin.faults["/chat/completions"] = [429, 429]
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError):
            be.client(gw, **{"x-portkey-config": NO_RETRY}).chat.completions.create(
                model=be.model, messages=MESSAGES, stream=stream)


def test_a_429_is_retried_before_the_first_byte(be: Backend, gw: Gateway) -> None:
    be.standin.faults["/chat/completions"] = [429]
    answer = be.client(gw).chat.completions.create(model=be.model, messages=MESSAGES)
    assert answer.choices[0].message.content == be.standin.chat.reply
    assert len(be.chat_requests()) == 2
    be.reset()
    be.standin.faults["/chat/completions"] = [429]
    chunks = list(be.client(gw).chat.completions.create(model=be.model, messages=MESSAGES, stream=True))
    assert stream_text(chunks) == be.standin.chat.reply
    assert len(be.chat_requests()) == 2  # the 429 came before the stream started


def test_an_error_mid_stream_is_an_api_error_and_never_retried(be: Backend, gw: Gateway) -> None:
    be.standin.chat.fail_after = 2
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in be.client(gw).chat.completions.create(model=be.model, messages=MESSAGES, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                seen.append(chunk.choices[0].delta.content)
    assert "error while processing" in str(caught.value.message)
    assert "".join(seen) == "".join(reply_pieces(be.standin.chat.reply)[:2])
    assert len(be.chat_requests()) == 1  # after the first byte nothing is sent again


def test_tuned_model_needs_no_provider_header_and_is_its_owners(started: Backend, tmp_path: Path) -> None:
    be = started
    be.reset()
    with Gateway(tmp_path / "data") as gw:
        options = {**be.options}
        if be.name.startswith("azure"):
            options["azure_deployment_id"] = "tuned-deploy"
        gw.with_store(lambda s: s.add_connection("remote", be.provider, {"api_key": be.key}, base_url=be.host,
                                                 options=options))
        alice = gw.with_store(lambda s: s.create_key("alice", ["remote"]))[1]
        bob = gw.with_store(lambda s: s.create_key("bob", ["remote"]))[1]
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=alice, max_retries=0,
                               default_headers={"x-portkey-provider": be.provider})
        tuned = train(client, be.base_model).fine_tuned_model
        if be.after_tuned is not None:
            be.after_tuned(be, gw, tuned, {"Authorization": f"Bearer {alice}"})
        bare = openai.OpenAI(base_url=gw.url + "/v1", api_key=alice, max_retries=0)  # no provider header
        answer = bare.chat.completions.create(model=tuned, messages=MESSAGES)
        assert answer.choices[0].message.content == be.standin.chat.reply
        chunks = list(bare.chat.completions.create(model=tuned, messages=MESSAGES, stream=True))
        assert stream_text(chunks) == be.standin.chat.reply
        assert be.standin.requests[-1].headers.get("Authorization", f"Bearer {be.key}") == f"Bearer {be.key}"
        other = openai.OpenAI(base_url=gw.url + "/v1", api_key=bob, max_retries=0)
        sent = len(be.chat_requests())
        for stream in (False, True):
            with pytest.raises(openai.NotFoundError):
                other.chat.completions.create(model=tuned, messages=MESSAGES, stream=stream)
        with pytest.raises(openai.NotFoundError):
            other.models.retrieve(tuned)
        assert len(be.chat_requests()) == sent  # bob's calls never reached the provider
