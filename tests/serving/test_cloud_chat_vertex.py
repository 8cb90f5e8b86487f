"""Chat on Vertex AI through the gateway with the unmodified `openai` SDK (sync, async, streaming): OpenAI's
chat completions translated to generateContent / streamGenerateContent?alt=sse against the stand-in
(``tests/standins/vertex_chat.py``: every request validated against Google's discovery schema, every answer
checked against it here), with a real service-account JSON whose token google-auth mints against the
stand-in. Train → chat by the job's fine_tuned_model (its endpoint) runs with no provider header."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
import requests

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread
from tests.standins.vertex import PROJECT_NUMBER, json_schema, make_service_account
from tests.standins.vertex_chat import VertexChatStandIn

NO_RETRY = json.dumps({"retry": {"attempts": 0}})
TOOLS: Any = [{"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                                 "parameters": {"type": "object", "properties": {
                                                     "city": {"type": "string"}}, "required": ["city"]}}}]


@dataclass
class Rig:
    standin: VertexChatStandIn
    gw: Gateway
    url: str
    info: dict[str, Any]

    def headers(self, provider: bool = True) -> dict[str, str]:
        base = {"x-portkey-custom-host": self.url + "/v1", "x-portkey-vertex-project-id": "tg-project",
                "x-portkey-vertex-region": "us-central1", "x-portkey-vertex-service-account-json": json.dumps(self.info),
                "x-portkey-vertex-storage-bucket-name": "tg-training-data", "x-portkey-config": NO_RETRY}
        return {"x-portkey-provider": "vertex-ai", **base} if provider else base

    def sdk(self, provider: bool = True) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gw.url + "/v1", api_key="not-a-google-token", max_retries=0,
                             default_headers=self.headers(provider))

    def async_sdk(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.gw.url + "/v1", api_key="not-a-google-token", max_retries=0,
                                  default_headers=self.headers())

    def generate_calls(self) -> list[str]:
        return [r.path for r in self.standin.requests if "Content" in r.path]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    standin = VertexChatStandIn(token_delay=0.0)
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        standin.url = upstream.url
        info, public_key = make_service_account(standin.token_uri)
        standin.register(info, public_key)
        yield Rig(standin, gw, upstream.url, info)


# ---- the stand-in against Google's discovery document -----------------------------------------------


def test_standin_answers_match_the_discovery_schema(rig: Rig) -> None:
    discovery = rig.standin.generate_discovery
    if discovery is None:
        pytest.skip("../shared/specs is not beside the checkout")
    schema = json_schema(discovery, "GoogleCloudAiplatformV1GenerateContentResponse")
    rig.standin.tokens["ya29.direct"] = (rig.info["client_email"], 4e9)
    h = {"Authorization": "Bearer ya29.direct"}
    endpoint = rig.standin.add_endpoint()
    body = {"contents": [{"role": "user", "parts": [{"text": "a b"}]}], "generationConfig": {"candidateCount": 2}}
    answer = requests.post(f"{rig.url}/v1/{endpoint}:generateContent", json=body, headers=h, timeout=10).json()
    jsonschema.Draft7Validator(schema).validate(answer)
    assert [c["content"]["parts"][0]["text"] for c in answer["candidates"]] == ["echo: a b", "echo: a b #1"]
    stream = requests.post(f"{rig.url}/v1/{endpoint}:streamGenerateContent", params={"alt": "sse"}, json=body,
                           headers=h, timeout=10)
    events = [json.loads(line[6:]) for line in stream.text.split("\r\n") if line.startswith("data: ")]
    assert len(events) == 7 and events[-1]["candidates"][0]["finishReason"] == "STOP"
    for event in events:
        jsonschema.Draft7Validator(schema).validate(event)
    tooled = requests.post(f"{rig.url}/v1/{endpoint}:generateContent", headers=h, timeout=10, json={
        **body, "tools": [{"functionDeclarations": [{"name": "weather"}]}]}).json()
    jsonschema.Draft7Validator(schema).validate(tooled)
    refused = requests.post(f"{rig.url}/v1/{endpoint}:generateContent", json={**body, "nonsense": 1}, headers=h,
                            timeout=10)
    assert refused.status_code == 400 and "nonsense" in refused.json()["error"]["message"]


# ---- chat ------------------------------------------------------------------------------------------


def test_chat_on_an_endpoint_translates_both_ways(rig: Rig) -> None:
    endpoint = rig.standin.add_endpoint()
    answer = rig.sdk().chat.completions.create(
        model=endpoint, n=2, seed=11, temperature=1.5, top_p=0.5, max_tokens=20, presence_penalty=0.1, stop=["zzz"],
        messages=[{"role": "system", "content": "Be terse."},
                  {"role": "user", "content": [{"type": "text", "text": "hello"},
                                               {"type": "image_url", "image_url": {"url": "gs://b/cat.png"}}]}])
    assert answer.model == endpoint and [c.message.content for c in answer.choices] == ["echo: hello",
                                                                                       "echo: hello #1"]
    assert [c.index for c in answer.choices] == [0, 1] and answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    assert rig.standin.generate_bodies[-1] == {
        "contents": [{"role": "user", "parts": [{"text": "hello"},
                                                {"fileData": {"mimeType": "image/png", "fileUri": "gs://b/cat.png"}}]}],
        "systemInstruction": {"parts": [{"text": "Be terse."}]},
        "generationConfig": {"maxOutputTokens": 20, "temperature": 1.5, "topP": 0.5, "seed": 11,
                             "presencePenalty": 0.1, "candidateCount": 2, "stopSequences": ["zzz"]}}
    assert rig.generate_calls() == [f"/v1/{endpoint}:generateContent"]


def test_base_model_goes_to_the_publisher_model(rig: Rig) -> None:
    answer = rig.sdk().chat.completions.create(model="gemini-2.5-flash", max_completion_tokens=2,
                                               messages=[{"role": "user", "content": "one two three"}],
                                               response_format={"type": "json_object"})
    assert answer.choices[0].message.content == "echo: one" and answer.choices[0].finish_reason == "length"
    assert rig.generate_calls() == [
        "/v1/projects/tg-project/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent"]
    assert rig.standin.generate_bodies[-1]["generationConfig"] == {"maxOutputTokens": 2,
                                                                   "responseMimeType": "application/json"}
    with pytest.raises(openai.NotFoundError):
        rig.sdk().chat.completions.create(model="gemini-0-nothing", messages=[{"role": "user", "content": "x"}])


def test_tools_round_trip(rig: Rig) -> None:
    endpoint = rig.standin.add_endpoint()
    client = rig.sdk()
    first = client.chat.completions.create(model=endpoint, tools=TOOLS, tool_choice={
        "type": "function", "function": {"name": "weather"}}, messages=[{"role": "user", "content": "Paris?"}])
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls" and first.choices[0].message.content is None
    assert call.function.name == "weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    sent = rig.standin.generate_bodies[-1]
    assert sent["tools"] == [{"functionDeclarations": [{"name": "weather", "description": "Weather in a city",
                                                        "parametersJsonSchema": TOOLS[0]["function"]["parameters"]}]}]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}}
    second = client.chat.completions.create(model=endpoint, tools=TOOLS, messages=[
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    assert second.choices[0].message.content == 'echo: {"output": "sunny"}'
    assert rig.standin.generate_bodies[-1]["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {"output": "sunny"}}}]}]

    chunks = list(client.chat.completions.create(model=endpoint, tools=TOOLS, stream=True,
                                                 messages=[{"role": "user", "content": "Paris?"}]))
    calls = [tc for c in chunks for ch in c.choices for tc in (ch.delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id and calls[0].function.name == "weather"  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_stream_sync_with_usage(rig: Rig) -> None:
    endpoint = rig.standin.add_endpoint()
    chunks = list(rig.sdk().chat.completions.create(model=endpoint, stream=True, stream_options={
        "include_usage": True}, messages=[{"role": "user", "content": "a b c"}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: a b c"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1]) and len({c.id for c in chunks}) == 1
    assert rig.generate_calls() == [f"/v1/{endpoint}:streamGenerateContent"]
    assert next(r for r in rig.standin.requests if "Content" in r.path).query == {"alt": "sse"}


def test_stream_async_and_chat_async(rig: Rig) -> None:
    endpoint = rig.standin.add_endpoint()
    rig.standin.chunk_delay = 0.01

    async def run() -> tuple[list[Any], Any]:
        client = rig.async_sdk()
        stream = await client.chat.completions.create(model=endpoint, stream=True, n=2,
                                                      messages=[{"role": "user", "content": "x"}])
        chunks = [c async for c in stream]
        return chunks, await client.chat.completions.create(model=endpoint, messages=[{"role": "user", "content": "y"}])

    chunks, answer = asyncio.run(run())
    by_index: dict[int, str] = {}
    for c in chunks:
        for ch in c.choices:
            by_index[ch.index] = by_index.get(ch.index, "") + (ch.delta.content or "")
    assert by_index == {0: "echo: x", 1: "echo: x #1"} and all(c.usage is None for c in chunks)
    assert answer.choices[0].message.content == "echo: y"


def test_error_event_mid_stream_is_an_api_error(rig: Rig) -> None:
    endpoint = rig.standin.add_endpoint()
    rig.standin.stream_fault = (2, 503, "UNAVAILABLE", "The model is overloaded.")
    stream = rig.sdk().chat.completions.create(model=endpoint, stream=True,
                                               messages=[{"role": "user", "content": "a b c"}])
    seen = []
    with pytest.raises(openai.APIError, match="overloaded") as caught:
        for chunk in stream:
            seen.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(seen) == "echo: a" and caught.value.code == "unavailable"  # type: ignore[attr-defined]


def test_errors_before_the_first_byte_are_ordinary_sdk_errors(rig: Rig) -> None:
    endpoint = rig.standin.add_endpoint()
    client = rig.sdk()
    rig.standin.faults["streamGenerateContent"] = [429]
    with pytest.raises(openai.RateLimitError, match="scripted 429"):
        client.chat.completions.create(model=endpoint, stream=True, messages=[{"role": "user", "content": "a"}])
    rig.standin.stream_fault = (0, 400, "INVALID_ARGUMENT", "Request contains an invalid argument.")
    with pytest.raises(openai.BadRequestError, match="invalid argument"):
        client.chat.completions.create(model=endpoint, stream=True, messages=[{"role": "user", "content": "a"}])
    gone = endpoint.rsplit("/", 1)[0] + "/999"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=gone, stream=True, messages=[{"role": "user", "content": "a"}])


@pytest.mark.parametrize("extra, param", [
    ({"logprobs": True}, "logprobs"), ({"user": "u-1"}, "user"), ({"tool_choice": "auto"}, "tool_choice"),
    ({"parallel_tool_calls": False, "tools": TOOLS}, "parallel_tool_calls"), ({"seed": 2**40}, "seed"),
    ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y"}}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"model": "projects/p1/locations/us-central1/models/123@1"}, "model"),
])
def test_what_vertex_lacks_is_a_400_never_sent(rig: Rig, extra: dict[str, Any], param: str) -> None:
    body: dict[str, Any] = {"model": rig.standin.add_endpoint(), "messages": [{"role": "user", "content": "hi"}],
                            **extra}
    r = requests.post(rig.gw.url + "/v1/chat/completions", headers=rig.headers(), json=body, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert rig.generate_calls() == []


# ---- tuned model: train, then chat ------------------------------------------------------------------


def test_train_then_chat_by_fine_tuned_model_without_a_provider_header(rig: Rig) -> None:
    client = rig.sdk()
    job = client.fine_tuning.jobs.create(model="gemini-2.5-flash", training_file="gs://tg-training-data/t.jsonl",
                                         suffix="weather")
    for _ in range(5):
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status == "succeeded":
            break
    tuned = job.fine_tuned_model
    assert tuned and f"projects/{PROJECT_NUMBER}/locations/us-central1/endpoints/" in tuned
    plain = rig.sdk(provider=False)
    answer = plain.chat.completions.create(model=tuned, messages=[{"role": "user", "content": "trained?"}])
    assert answer.choices[0].message.content == "echo: trained?" and answer.model == tuned
    streamed = plain.chat.completions.create(model=tuned, stream=True, messages=[{"role": "user", "content": "s"}])
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "echo: s"
    assert rig.generate_calls() == [f"/v1/{tuned}:generateContent", f"/v1/{tuned}:streamGenerateContent"]

    model = plain.models.retrieve(tuned).model_dump()
    assert model["id"] == tuned and model["ready"] is True and model["owned_by"] == PROJECT_NUMBER
    assert model["display_name"] == "weather" and model["deployed_models"][0].endswith("@1")
    listed = {m.id: m for m in client.models.list()}
    assert tuned in listed
    refused = requests.post(f"{rig.gw.url}/v1/models/{tuned}/deploy", headers=rig.headers(False), timeout=10)
    assert refused.status_code == 400 and "no deployment step" in refused.json()["error"]["message"]
