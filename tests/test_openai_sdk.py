"""End to end with the official `openai` SDK, through the gateway, against the stateful stand-in:
OpenAI itself and both Azure surfaces."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, StandIn

EXAMPLES = b"".join(
    json.dumps({"messages": [{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": f"Say {i}"},
                             {"role": "assistant", "content": f"{i}"}]}).encode() + b"\n"
    for i in range(12)
)

PROVIDER_HEADERS = {
    "openai": {"x-portkey-provider": "openai"},
    "azure-ga": {"x-portkey-provider": "azure-openai"},
    "azure-v1": {"x-portkey-provider": "azure-openai", "x-portkey-azure-api-version": "v1"},
}


@pytest.fixture(params=["openai", "azure-ga", "azure-v1"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[StandIn, Gateway, dict[str, str]]]:
    standin = StandIn(mode=request.param)
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        # Portkey semantics: the custom host is the URL up to the version segment.
        headers = {**PROVIDER_HEADERS[request.param], "x-portkey-custom-host": upstream.url + standin.prefix}
        yield standin, gw, headers


def client(gw: Gateway, standin: StandIn, headers: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=standin.api_key, default_headers=headers, max_retries=0)


def test_full_lifecycle_sync(setup: tuple[StandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = setup
    sdk = client(gw, standin, headers)
    uploaded = sdk.files.create(file=("train.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(EXAMPLES) and uploaded.purpose == "fine-tune"
    assert standin.contents[uploaded.id] == EXAMPLES  # the bytes arrived unchanged

    job = sdk.fine_tuning.jobs.create(training_file=uploaded.id, model="gpt-4o-mini-2024-07-18", suffix="weather",
                                      hyperparameters={"n_epochs": 2}, seed=7)
    # Azure GA has no validating_files: its first state, `pending`, maps to `queued`.
    first = "queued" if standin.mode == "azure-ga" else "validating_files"
    assert job.object == "fine_tuning.job" and job.status == first
    assert job.hyperparameters.n_epochs == 2

    statuses = [sdk.fine_tuning.jobs.retrieve(job.id).status for _ in range(3)]
    assert statuses == ["queued", "running", "succeeded"]
    done = sdk.fine_tuning.jobs.retrieve(job.id)
    assert done.fine_tuned_model and done.trained_tokens == 12345 and done.finished_at

    second = sdk.fine_tuning.jobs.create(training_file=uploaded.id, model="gpt-4o-mini-2024-07-18")
    cancelled = sdk.fine_tuning.jobs.cancel(second.id)
    assert cancelled.status == "cancelled"

    events = sdk.fine_tuning.jobs.list_events(job.id)
    assert [e.message for e in events.data] == ["Validating training file", "Fine-tuning job started"]
    checkpoints = sdk.fine_tuning.jobs.checkpoints.list(job.id)
    assert checkpoints.data[0].step_number == 10 and checkpoints.data[0].metrics.train_loss == 0.5

    files = sdk.files.list(purpose="fine-tune")
    assert [f.id for f in files.data] == [uploaded.id]
    (result_file,) = done.result_files  # the stand-in's metrics CSV of the succeeded job
    assert sdk.files.content(result_file).read().startswith(b"step,train_loss")
    assert sdk.files.retrieve(uploaded.id).filename == "train.jsonl"
    assert sdk.files.content(uploaded.id).read() == EXAMPLES
    assert sdk.files.delete(uploaded.id).deleted is True


def test_auto_pagination_and_retrieve_without_provider_header(setup: tuple[StandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = setup
    sdk = client(gw, standin, headers)
    f = sdk.files.create(file=("t.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune")
    created = {sdk.fine_tuning.jobs.create(training_file=f.id, model="m").id for _ in range(7)}
    pages = sdk.fine_tuning.jobs.list(limit=3)
    assert len(pages.data) == 3 and pages.has_more
    seen = [j.id for j in pages]  # the SDK follows `after` cursors through the gateway
    assert set(seen) == created and len(seen) == 7
    # The registry knows where each job lives: no provider header needed any more. The credential
    # still travels (the gateway is open: no tunegate keys).
    bare = openai.OpenAI(base_url=gw.url + "/v1", api_key=standin.api_key, max_retries=0,
                         default_headers={k: v for k, v in headers.items() if k != "x-portkey-provider"})
    assert bare.fine_tuning.jobs.retrieve(seen[0]).id == seen[0]


async def test_async_client(setup: tuple[StandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = setup
    sdk = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=standin.api_key, default_headers=headers,
                             max_retries=0)
    f = await sdk.files.create(file=("t.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune")
    job = await sdk.fine_tuning.jobs.create(training_file=f.id, model="gpt-4o-mini")
    ids = [j.id async for j in sdk.fine_tuning.jobs.list(limit=1)]
    assert ids == [job.id]
    assert (await sdk.fine_tuning.jobs.cancel(job.id)).status == "cancelled"
    await sdk.close()


def test_uploads_api(setup: tuple[StandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = setup
    sdk = client(gw, standin, headers)
    up = sdk.uploads.create(bytes=len(EXAMPLES), filename="big.jsonl", mime_type="application/jsonl",
                            purpose="fine-tune")
    half = len(EXAMPLES) // 2
    p1 = sdk.uploads.parts.create(up.id, data=EXAMPLES[:half])
    p2 = sdk.uploads.parts.create(up.id, data=EXAMPLES[half:])
    done = sdk.uploads.complete(up.id, part_ids=[p1.id, p2.id])
    assert done.status == "completed" and done.file is not None and done.file.bytes == len(EXAMPLES)
    assert standin.contents[done.file.id] == EXAMPLES
    other = sdk.uploads.create(bytes=1, filename="x.jsonl", mime_type="application/jsonl", purpose="fine-tune")
    assert sdk.uploads.cancel(other.id).status == "cancelled"


def test_upstream_errors_arrive_openai_shaped(setup: tuple[StandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = setup
    sdk = client(gw, standin, headers)
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.fine_tuning.jobs.retrieve("ftjob-nope")
    assert missing.value.status_code == 404
    wrong = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-wrong-key-123456", default_headers=headers,
                          max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        wrong.fine_tuning.jobs.list()
    body = denied.value.body
    assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}
    assert "sk-wrong-key-123456" not in json.dumps(body)
