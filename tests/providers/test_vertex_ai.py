"""Vertex AI end to end with the official `openai` SDK, through the gateway: tuning jobs against the stand-in
(tests/standins/vertex.py, built from Google's discovery document), files against gcp-storage-emulator in server
mode, and a real service-account JSON whose token is minted by google-auth against the stand-in's token endpoint."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import openai
import pytest
import requests

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, free_port
from tests.standins.vertex import (
    PROJECT_NUMBER,
    VertexStandIn,
    json_schema,
    load_discovery,
    make_service_account,
)
from tunegate.data.converters import convert_lines

gcp_storage_emulator = pytest.importorskip("gcp_storage_emulator.server")

BUCKET = "tg-training-data"
BASE_MODEL = "gemini-2.5-flash"


def chat_line(i: int) -> bytes:
    return json.dumps({"messages": [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": f"Say {i}"},
                                    {"role": "assistant", "content": f"{i}"}]}).encode() + b"\n"


EXAMPLES = b"".join(chat_line(i) for i in range(12))
PREFERENCES = b"".join(
    json.dumps({"input": {"messages": [{"role": "user", "content": f"Pick {i}"}]},
                "preferred_output": [{"role": "assistant", "content": f"{i}"}],
                "non_preferred_output": [{"role": "assistant", "content": "no"}]}).encode() + b"\n"
    for i in range(10))


def converted(data: bytes, target: str = "vertex-gemini") -> bytes:
    return b"".join(convert_lines(data.splitlines(), target))


@dataclass
class Env:
    standin: VertexStandIn
    gw: Gateway
    headers: dict[str, str]
    info: dict[str, Any]
    gcs: str

    def sdk(self, **headers: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gw.url + "/v1", api_key="not-a-google-token",
                             default_headers={**self.headers, **headers}, max_retries=0)

    def gcs_object(self, name: str) -> bytes:
        r = requests.get(f"{self.gcs}/storage/v1/b/{BUCKET}/o/{quote(name, safe='')}", params={"alt": "media"},
                         timeout=10)
        r.raise_for_status()
        return r.content

    def gcs_names(self) -> list[str]:
        r = requests.get(f"{self.gcs}/storage/v1/b/{BUCKET}/o", timeout=10)
        r.raise_for_status()
        return [o["name"] for o in r.json().get("items", [])]


def uri_of(file_id: str) -> str:
    token = file_id.removeprefix("file-")
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def name_of(job_id: str) -> str:
    token = job_id.removeprefix("ftjob-")
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    port = free_port()
    server = gcp_storage_emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def env(tmp_path: Path, gcs: str) -> Iterator[Env]:
    standin = VertexStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        standin.url = upstream.url
        info, public_key = make_service_account(standin.token_uri)
        standin.register(info, public_key)
        headers = {"x-portkey-provider": "vertex-ai", "x-portkey-custom-host": upstream.url + "/v1",
                   "x-portkey-vertex-project-id": "tg-project", "x-portkey-vertex-region": "us-central1",
                   "x-portkey-vertex-service-account-json": json.dumps(info),
                   "x-portkey-vertex-storage-bucket-name": BUCKET}
        yield Env(standin, gw, headers, info, gcs)


# ---- the stand-in against Google's discovery document ----------------------------------------------


def test_standin_answers_match_the_discovery_schemas(env: Env) -> None:
    discovery = load_discovery()
    if discovery is None:
        pytest.skip("../shared/specs is not beside the checkout")
    s = env.standin
    token = requests.post(s.token_uri, timeout=10, data={
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "a.b.c"})
    assert token.status_code == 400 and token.json()["error"] == "invalid_grant"
    s.tokens["ya29.direct"] = (env.info["client_email"], 4e9)
    h = {"Authorization": "Bearer ya29.direct"}
    base = f"{s.url}/v1/projects/tg-project/locations/us-central1/tuningJobs"

    def check(body: Any, schema: str) -> None:
        jsonschema.Draft7Validator(json_schema(discovery, schema)).validate(body)

    answers: list[tuple[Any, str]] = []
    sft: dict[str, Any] = {"baseModel": BASE_MODEL, "tunedModelDisplayName": "x", "labels": {"team": "nlp"},
           "supervisedTuningSpec": {"trainingDatasetUri": "gs://b/t.jsonl", "validationDatasetUri": "gs://b/v.jsonl",
                                    "hyperParameters": {"epochCount": "2", "learningRateMultiplier": 0.5,
                                                        "adapterSize": "ADAPTER_SIZE_FOUR"}}}
    dpo: dict[str, Any] = {"baseModel": BASE_MODEL, "preferenceOptimizationSpec": {
        "trainingDatasetUri": "gs://b/p.jsonl", "hyperParameters": {"beta": 0.1, "epochCount": "1"}}}
    fail: dict[str, Any] = {"baseModel": "fail-model", "supervisedTuningSpec": {"trainingDatasetUri": "gs://b/t.jsonl"}}
    names = []
    for body in (sft, dpo, fail):
        created = requests.post(base, json=body, headers=h, timeout=10).json()
        answers.append((created, "GoogleCloudAiplatformV1TuningJob"))
        names.append(created["name"])
    states = []
    for name in names:
        for _ in range(4):
            job = requests.get(f"{s.url}/v1/{name}", headers=h, timeout=10).json()
            answers.append((job, "GoogleCloudAiplatformV1TuningJob"))
            states.append(job["state"])
    assert states[:4] == ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED", "JOB_STATE_SUCCEEDED"]
    assert states[8:10] == ["JOB_STATE_PENDING", "JOB_STATE_FAILED"]
    cancel_me = requests.post(base, json=sft, headers=h, timeout=10).json()["name"]
    empty = requests.post(f"{s.url}/v1/{cancel_me}:cancel", json={}, headers=h, timeout=10)
    answers.append((empty.json(), "GoogleProtobufEmpty"))
    for _ in range(2):
        answers.append((requests.get(f"{s.url}/v1/{cancel_me}", headers=h, timeout=10).json(),
                        "GoogleCloudAiplatformV1TuningJob"))
    assert answers[-1][0]["state"] == "JOB_STATE_CANCELLED" and answers[-2][0]["state"] == "JOB_STATE_CANCELLING"
    listed = requests.get(base, params={"pageSize": 2}, headers=h, timeout=10).json()
    assert len(listed["tuningJobs"]) == 2 and listed["nextPageToken"]
    answers.append((listed, "GoogleCloudAiplatformV1ListTuningJobsResponse"))
    empty_list = requests.get(base.replace("us-central1", "europe-west4"), headers=h, timeout=10).json()
    answers.append((empty_list, "GoogleCloudAiplatformV1ListTuningJobsResponse"))
    for body, schema in answers:
        check(body, schema)
    # Errors: Google's envelope around a google.rpc.Status.
    for resp in (requests.get(f"{base}/1", headers=h, timeout=10),
                 requests.get(base, timeout=10),
                 requests.post(base, json={**sft, "unknownField": 1}, headers=h, timeout=10),
                 requests.post(base, json={**sft, "state": "JOB_STATE_RUNNING"}, headers=h, timeout=10)):
        err = resp.json()["error"]
        assert err["code"] == resp.status_code and err["status"] in ("NOT_FOUND", "UNAUTHENTICATED",
                                                                     "INVALID_ARGUMENT")
        check({k: v for k, v in err.items() if k != "status"}, "GoogleRpcStatus")
    # The schemas are strict: a drifted field name would be caught.
    with pytest.raises(jsonschema.ValidationError):
        check({**answers[0][0], "createdAt": "x"}, "GoogleCloudAiplatformV1TuningJob")


# ---- end to end ------------------------------------------------------------------------------------


def test_full_lifecycle(env: Env) -> None:
    sdk = env.sdk()
    uploaded = sdk.files.create(file=("train.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune")
    uri = uri_of(uploaded.id)
    assert uri.startswith(f"gs://{BUCKET}/tunegate/") and uri.endswith("/train.jsonl")
    object_name = uri.removeprefix(f"gs://{BUCKET}/")
    expected = converted(EXAMPLES)
    assert env.gcs_object(object_name) == expected  # Gemini JSONL arrived in the bucket
    first = json.loads(expected.splitlines()[0])
    assert first == {"systemInstruction": {"parts": [{"text": "You are terse."}]},
                     "contents": [{"role": "user", "parts": [{"text": "Say 0"}]},
                                  {"role": "model", "parts": [{"text": "0"}]}]}
    assert (uploaded.object, uploaded.bytes, uploaded.filename, uploaded.purpose, uploaded.status) == (
        "file", len(expected), "train.jsonl", "fine-tune", "processed")

    job = sdk.fine_tuning.jobs.create(
        training_file=uploaded.id, validation_file=uploaded.id, model=BASE_MODEL, suffix="weather-bot",
        hyperparameters={"n_epochs": 2, "learning_rate_multiplier": 0.5, "adapter_size": 4},  # type: ignore[arg-type]
        metadata={"team": "nlp"})
    sent = env.standin.vertex_requests("POST")[-1]
    assert sent.path == "/v1/projects/tg-project/locations/us-central1/tuningJobs"
    assert sent.json() == {"baseModel": BASE_MODEL, "tunedModelDisplayName": "weather-bot", "labels": {"team": "nlp"},
                           "supervisedTuningSpec": {"trainingDatasetUri": uri, "validationDatasetUri": uri,
                                                    "hyperParameters": {"epochCount": "2",
                                                                        "learningRateMultiplier": 0.5,
                                                                        "adapterSize": "ADAPTER_SIZE_FOUR"}}}
    auth = sent.headers["Authorization"]
    assert auth.startswith("Bearer ya29.standin-") and auth[7:] in env.standin.tokens
    assert name_of(job.id).startswith(f"projects/{PROJECT_NUMBER}/locations/us-central1/tuningJobs/")
    assert job.status == "queued" and job.model == BASE_MODEL and job.training_file == uploaded.id
    assert job.created_at == 1_767_225_600 and job.finished_at is None and job.fine_tuned_model is None
    assert (job.hyperparameters.n_epochs, job.hyperparameters.learning_rate_multiplier,
            job.hyperparameters.batch_size) == (2, 0.5, "auto")
    assert job.metadata == {"team": "nlp"} and job.method is not None and job.method.type == "supervised"
    assert job.model_extra is not None and job.model_extra["provider_status"] == "JOB_STATE_QUEUED"

    statuses = [sdk.fine_tuning.jobs.retrieve(job.id).status for _ in range(3)]
    assert statuses == ["queued", "running", "succeeded"]
    done = sdk.fine_tuning.jobs.retrieve(job.id)
    native = env.standin.jobs[name_of(job.id)]
    assert done.fine_tuned_model == native["tunedModel"]["endpoint"]
    assert done.finished_at == 1_767_225_600 + 3 and done.trained_tokens == 4096 * 2 and done.error is None
    assert done.model_extra is not None and done.model_extra["tuned_model"]["model"].endswith("@1")

    checkpoints = sdk.fine_tuning.jobs.checkpoints.list(done.id)
    assert [(c.step_number, c.fine_tuned_model_checkpoint, c.fine_tuning_job_id) for c in checkpoints.data] == [
        (10, native["tunedModel"]["checkpoints"][0]["endpoint"], done.id),
        (20, native["tunedModel"]["checkpoints"][1]["endpoint"], done.id)]
    second_page = sdk.fine_tuning.jobs.checkpoints.list(done.id, limit=1, after=checkpoints.data[0].id)
    assert [c.step_number for c in second_page.data] == [20] and second_page.has_more is False

    # Vertex keeps no event log: the events are derived from the job, newest first, with stable ids.
    events = sdk.fine_tuning.jobs.list_events(done.id)
    assert [e.message for e in events.data] == [
        f"The job has successfully completed: {native['tunedModel']['endpoint']}",
        "Tuning started on 12 examples (4096 billable tokens)",
        f"Created tuning job {native['tunedModelDisplayName']}"]
    assert events.data[1].data == {"examples": 12, "billable_tokens": 4096, "steps": 20}
    assert events.data[0].created_at == done.finished_at and events.data[2].created_at == done.created_at
    rest = sdk.fine_tuning.jobs.list_events(done.id, after=events.data[0].id, limit=1)
    assert [e.id for e in rest.data] == [events.data[1].id] and rest.has_more is True

    second = sdk.fine_tuning.jobs.create(training_file=uploaded.id, model=BASE_MODEL)
    before = len(env.standin.requests)
    cancelled = sdk.fine_tuning.jobs.cancel(second.id)
    assert cancelled.status == "cancelled" and cancelled.error is None and cancelled.finished_at is not None
    calls = [(r.method, r.path) for r in env.standin.requests[before:]]
    path = "/v1/" + name_of(second.id)
    assert calls == [("POST", path + ":cancel"), ("GET", path), ("GET", path)]  # CANCELLING, then CANCELLED
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.fine_tuning.jobs.cancel(second.id)
    assert exc.value.body["code"] == "failed_precondition"  # type: ignore[index]

    listed = sdk.fine_tuning.jobs.list()
    assert [j.id for j in listed.data] == [second.id, job.id] and listed.has_more is False

    files = sdk.files.list()
    assert [f.id for f in files.data] == [uploaded.id]
    got = sdk.files.retrieve(uploaded.id)
    assert (got.filename, got.bytes, got.purpose) == ("train.jsonl", len(expected), "fine-tune")
    assert sdk.files.content(uploaded.id).read() == expected
    assert sdk.files.delete(uploaded.id).deleted is True
    assert env.gcs_names() == []
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(uploaded.id)
    assert env.standin.mints == {env.info["client_email"]: 1}  # one token for the whole session


def test_pagination_across_pages(env: Env) -> None:
    sdk = env.sdk()
    ids = [sdk.fine_tuning.jobs.create(training_file="gs://elsewhere/train.jsonl", model=BASE_MODEL).id
           for _ in range(7)]
    newest_first = list(reversed(ids))
    first = sdk.fine_tuning.jobs.list(limit=3)
    assert [j.id for j in first.data] == newest_first[:3] and first.has_more is True
    pages = list(sdk.fine_tuning.jobs.list(limit=3).iter_pages())
    assert [[j.id for j in p.data] for p in pages] == [newest_first[:3], newest_first[3:6], newest_first[6:]]
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=3)] == newest_first  # SDK auto-pagination
    last = sdk.fine_tuning.jobs.list(limit=3, after=newest_first[5])
    assert [j.id for j in last.data] == newest_first[6:] and last.has_more is False
    exact = sdk.fine_tuning.jobs.list(limit=2, after=newest_first[4])
    assert [j.id for j in exact.data] == newest_first[5:] and exact.has_more is False
    # Vertex pages by opaque tokens: a page after a served one continues from Vertex's pageToken; an `after`
    # never served (newest_first[4]) is looked for from the start, 100 jobs per upstream page.
    listed = env.standin.vertex_requests("GET", "/tuningJobs")
    assert {"pageSize": "3"} in [r.query for r in listed] and {"pageSize": "100"} in [r.query for r in listed]
    assert any(r.query.get("pageSize") == "3" and "pageToken" in r.query for r in listed)
    # A provider that pages by 2 whatever pageSize says: the walk follows its tokens.
    env.standin.max_page_size = 2
    before = len(env.standin.vertex_requests("GET", "/tuningJobs"))
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=2, after=newest_first[0])] == newest_first[1:]
    walked = env.standin.vertex_requests("GET", "/tuningJobs")[before:]
    # Three pages: the first looks for `after` (two upstream pages), each later one is one call with a token.
    assert len(walked) == 4 and sum("pageToken" in r.query for r in walked) == 3

    with pytest.raises(openai.BadRequestError) as exc:
        sdk.fine_tuning.jobs.list(after="ftjob-" + base64.urlsafe_b64encode(
            f"projects/{PROJECT_NUMBER}/locations/us-central1/tuningJobs/1".encode()).decode().rstrip("="))
    assert exc.value.body["param"] == "after"  # type: ignore[index]

    files = [sdk.files.create(file=(f"part{i}.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune").id
             for i in range(5)]
    page = sdk.files.list(limit=2)
    assert [f.id for f in page.data] == files[::-1][:2] and page.has_more is True
    assert [f.id for f in sdk.files.list(limit=2)] == files[::-1]  # newest first, across three pages
    assert [f.filename for f in sdk.files.list(limit=2, after=files[2]).data] == ["part1.jsonl", "part0.jsonl"]
    assert sdk.files.list(purpose="batch").data == []
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.files.list(order="asc")
    assert exc.value.body["param"] == "order"  # type: ignore[index]


def test_failed_job_carries_its_error(env: Env) -> None:
    sdk = env.sdk()
    job = sdk.fine_tuning.jobs.create(training_file="gs://elsewhere/train.jsonl", model="fail-gemini")
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "queued"
    failed = sdk.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.fine_tuned_model is None and failed.finished_at is not None
    assert failed.error is not None
    assert (failed.error.code, failed.error.param) == ("invalid_argument", None)
    assert failed.error.message == "Dataset validation failed: line 3: 'contents' must end with a model turn."
    assert failed.trained_tokens is None
    latest = sdk.fine_tuning.jobs.list_events(job.id).data[0]
    assert latest.level == "error" and latest.message == failed.error.message


def test_dpo_upload_and_create(env: Env) -> None:
    sdk = env.sdk(**{"x-portkey-validation-method": "dpo"})
    uploaded = sdk.files.create(file=("prefs.jsonl", io.BytesIO(PREFERENCES)), purpose="fine-tune")
    expected = converted(PREFERENCES, "vertex-gemini-preference")
    assert env.gcs_object(uri_of(uploaded.id).removeprefix(f"gs://{BUCKET}/")) == expected
    assert json.loads(expected.splitlines()[0])["completions"][0] == {
        "score": 1, "completion": {"role": "model", "parts": [{"text": "0"}]}}
    job = sdk.fine_tuning.jobs.create(training_file=uploaded.id, model=BASE_MODEL, method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}})
    assert env.standin.vertex_requests("POST")[-1].json() == {
        "baseModel": BASE_MODEL, "preferenceOptimizationSpec": {
            "trainingDatasetUri": uri_of(uploaded.id), "hyperParameters": {"epochCount": "1", "beta": 0.2}}}
    assert job.method is not None and job.method.type == "dpo"
    assert job.method.dpo is not None and job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.beta == 0.2


def test_large_upload_is_sent_in_chunks(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunegate.providers.vertex_ai import gcs

    puts: list[tuple[int, int]] = []
    original = gcs.Storage._put

    async def spy(self: Any, ctx: Any, session: str, data: bytes, offset: int, total: int | None) -> int:
        puts.append((offset, len(data)))
        return await original(self, ctx, session, data, offset, total)

    monkeypatch.setattr(gcs.Storage, "_put", spy)
    big = b"".join(chat_line(i) for i in range(120_000))  # ~17 MiB of Gemini JSONL after conversion
    expected = converted(big)
    assert len(expected) > 2 * gcs.CHUNK
    sdk = env.sdk(**{"x-portkey-validate-uploads": "false"})
    uploaded = sdk.files.create(file=("big.jsonl", io.BytesIO(big)), purpose="fine-tune")
    assert puts == [(0, gcs.CHUNK), (gcs.CHUNK, gcs.CHUNK)]  # then the final, shorter chunk
    assert uploaded.bytes == len(expected)
    assert sdk.files.content(uploaded.id).read() == expected


def test_unconvertible_training_data_is_a_400_and_leaves_nothing(env: Env) -> None:
    sdk = env.sdk(**{"x-portkey-validate-uploads": "false"})
    bad = EXAMPLES + json.dumps({"messages": [{"role": "user", "content": "no answer"}]}).encode() + b"\n"
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="fine-tune")
    body = exc.value.body
    assert body["param"] == "file" and body["code"] == "invalid_training_file"  # type: ignore[index]
    assert "line 13" in body["message"]  # type: ignore[index]
    assert env.gcs_names() == []


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"seed": 7}, "seed"),
    ({"hyperparameters": {"batch_size": 8}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"adapter_size": 3}}, "hyperparameters.adapter_size"),
    ({"method": {"type": "reinforcement", "reinforcement": {}}}, "method.type"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
     "method.supervised.hyperparameters.n_epochs"),
    ({"metadata": {"Team": "nlp"}}, "metadata"),
    ({"training_file": "file-abc"}, "training_file"),
])
def test_unmappable_create_values_are_400s(env: Env, kwargs: dict[str, Any], param: str) -> None:
    sdk = env.sdk()
    body = {"training_file": "gs://elsewhere/train.jsonl", "model": BASE_MODEL, **kwargs}
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.fine_tuning.jobs.create(**body)
    assert exc.value.body["param"] == param  # type: ignore[index]
    assert env.standin.vertex_requests() == []  # nothing reached Vertex


def test_provider_errors_arrive_openai_shaped(env: Env) -> None:
    no_retry = {"x-portkey-config": json.dumps({"retry": {"attempts": 0}})}
    sdk = env.sdk(**no_retry)
    job = sdk.fine_tuning.jobs.create(training_file="gs://elsewhere/train.jsonl", model=BASE_MODEL)
    cases: list[tuple[int, type[openai.APIStatusError], str]] = [
        (401, openai.AuthenticationError, "unauthenticated"), (404, openai.NotFoundError, "not_found"),
        (429, openai.RateLimitError, "resource_exhausted"), (500, openai.InternalServerError, "internal"),
        (503, openai.InternalServerError, "unavailable")]
    for status, error, code in cases:
        env.standin.faults["/tuningJobs/"] = [status]
        with pytest.raises(error) as exc:
            sdk.fine_tuning.jobs.retrieve(job.id)
        assert exc.value.status_code == status
        assert exc.value.body == {"message": f"scripted {status}", "type": "upstream_error", "param": None,
                                  "code": code}
    # tunegate retries idempotent GETs itself: two 503s then the answer.
    env.standin.faults["/tuningJobs/"] = [503, 503]
    assert env.sdk().fine_tuning.jobs.retrieve(job.id).id == job.id
    # An unknown job (a real-looking id) is Vertex's 404; an id that is not ours is the gateway's own 404.
    missing = "ftjob-" + base64.urlsafe_b64encode(
        f"projects/{PROJECT_NUMBER}/locations/us-central1/tuningJobs/42".encode()).decode().rstrip("=")
    with pytest.raises(openai.NotFoundError) as exc404:
        sdk.fine_tuning.jobs.retrieve(missing)
    assert exc404.value.body["message"] == "The TuningJob 42 does not exist."  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("ftjob-abc")
    # A token Vertex does not accept (sent as the provider key, no service account): 401 from Vertex.
    plain = {k: v for k, v in env.headers.items() if k != "x-portkey-vertex-service-account-json"}
    bare = openai.OpenAI(base_url=env.gw.url + "/v1", api_key="ya29.expired", default_headers=plain,
                         max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc401:
        bare.fine_tuning.jobs.list()
    assert exc401.value.body["code"] == "unauthenticated"  # type: ignore[index]
    assert env.standin.vertex_requests()[-1].headers["Authorization"] == "Bearer ya29.expired"
    # GCS errors too: a file that is not there.
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve("file-" + base64.urlsafe_b64encode(f"gs://{BUCKET}/tunegate/nope".encode()).decode())


def test_token_is_minted_once_for_concurrent_requests(env: Env) -> None:
    info, public_key = make_service_account(env.standin.token_uri)
    env.standin.register(info, public_key)
    sdk = env.sdk(**{"x-portkey-vertex-service-account-json": json.dumps(info)})
    results: list[Any] = []

    def call() -> None:
        results.append(sdk.fine_tuning.jobs.list())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 8 and all(r.data == [] for r in results)
    assert env.standin.mints[info["client_email"]] == 1
    tokens = {r.headers["Authorization"] for r in env.standin.vertex_requests("GET")}
    assert len(tokens) == 1
    # The JSON may also come base64-encoded.
    encoded = base64.b64encode(json.dumps(info).encode()).decode()
    assert env.sdk(**{"x-portkey-vertex-service-account-json": encoded}).fine_tuning.jobs.list().data == []
    assert env.standin.mints[info["client_email"]] == 1


def test_a_bad_signature_is_refused_by_the_token_endpoint(env: Env) -> None:
    info, _ = make_service_account(env.standin.token_uri)
    _, other_key = make_service_account(env.standin.token_uri)
    env.standin.register(info, other_key)  # the stand-in knows another public key for this account
    sdk = env.sdk(**{"x-portkey-vertex-service-account-json": json.dumps(info)})
    with pytest.raises(openai.AuthenticationError) as exc:
        sdk.fine_tuning.jobs.list()
    assert "Invalid JWT Signature" in exc.value.body["message"]  # type: ignore[index]
    assert "PRIVATE KEY" not in str(exc.value.body)
    assert env.standin.token_errors == ["Invalid JWT Signature."] and env.standin.vertex_requests() == []
    with pytest.raises(openai.BadRequestError) as bad:
        env.sdk(**{"x-portkey-vertex-service-account-json": "{not json"}).fine_tuning.jobs.list()
    assert bad.value.body["param"] == "x-portkey-vertex-service-account-json"  # type: ignore[index]


@pytest.mark.parametrize("token_uri", ["http://169.254.169.254/computeMetadata/v1/token",
                                       "http://10.1.2.3/token", "http://metadata.google.internal/token"])
def test_a_token_uri_on_a_private_address_is_refused(env: Env, token_uri: str) -> None:
    # The token_uri is the client's choice: the gateway must not become a way to POST into its own network.
    info, public_key = make_service_account(token_uri)
    env.standin.register(info, public_key)
    with pytest.raises(openai.BadRequestError) as exc:
        env.sdk(**{"x-portkey-vertex-service-account-json": json.dumps(info)}).fine_tuning.jobs.list()
    body: dict[str, Any] = exc.value.body  # type: ignore[assignment]
    assert body["code"] == "custom_host_not_allowed"
    assert body["param"] == "x-portkey-vertex-service-account-json"
    assert "token_uri" in body["message"] and "PRIVATE KEY" not in body["message"]
    assert env.standin.mints == {} and env.standin.vertex_requests() == []


def test_token_endpoint_failures_are_openai_errors(env: Env) -> None:
    # Nothing listens on this loopback port: the child process cannot reach it -> 502, no secret in the message.
    info, _ = make_service_account(f"http://127.0.0.1:{free_port()}/token")
    with pytest.raises(openai.APIStatusError) as down:
        env.sdk(**{"x-portkey-vertex-service-account-json": json.dumps(info)}).fine_tuning.jobs.list()
    assert down.value.status_code == 502
    assert "token endpoint" in down.value.body["message"]  # type: ignore[index]
    # A JSON whose private key is not a key: 400 naming the header, the key never echoed.
    broken = {**info, "private_key": "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"}
    with pytest.raises(openai.BadRequestError) as bad:
        env.sdk(**{"x-portkey-vertex-service-account-json": json.dumps(broken)}).fine_tuning.jobs.list()
    assert bad.value.body["code"] == "invalid_service_account"  # type: ignore[index]
    assert "bm90IGEga2V5" not in json.dumps(bad.value.body)
    assert env.standin.vertex_requests() == []


def _mint_children() -> list[int]:
    """Pids of this process's token-minting children still alive."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit():
                continue
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and b"vertex_ai.mint" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return pids


