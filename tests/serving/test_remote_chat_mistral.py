"""Mistral specifics: `seed` as `random_seed`, its narrower temperature, what it lacks refused by name,
its request schema respected (the stand-in enforces it), and its model cards and model delete."""

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
def ms() -> Iterator[Backend]:
    with backend("mistral") as b:
        yield b


def test_seed_becomes_random_seed(ms: Backend, gw: Gateway) -> None:
    answer = ms.client(gw).chat.completions.create(
        model=ms.model, messages=[{"role": "developer", "content": "Be brief."}, *MESSAGES[1:]], seed=11,
        max_completion_tokens=12, tool_choice="none",
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        extra_body={"safe_prompt": True})
    assert answer.choices[0].message.content == ms.standin.chat.reply
    body = ms.sent_body()
    assert body["random_seed"] == 11 and "seed" not in body and body["max_tokens"] == 12
    assert body["safe_prompt"] is True and body["messages"][0]["role"] == "system"


@pytest.mark.parametrize(("param", "value", "code"), [
    ("logit_bias", {"1": 1}, "unsupported_parameter"), ("logprobs", True, "unsupported_parameter"),
    ("temperature", 1.8, "invalid_value"), ("seed", -1, "invalid_value"), ("top_k", 3, "unsupported_parameter")])
def test_out_of_mistrals_range_is_a_400(ms: Backend, gw: Gateway, param: str, value: Any, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ms.client(gw).chat.completions.create(model=ms.model, messages=MESSAGES, extra_body={param: value})
    assert caught.value.param == param and caught.value.code == code
    assert ms.chat_requests() == []


def test_model_cards_and_delete(ms: Backend, gw: Gateway) -> None:
    client = ms.client(gw)
    tuned = train(client, ms.base_model).fine_tuned_model
    listed = {m.id: m for m in client.models.list()}
    assert {ms.model, tuned} <= set(listed)
    card = client.models.retrieve(tuned)
    assert (card.model_extra or {})["type"] == "fine-tuned" and (card.model_extra or {})["root"] == ms.base_model
    assert "Warning" not in client.models.with_raw_response.retrieve(tuned).headers  # not the deprecated API
    deleted = client.models.delete(tuned)
    assert deleted.deleted is True and deleted.id == tuned
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(tuned)
