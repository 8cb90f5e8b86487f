"""Chat on Bedrock through the gateway with the unmodified `openai` SDK (sync, async, streaming): OpenAI's
chat completions translated to Converse / ConverseStream against the stand-in
(``tests/standins/bedrock_chat.py``: botocore's own model validates every request it receives, its
event-stream frames are checked here by botocore's decoder and boto3's bedrock-runtime client), SigV4
verified on every call. Train → deploy → chat runs through the registry with no provider header."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import openai
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from tests.gateway import Gateway
from tests.standins import bedrock as standin_mod
from tests.standins.bedrock_chat import BedrockChatStandIn, event, frame
from tests.standins.openai_like import ServerThread

NO_RETRY = json.dumps({"retry": {"attempts": 0}})
NOVA = "amazon.nova-micro-v1:0"
ROLE = "arn:aws:iam::123456789012:role/BedrockFineTuning"


@dataclass
class Rig:
    standin: BedrockChatStandIn
    gw: Gateway
    url: str

    def headers(self, provider: bool = True, **extra: str) -> dict[str, str]:
        base = {"x-portkey-aws-region": "us-east-1", "x-portkey-aws-access-key-id": standin_mod.ACCESS_KEY,
                "x-portkey-aws-secret-access-key": standin_mod.SECRET, "x-portkey-custom-host": self.url,
                "x-portkey-aws-s3-bucket": "tunegate-train/team-a", "x-portkey-aws-bedrock-role-arn": ROLE,
                "x-portkey-config": NO_RETRY, **extra}
        return {"x-portkey-provider": "bedrock", **base} if provider else base

    def sdk(self, provider: bool = True, **extra: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gw.url + "/v1", api_key="unused", max_retries=0,
                             default_headers=self.headers(provider, **extra))

    def async_sdk(self, provider: bool = True) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.gw.url + "/v1", api_key="unused", max_retries=0,
                                  default_headers=self.headers(provider))

    def deployed(self) -> tuple[str, str]:
        """A custom model with an Active deployment: (model ARN, deployment ARN)."""
        model = self.standin.add_custom_model()
        dep = f"arn:aws:bedrock:us-east-1:{standin_mod.ACCOUNT}:custom-model-deployment/0123456789ab"
        self.standin.deployments[dep] = {"customModelDeploymentArn": dep, "modelDeploymentName": "d1",
                                         "modelArn": model, "createdAt": self.standin.now(),
                                         "status": "Active", "_reads": 0, "_token": None}
        return model, dep


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    standin = BedrockChatStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        yield Rig(standin, gw, upstream.url)


def converse_calls(rig: Rig) -> list[str]:
    return [r.path for r in rig.standin.requests if r.path.startswith("/model/")]


# ---- the stand-in, against botocore itself ----------------------------------------------------------


def test_standin_frames_are_real_event_stream_frames(rig: Rig) -> None:
    from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

    buffer = EventStreamBuffer()
    buffer.add_data(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}}))
    (message,) = list(buffer)
    assert message.headers == {":event-type": "contentBlockDelta", ":content-type": "application/json",
                               ":message-type": "event"}
    assert json.loads(message.payload) == {"contentBlockIndex": 0, "delta": {"text": "hi"}}
    broken = bytearray(frame({":message-type": "event"}, b"{}"))
    broken[-5] ^= 1
    buffer.add_data(bytes(broken))
    with pytest.raises(ChecksumMismatch):
        list(buffer)

    client = boto3.client("bedrock-runtime", endpoint_url=rig.url, region_name="us-east-1",
                          aws_access_key_id=standin_mod.ACCESS_KEY, aws_secret_access_key=standin_mod.SECRET)
    said = client.converse(modelId=NOVA, messages=[{"role": "user", "content": [{"text": "hello"}]}])
    assert said["output"]["message"]["content"] == [{"text": "echo: hello"}] and said["stopReason"] == "end_turn"
    streamed = client.converse_stream(modelId=NOVA, messages=[{"role": "user", "content": [{"text": "a b"}]}])
    kinds = [next(iter(e)) for e in streamed["stream"]]
    assert kinds == ["messageStart", "contentBlockDelta", "contentBlockDelta", "contentBlockDelta",
                     "contentBlockStop", "messageStop", "metadata"]
    rig.standin.stream_fault = (1, "modelStreamErrorException", "The model broke.")
    broken_stream = client.converse_stream(modelId=NOVA, messages=[{"role": "user", "content": [{"text": "a b"}]}])
    with pytest.raises(EventStreamError, match="modelStreamErrorException"):
        list(broken_stream["stream"])
    unchecked = boto3.client("bedrock-runtime", endpoint_url=rig.url, region_name="us-east-1",
                             aws_access_key_id=standin_mod.ACCESS_KEY, aws_secret_access_key=standin_mod.SECRET,
                             config=Config(parameter_validation=False))
    with pytest.raises(ClientError, match="ValidationException.*maxTokens"):  # outside the model: refused
        unchecked.converse(modelId=NOVA, messages=[{"role": "user", "content": [{"text": "x"}]}],
                        inferenceConfig={"maxTokens": 0})


# ---- chat ------------------------------------------------------------------------------------------


def test_chat_translates_to_converse_and_back(rig: Rig) -> None:
    _, dep = rig.deployed()
    answer = rig.sdk().chat.completions.create(
        model=dep, max_tokens=50, temperature=0.2, top_p=0.9, stop=["never"],
        messages=[{"role": "system", "content": "Be terse."}, {"role": "developer", "content": "No jokes."},
                  {"role": "user", "content": [{"type": "text", "text": "hello there"},
                                               {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert answer.object == "chat.completion" and answer.model == dep
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 3
    sent = rig.standin.converse_bodies[-1]
    assert sent == {"messages": [{"role": "user", "content": [
        {"text": "hello there"}, {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}]}],
        "system": [{"text": "Be terse."}, {"text": "No jokes."}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["never"]}}
    assert converse_calls(rig) == [f"/model/{quote(dep, safe='')}/converse"]


def test_finish_reasons_length_and_stop_sequence(rig: Rig) -> None:
    _, dep = rig.deployed()
    client = rig.sdk()
    cut = client.chat.completions.create(model=dep, max_completion_tokens=2,
                                         messages=[{"role": "user", "content": "one two three"}])
    assert cut.choices[0].message.content == "echo: one" and cut.choices[0].finish_reason == "length"
    stopped = client.chat.completions.create(model=dep, stop="two", messages=[{"role": "user", "content": "one two"}])
    assert stopped.choices[0].message.content == "echo: one" and stopped.choices[0].finish_reason == "stop"


def test_tools_round_trip(rig: Rig) -> None:
    _, dep = rig.deployed()
    tools: Any = [{"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                                     "parameters": {"type": "object", "properties": {
                                                         "city": {"type": "string"}}}}}]
    client = rig.sdk()
    first = client.chat.completions.create(model=dep, tools=tools, tool_choice="required",
                                           messages=[{"role": "user", "content": "Weather in Paris?"}])
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls" and first.choices[0].message.content == "Let me check."
    assert call.function.name == "weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert rig.standin.converse_bodies[-1]["toolConfig"] == {"toolChoice": {"any": {}}, "tools": [{"toolSpec": {
        "name": "weather", "description": "Weather in a city",
        "inputSchema": {"json": tools[0]["function"]["parameters"]}}}]}
    second = client.chat.completions.create(model=dep, tools=tools, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    assert second.choices[0].finish_reason == "stop" and "sunny" in str(second.choices[0].message.content)
    assert rig.standin.converse_bodies[-1]["messages"][1:] == [
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": call.id, "name": "weather",
                                                       "input": {"city": "Paris"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": call.id, "content": [{"text": "sunny"}]}}]}]

    chunks = list(client.chat.completions.create(model=dep, tools=tools, stream=True,
                                                 messages=[{"role": "user", "content": "Weather?"}]))
    calls = [tc for c in chunks for ch in c.choices for tc in (ch.delta.tool_calls or [])]
    assert calls[0].id and calls[0].function.name == "weather"  # type: ignore[union-attr]
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Paris"}  # type: ignore[union-attr]
    assert {tc.index for tc in calls} == {0} and chunks[-1].choices[0].finish_reason == "tool_calls"


def test_stream_sync_with_usage(rig: Rig) -> None:
    _, dep = rig.deployed()
    stream = rig.sdk().chat.completions.create(model=dep, stream=True, stream_options={"include_usage": True},
                                               messages=[{"role": "user", "content": "a b c"}])
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: a b c"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1]) and len({c.id for c in chunks}) == 1
    assert converse_calls(rig) == [f"/model/{quote(dep, safe='')}/converse-stream"]


def test_stream_async_without_usage(rig: Rig) -> None:
    _, dep = rig.deployed()
    rig.standin.chunk_delay = 0.01

    async def run() -> list[Any]:
        client = rig.async_sdk()
        stream = await client.chat.completions.create(model=dep, stream=True,
                                                      messages=[{"role": "user", "content": "x y"}])
        return [c async for c in stream]

    chunks = asyncio.run(run())
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: x y"
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_async_chat(rig: Rig) -> None:
    _, dep = rig.deployed()

    async def run() -> Any:
        return await rig.async_sdk().chat.completions.create(model=dep, messages=[{"role": "user", "content": "z"}])

    assert asyncio.run(run()).choices[0].message.content == "echo: z"


def test_exception_frame_mid_stream_is_an_api_error(rig: Rig) -> None:
    _, dep = rig.deployed()
    rig.standin.stream_fault = (2, "modelStreamErrorException", "The model stopped answering.")
    stream = rig.sdk().chat.completions.create(model=dep, stream=True,
                                               messages=[{"role": "user", "content": "a b c d"}])
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="The model stopped answering.") as caught:
        for chunk in stream:
            seen.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(seen) == "echo: a"
    assert caught.value.code == "modelStreamErrorException"  # type: ignore[attr-defined]


def test_errors_before_the_first_byte_are_ordinary_sdk_errors(rig: Rig) -> None:
    _, dep = rig.deployed()
    client = rig.sdk()
    rig.standin.stream_fault = (-1, "throttlingException", "Too many requests, please wait.")
    with pytest.raises(openai.RateLimitError, match="Too many requests"):
        client.chat.completions.create(model=dep, stream=True, messages=[{"role": "user", "content": "a"}])
    rig.standin.stream_fault = None
    rig.standin.fail_next(403, "AccessDeniedException")
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=dep, stream=True, messages=[{"role": "user", "content": "a"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="amazon.nothing-v1:0", messages=[{"role": "user", "content": "a"}])
    wrong = rig.sdk(**{"x-portkey-aws-secret-access-key": "not-the-secret"})
    with pytest.raises(openai.PermissionDeniedError, match="signature"):
        wrong.chat.completions.create(model=dep, stream=True, messages=[{"role": "user", "content": "a"}])


@pytest.mark.parametrize("extra, param", [
    ({"n": 2}, "n"), ({"seed": 7}, "seed"), ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"logprobs": True}, "logprobs"), ({"temperature": 1.5}, "temperature"), ({"user": "u-1"}, "user"),
    ({"parallel_tool_calls": False, "tools": [{"type": "function", "function": {"name": "f"}}]},
     "parallel_tool_calls"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0].name"),
])
def test_what_converse_lacks_is_a_400_never_sent(rig: Rig, extra: dict[str, Any], param: str) -> None:
    _, dep = rig.deployed()
    body: dict[str, Any] = {"model": dep, "messages": [{"role": "user", "content": "hi"}], **extra}
    r = requests.post(rig.gw.url + "/v1/chat/completions", headers=rig.headers(), json=body, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert converse_calls(rig) == []


def test_neutral_values_and_json_schema_pass(rig: Rig) -> None:
    _, dep = rig.deployed()
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    rig.sdk().chat.completions.create(model=dep, n=1, presence_penalty=0, messages=[{"role": "user", "content": "q"}],
                                      response_format={"type": "json_schema", "json_schema": {"name": "out",
                                                                                             "schema": schema}})
    assert rig.standin.converse_bodies[-1]["outputConfig"] == {"textFormat": {"type": "json_schema", "structure": {
        "jsonSchema": {"schema": json.dumps(schema, separators=(",", ":")), "name": "out"}}}}


# ---- tuned model: train, deploy, chat -----------------------------------------------------------------


def test_train_deploy_then_chat_by_the_same_name_without_a_provider_header(rig: Rig) -> None:
    rig.standin.deploy_reads = 2  # the deploy's own read and the first chat see it Creating
    client = rig.sdk()
    job = client.fine_tuning.jobs.create(model="amazon.nova-micro-v1:0:128k", suffix="weather",
                                         training_file="s3://tunegate-train/data/train.jsonl")
    for _ in range(5):
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status == "succeeded":
            break
    tuned = job.fine_tuned_model
    assert tuned and ":custom-model/" in tuned
    plain = rig.sdk(provider=False)
    with pytest.raises(openai.BadRequestError, match="deploy it first") as caught:
        plain.chat.completions.create(model=tuned, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_deployed"

    deploy = requests.post(f"{rig.gw.url}/v1/models/{tuned}/deploy", headers=rig.headers(provider=False),
                           json={"name": "weather-live"}, timeout=10)
    assert deploy.status_code == 200, deploy.text
    model = deploy.json()
    assert model["id"] == tuned and model["object"] == "model" and model["ready"] is False
    assert model["deployments"][0]["status"] == "creating" and model["deployments"][0]["name"] == "weather-live"
    created = next(r for r in rig.standin.requests if r.method == "POST" and "custom-model-deployments" in r.path)
    assert created.json()["modelArn"] == tuned and len(created.json()["clientRequestToken"]) == 64
    with pytest.raises(openai.BadRequestError, match="still being created"):
        plain.chat.completions.create(model=tuned, messages=[{"role": "user", "content": "hi"}])
    assert plain.models.retrieve(tuned).model_dump()["ready"] is True  # Active on the next read

    answer = plain.chat.completions.create(model=tuned, messages=[{"role": "user", "content": "trained?"}])
    assert answer.choices[0].message.content == "echo: trained?" and answer.model == tuned
    dep = model["deployments"][0]["id"]
    assert converse_calls(rig)[-1] == f"/model/{quote(dep, safe='')}/converse"
    listed = {m.id: m.model_dump() for m in client.models.list()}
    assert listed[tuned]["ready"] is True and listed[tuned]["deployments"][0]["id"] == dep
    assert client.models.retrieve(dep).model_dump()["provider_status"] == "Active"
    # A second chat within the cache window asks the control plane nothing more.
    before = len(rig.standin.requests)
    plain.chat.completions.create(model=tuned, messages=[{"role": "user", "content": "again"}])
    assert [r.path.split("/")[1] for r in rig.standin.requests[before:]] == ["model"]


def test_delete_a_deployment(rig: Rig) -> None:
    _, dep = rig.deployed()
    gone = requests.delete(f"{rig.gw.url}/v1/models/{dep}", headers=rig.headers(), timeout=10)
    assert gone.status_code == 200 and gone.json() == {"id": dep, "object": "model", "deleted": True}
    assert dep not in rig.standin.deployments
    with pytest.raises(openai.NotFoundError):
        rig.sdk().chat.completions.create(model=dep, messages=[{"role": "user", "content": "a"}])


def test_frames_are_relayed_as_they_arrive(rig: Rig) -> None:
    """Each frame becomes a chunk when it arrives, not when the stream ends (0.25 s between frames here)."""
    import time

    _, dep = rig.deployed()
    rig.standin.chunk_delay = 0.25
    started = time.monotonic()
    stream = rig.sdk().chat.completions.create(model=dep, stream=True,
                                               messages=[{"role": "user", "content": "a b c d"}])
    arrivals = [time.monotonic() - started for c in stream if c.choices and c.choices[0].delta.content]
    # Buffered, the five would land together; relayed, they keep the upstream's spacing (4 x 0.25 s).
    assert len(arrivals) == 5 and arrivals[-1] - arrivals[0] > 0.6
