"""Mistral: what Mistral's own code and docs show about the real service, where the spec file is silent or
says otherwise (issue 13, item 4). Sources: docs.mistral.ai/resources/deprecated (fine-tuning deprecated),
mistralai/mistral-common@bc022b9 validator.py (tool-call ids), Mistral's OpenAPI WandbIntegration.api_key
(40 characters). tunegate/providers/mistral/MAPPING.md lists them."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.gateway import Gateway
from tests.standins.mistral import MistralStandIn
from tests.standins.openai_like import ServerThread
from tunegate.data import convert_lines

CHAT = b"".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}"},
                                         {"role": "assistant", "content": f"{i}"}]}).encode() + b"\n"
                for i in range(12))  # at least 10 lines: what the gateway asked of every upload until issue 13
MISTRAL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[MistralStandIn, str, dict[str, str]]]:
    standin = MistralStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        headers = {"x-portkey-provider": "mistral", "x-portkey-custom-host": upstream.url + "/v1",
                   "Authorization": f"Bearer {standin.api_key}"}
        yield standin, gw.url + "/v1", headers


def sdk(env: tuple[MistralStandIn, str, dict[str, str]], **more: str) -> openai.OpenAI:
    standin, base, headers = env
    return openai.OpenAI(base_url=base, api_key=standin.api_key, max_retries=0,
                         default_headers={k: v for k, v in {**headers, **more}.items() if k != "Authorization"})


def upload(client: openai.OpenAI, data: bytes = CHAT) -> Any:
    return client.files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune")


def test_fine_tuning_answers_carry_the_deprecation_warning(env: tuple[MistralStandIn, str, dict[str, str]]) -> None:
    standin, base, headers = env
    client = sdk(env)
    f = upload(client)
    created = client.fine_tuning.jobs.with_raw_response.create(training_file=f.id, model="open-mistral-7b")
    job_id = created.parse().id
    answers = [created, client.fine_tuning.jobs.with_raw_response.list(),
               client.fine_tuning.jobs.with_raw_response.retrieve(job_id),
               client.fine_tuning.jobs.with_raw_response.list_events(job_id),
               client.fine_tuning.jobs.checkpoints.with_raw_response.list(job_id),
               client.fine_tuning.jobs.with_raw_response.cancel(job_id)]
    for answer in answers:
        warning = answer.headers.get("warning", "")
        assert warning.startswith("299 tunegate ") and "deprecated" in warning, answer.http_request.url
        assert "https://docs.mistral.ai/resources/deprecated" in warning
    # Errors of a fine-tuning call carry it as well; the files API is not deprecated.
    missing = requests.get(f"{base}/fine_tuning/jobs/3fa85f64-5717-4562-b3fc-2c963f66afa6", headers=headers,
                           timeout=10)
    assert missing.status_code == 404 and "deprecated" in missing.headers.get("warning", "")
    assert "warning" not in client.files.with_raw_response.retrieve(f.id).headers


@pytest.mark.parametrize("key", ["local-" + "a" * 40, "a" * 39, "wandb_v1_" + "b" * 77])
def test_wandb_key_must_have_mistrals_40_characters(env: tuple[MistralStandIn, str, dict[str, str]],
                                                     key: str) -> None:
    standin, _base, _headers = env
    client = sdk(env, **{"x-portkey-wandb-api-key": key})
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(training_file="f", model="open-mistral-7b",
                                       integrations=[{"type": "wandb", "wandb": {"project": "p"}}])
    body = bad.value.body
    assert isinstance(body, dict) and body["param"] == "integrations[0].wandb"
    assert body["code"] == "invalid_provider_option" and key not in json.dumps(body)
    assert not standin.recorded("POST", "/fine_tuning/jobs")


def tool_line(call_ids: list[str]) -> dict[str, Any]:
    calls = [{"id": c, "type": "function", "function": {"name": f"f{n}", "arguments": "{}"}}
             for n, c in enumerate(call_ids)]
    return {"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "tool_calls": calls},
                         *({"role": "tool", "tool_call_id": c, "content": "3"} for c in reversed(call_ids)),
                         {"role": "assistant", "content": "3 degrees."}],
            "tools": [{"type": "function", "function": {"name": f"f{n}", "parameters": {}}}
                      for n in range(len(call_ids))]}


def test_tool_call_ids_become_mistrals_nine_characters(env: tuple[MistralStandIn, str, dict[str, str]]) -> None:
    standin, _base, _headers = env
    client = sdk(env)
    lines = [tool_line(["call_abc123", "call_xyz789"]), tool_line(["call_abc123", "abcdefghi"])]
    f = upload(client, b"".join(json.dumps(line).encode() + b"\n" for line in lines) + CHAT)
    sent = [json.loads(line) for line in standin.contents[f.id].splitlines()[:2]]
    for line in sent:
        calls = [c["id"] for c in line["messages"][1]["tool_calls"]]
        answers = [m["tool_call_id"] for m in line["messages"] if m["role"] == "tool"]
        assert all(MISTRAL_ID.match(i) for i in calls) and len(set(calls)) == len(calls)
        assert answers == calls[::-1]  # each tool message still answers its own call
    assert sent[0]["messages"][1]["tool_calls"][0]["id"] == sent[1]["messages"][1]["tool_calls"][0]["id"]
    assert sent[1]["messages"][1]["tool_calls"][1]["id"] == "abcdefghi"  # already Mistral's form: kept
    # Mistral validates the ids: with the rewritten ones the job gets past validation.
    job = client.fine_tuning.jobs.create(training_file=f.id, model="open-mistral-7b")
    statuses = [client.fine_tuning.jobs.retrieve(job.id).status for _ in range(4)]
    assert statuses[-1] == "succeeded", statuses


def test_rewritten_ids_never_collide_within_a_line() -> None:
    # An original that is already a valid id may equal what another original hashes to: still distinct.
    (first,) = convert_lines([json.dumps(tool_line(["call_1"])).encode()], "mistral")
    taken = json.loads(first)["messages"][1]["tool_calls"][0]["id"]
    (second,) = convert_lines([json.dumps(tool_line(["call_1", taken])).encode()], "mistral")
    ids = [c["id"] for c in json.loads(second)["messages"][1]["tool_calls"]]
    assert len(set(ids)) == 2 and all(MISTRAL_ID.match(i) for i in ids)
