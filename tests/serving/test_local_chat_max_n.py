"""`local_chat_max_n` (TUNEGATE_LOCAL_CHAT_MAX_N): the operator's cap on `n` for `local` chat completions,
below OpenAI's own 128 (``serving.request.MAX_N``, the default). Above it the gateway answers 400 in
OpenAI's error shape with `param: "n"`, for every engine, before it resolves the model or starts a server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydantic import ValidationError

from tests.gateway import Gateway
from tests.serving.local_helpers import LOCAL
from tunegate.config import Settings
from tunegate.serving.request import MAX_N

MODEL = "nobody/no-such-local-model"  # never resolved when n is refused: the refusal comes first


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("gw") / "data", local_chat_max_n=2,
                 local_model_roots=[tmp_path_factory.mktemp("roots")]) as gw:
        yield gw


def chat(gw: Gateway, **body: object) -> requests.Response:
    return requests.post(gw.url + "/v1/chat/completions", headers=LOCAL, timeout=30,
                         json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body})


def test_n_above_the_operators_cap_is_a_400_naming_it(capped: Gateway) -> None:
    answer = chat(capped, n=3)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "n" and error["type"] == "invalid_request_error" and error["code"] == "invalid_value"
    assert "from 1 to 2" in error["message"] and "local_chat_max_n" in error["message"]
    assert not (capped.settings.data_dir / "local" / "serving" / "server.json").exists()  # nothing started


def test_n_at_the_cap_passes_on_to_the_model_lookup(capped: Gateway) -> None:
    for n in (None, 1, 2):
        answer = chat(capped, n=n)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found", answer.text


def test_openais_own_bound_still_comes_first(capped: Gateway) -> None:
    answer = chat(capped, n=MAX_N + 1)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "n"
    assert f"from 1 to {MAX_N}." in answer.json()["error"]["message"]


def test_the_cap_holds_for_an_operators_vllm_server_too(tmp_path: Path) -> None:
    # `url`: a server the operator runs; nothing is started, and n above the cap is never sent to it.
    with Gateway(tmp_path / "data", local_chat_max_n=1,
                 local_serving={"engine": "vllm", "url": "http://127.0.0.1:9/v1"}) as gw:
        answer = chat(gw, n=2)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "n", answer.text
    assert "from 1 to 1" in answer.json()["error"]["message"]


def test_the_default_is_openais_cap_and_bad_values_are_refused_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().local_chat_max_n == MAX_N == 128
    monkeypatch.setenv("TUNEGATE_LOCAL_CHAT_MAX_N", "4")
    assert Settings.load().local_chat_max_n == 4
    for bad in ("0", "-1", str(MAX_N + 1), "many"):
        monkeypatch.setenv("TUNEGATE_LOCAL_CHAT_MAX_N", bad)
        with pytest.raises(ValidationError, match="local_chat_max_n"):
            Settings.load()
    monkeypatch.delenv("TUNEGATE_LOCAL_CHAT_MAX_N")
    for value in (0, MAX_N + 1):
        with pytest.raises(ValidationError, match="local_chat_max_n"):
            Settings(local_chat_max_n=value)
