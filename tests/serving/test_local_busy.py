"""The local model server under load: a client that goes away frees its slot, a full queue is a 429 with
Retry-After, and eight open streams leave the gateway's other routes answering. No timing thresholds:
the generations asked for are long (thousands of tokens) and are ended by the test, not by the clock."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.gateway import Gateway
from tests.serving.local_helpers import LOCAL, build_model, server_state, server_stats, wait_until

openai = pytest.importorskip("openai")
LONG = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3500, "temperature": 0, "stream": True}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    # A long context, so that one greedy answer runs for thousands of tokens (it never says <|im_end|>).
    return build_model(tmp_path_factory.mktemp("roots"), "tiny-long", max_position_embeddings=4096)


def _gateway(tmp: pytest.TempPathFactory, model: str, **serving: Any) -> Gateway:
    return Gateway(tmp.mktemp("gw") / "data", local_model_roots=[model.rsplit("/", 1)[0]],
                   local_serving={"threads": 1, **serving}, retry={"attempts": 1})


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory, model: str) -> Iterator[Gateway]:
    with _gateway(tmp_path_factory, model, concurrency=1, queue_size=1) as gw:
        yield gw


def open_stream(gw: Gateway, model: str) -> tuple[requests.Response, Iterator[bytes]]:
    """A streamed chat through the gateway, read until its first words have arrived."""
    r = requests.post(gw.url + "/v1/chat/completions", headers=LOCAL, json={"model": model, **LONG}, stream=True,
                      timeout=120)
    assert r.status_code == 200, r.text
    lines = r.iter_lines()
    for line in lines:
        if b'"content":"' in line and b'"content":""' not in line:
            break
    return r, lines


def test_disconnect_mid_stream_frees_the_slot(busy: Gateway, model: str) -> None:
    data = busy.settings.data_dir
    r, _ = open_stream(busy, model)
    assert server_stats(data)["active"] == 1
    before = server_stats(data)["cancelled"]
    r.close()  # the client goes away mid-answer
    stats = wait_until(lambda: (s := server_stats(data))["active"] == 0 and s)
    assert stats["cancelled"] == before + 1  # stopped by the client's leaving, not by its end
    sdk = openai.OpenAI(base_url=busy.url + "/v1", api_key="unused", default_headers=LOCAL, max_retries=0)
    answer = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    # The next request is served. The tiny model samples, so it may end (EOS) before max_tokens: CI once
    # saw 2 of 3. Served means an answer within the bound, not exactly three tokens.
    assert answer.usage is not None and 1 <= answer.usage.completion_tokens <= 3


def test_full_queue_is_a_429_with_retry_after(busy: Gateway, model: str) -> None:
    data = busy.settings.data_dir
    first, _ = open_stream(busy, model)  # generating
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(open_stream, busy, model)  # queued behind it
        wait_until(lambda: server_stats(data)["waiting"] == 1)
        sdk = openai.OpenAI(base_url=busy.url + "/v1", api_key="unused", default_headers=LOCAL, max_retries=0)
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert refused.value.status_code == 429 and refused.value.response.headers["retry-after"] == "1"
        assert refused.value.body["code"] == "server_busy"
        state = server_state(data)  # the server itself says the same
        direct = requests.post(state["url"] + "/chat/completions", headers={"Authorization": f"Bearer {state['token']}"},
                               json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert direct.status_code == 429 and direct.headers["retry-after"] == "1"
        assert direct.json()["error"]["type"] == "rate_limit_error"
        first.close()  # the queued one gets the slot
        second, _ = waiting.result(timeout=120)
        second.close()
    wait_until(lambda: server_stats(data)["active"] == 0 and server_stats(data)["waiting"] == 0)


def test_eight_open_streams_leave_healthz_answering(tmp_path_factory: pytest.TempPathFactory, model: str) -> None:
    with _gateway(tmp_path_factory, model, concurrency=8, queue_size=0) as gw:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            streams = list(pool.map(lambda _i: open_stream(gw, model), range(8)))
        try:
            assert server_stats(gw.settings.data_dir)["active"] == 8  # all eight generating right now
            for _ in range(5):
                assert requests.get(gw.url + "/healthz", timeout=10).status_code == 200
                assert requests.get(gw.url + "/v1/fine_tuning/jobs", headers=LOCAL, timeout=10).status_code == 200
            assert server_stats(gw.settings.data_dir)["active"] == 8  # and still streaming
        finally:
            for r, _ in streams:
                r.close()
        wait_until(lambda: server_stats(gw.settings.data_dir)["active"] == 0)