async def test_a_hanging_token_endpoint_times_out_and_leaves_no_child(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunegate.errors import UpstreamTimeout
    from tunegate.providers.vertex_ai import auth

    with socket.socket() as listener:  # accepts connections (backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        info, _ = make_service_account(f"http://127.0.0.1:{listener.getsockname()[1]}/token")
        monkeypatch.setattr(auth, "MINT_TIMEOUT", 3.0)
        source = auth.TokenSource()
        with pytest.raises(UpstreamTimeout):
            await source.token(info, ["127.0.0.1"])
    assert source.mints == 0 and _mint_children() == []


async def test_a_token_uri_that_rebinds_is_refused_at_connect_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # The gateway's check sees a public address; the child then resolves 'localhost' (not on this empty
    # operator list) and refuses to connect: the token endpoint never hears from it.
    import ipaddress

    from tunegate import hosts
    from tunegate.errors import InvalidRequest
    from tunegate.providers.vertex_ai import auth

    async def public_at_check_time(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address("93.184.216.34")]

    standin = VertexStandIn()
    with ServerThread(standin.app()) as server:
        standin.url = server.url
        port = server.url.rsplit(":", 1)[1]
        info, public_key = make_service_account(f"http://localhost:{port}/token")
        standin.register(info, public_key)
        monkeypatch.setattr(hosts, "lookup", public_at_check_time)
        with pytest.raises(InvalidRequest) as refused:
            await auth.TokenSource().token(info, [])
        assert refused.value.code == "custom_host_not_allowed" and "token_uri" in refused.value.message
        assert standin.mints == {} and standin.token_errors == []
        # The same account with 'localhost' allowed mints a token through the same pinned path.
        assert await auth.TokenSource().token(info, ["localhost"])
        assert standin.mints == {info["client_email"]: 1}


async def test_at_most_four_tokens_are_minted_at_once() -> None:
    # Six new accounts at the same moment: the gateway runs at most MINTS_AT_ONCE minting children at a time.
    from aiohttp import web

    from tunegate.providers.vertex_ai import auth

    in_flight, most = 0, 0

    async def slow_token(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(1.5)  # held long enough for every child that is allowed to run to arrive
        in_flight -= 1
        return web.json_response({"access_token": "ya29.slow", "expires_in": 3600, "token_type": "Bearer"})

    app = web.Application()
    app.router.add_post("/token", slow_token)
    with ServerThread(app) as server:
        accounts = [make_service_account(server.url + "/token")[0] for _ in range(6)]
        source = auth.TokenSource()
        tokens = await asyncio.gather(*(source.token(info, ["127.0.0.1"]) for info in accounts))
    assert tokens == ["ya29.slow"] * 6 and source.mints == 6
    assert most == auth.MINTS_AT_ONCE
