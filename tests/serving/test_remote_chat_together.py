"""Together AI specifics: each of OpenAI's parameters mapped or refused by name, Together's extras sent as
given, `stop` as an array, `developer` as a system message, and its bare model list."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.gateway import Gateway
from tests.serving.remote_chat import MESSAGES, Backend, backend, train


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("gw") / "data") as gateway:
        yield gateway


@pytest.fixture
def tg() -> Iterator[Backend]:
    with backend("together") as b:
        yield b


def test_request_mapping(tg: Backend, gw: Gateway) -> None:
    tg.client(gw).chat.completions.create(
        model=tg.model, messages=[{"role": "developer", "content": "Be brief."}, *MESSAGES[1:]], stop="END", seed=3,
        max_tokens=9, n=2, extra_body={"top_k": 40, "repetition_penalty": 1.1})
    body = tg.sent_body()
    assert body["stop"] == ["END"] and body["seed"] == 3 and body["max_tokens"] == 9 and body["n"] == 2
    assert body["top_k"] == 40 and body["repetition_penalty"] == 1.1
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(("param", "value"), [("logprobs", True), ("parallel_tool_calls", False), ("user", "u"),
                                              ("store", True), ("mirostat_lr", 0.1)])
def test_what_together_lacks_is_a_400_naming_it(tg: Backend, gw: Gateway, param: str, value: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        tg.client(gw).chat.completions.create(model=tg.model, messages=MESSAGES, extra_body={param: value})
    assert caught.value.param == param and caught.value.code == "unsupported_parameter"
    assert tg.chat_requests() == []


def test_models_from_the_bare_list(tg: Backend, gw: Gateway) -> None:
    client = tg.client(gw)
    tuned = train(client, tg.base_model).fine_tuned_model
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == {tg.model, tuned}
    assert listed[tg.model].owned_by == "meta-llama" and listed[tg.model].object == "model"
    assert client.models.retrieve(tuned).id == tuned
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nobody/none")
    with pytest.raises(openai.BadRequestError) as no_delete:
        client.models.delete(tuned)
    assert no_delete.value.code == "unsupported_operation"
    answer = client.chat.completions.create(model=tuned, messages=MESSAGES)  # a tuned model by its output name
    assert answer.choices[0].finish_reason == "stop"
