"""Serving plain base models on `local`: the gateway starts its model server on the first chat, and the
official openai SDK gets OpenAI's answers (JSON and streamed) from it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.gateway import Gateway
from tests.serving.local_helpers import LOCAL, build_model, server_state, server_stats

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def base_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    root = tmp_path_factory.mktemp("roots")
    model = build_model(root, "tiny-base")
    with Gateway(tmp_path_factory.mktemp("gw") / "data", local_model_roots=[root],
                 local_serving={"threads": 1}) as gw:
        yield gw, model


def client(gw: Gateway) -> Any:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", default_headers=LOCAL, max_retries=0,
                         timeout=120)


def test_base_model_chat_and_stream(base_gw: tuple[Gateway, str]) -> None:
    gw, model = base_gw
    sdk = client(gw)
    answer = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=5, temperature=0)
    assert answer.object == "chat.completion" and answer.model == model
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 5 and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 5
    again = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                        max_tokens=5, temperature=0)
    assert again.choices[0].message.content == answer.choices[0].message.content  # greedy: the same words

    chunks = list(sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.model == model for c in chunks)

    # One server process, started once, with a 0600 state file in the data directory.
    state_file = gw.settings.data_dir / "local" / "serving" / "server.json"
    assert state_file.stat().st_mode & 0o777 == 0o600
    assert server_state(gw.settings.data_dir)["engine"] == "transformers"
    assert server_stats(gw.settings.data_dir)["served"] >= 3


def test_stop_sequence_cuts_the_answer(base_gw: tuple[Gateway, str]) -> None:
    gw, model = base_gw
    sdk = client(gw)
    full = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=12,
                                       temperature=0).choices[0].message.content
    assert len(full) > 4
    stop = full[2:4]
    cut = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=12,
                                      temperature=0, stop=[stop])
    assert cut.choices[0].message.content == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=12, temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == full[:full.index(stop)]


def test_unknown_model_and_unsupported_parameters(base_gw: tuple[Gateway, str]) -> None:
    gw, model = base_gw
    sdk = client(gw)
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model=model + "-nope", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as n_stream:
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], n=2, stream=True)
    assert n_stream.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as tools:  # the tiny model's ChatML template has no tools
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert tools.value.body["param"] == "tools" and tools.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as logprobs:
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], logprobs=True)
    assert logprobs.value.body["param"] == "logprobs"
    two = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], n=2,
                                      max_tokens=3, temperature=1.0, seed=3)
    assert [c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens == 6


def test_client_host_is_never_used_for_local(base_gw: tuple[Gateway, str]) -> None:
    """The model server's token must not follow a host the client picked: x-portkey-custom-host is ignored."""
    gw, model = base_gw
    r = requests.post(gw.url + "/v1/chat/completions", headers={**LOCAL, "x-portkey-custom-host": "http://127.0.0.1:9"},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                      timeout=60)
    assert r.status_code == 200, r.text


def test_models_list_and_retrieve(base_gw: tuple[Gateway, str]) -> None:
    gw, model = base_gw
    sdk = client(gw)
    ids = [m.id for m in sdk.models.list()]
    assert model in ids
    assert sdk.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("no-such/model-here")
    with pytest.raises(openai.BadRequestError):
        sdk.models.delete(model)


def test_server_that_died_is_started_again(base_gw: tuple[Gateway, str]) -> None:
    import os
    import signal

    gw, model = base_gw
    sdk = client(gw)
    sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    first = server_state(gw.settings.data_dir)
    os.kill(first["pid"], signal.SIGKILL)
    answer = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert answer.usage.completion_tokens == 2
    second = server_state(gw.settings.data_dir)
    assert second["pid"] != first["pid"] and second["token"] != first["token"]
    assert requests.get(second["url"].removesuffix("/v1") + "/stats", timeout=5).status_code == 401  # token needed
