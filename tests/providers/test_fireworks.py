"""Fireworks AI end to end: the official `openai` SDK → the gateway → the Fireworks stand-in
(``tests/standins/fireworks.py``), plus a check of the stand-in against the contract's tables."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
import requests

from tests.gateway import Gateway
from tests.standins.fireworks import FireworksStandIn
from tests.standins.openai_like import ServerThread
from tunegate.providers import REGISTRY

EXAMPLES = b"".join(
    json.dumps({"messages": [{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": f"Say {i}"},
                             {"role": "assistant", "content": f"{i}"}]}).encode() + b"\n"
    for i in range(12)
)
ACCOUNT = "acme-ai"
NO_RETRY = json.dumps({"retry": {"attempts": 0}})
CONTRACT = Path(__file__).resolve().parents[2].parent / "shared" / "specs" / "fireworks-finetuning-contract.md"


@pytest.fixture
def fw(tmp_path: Path) -> Iterator[tuple[FireworksStandIn, Gateway, dict[str, str]]]:
    standin = FireworksStandIn(account=ACCOUNT)
    server = ServerThread(standin.app())
    standin.url = server.url
    with server, Gateway(tmp_path / "data") as gw:
        # The custom host is the URL up to and including the version segment.
        headers = {"x-portkey-provider": "fireworks", "x-portkey-custom-host": server.url + "/v1",
                   "x-portkey-fireworks-account-id": ACCOUNT}
        yield standin, gw, headers


def sdk(gw: Gateway, standin: FireworksStandIn, headers: dict[str, str], **extra: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=standin.api_key, default_headers={**headers, **extra},
                         max_retries=0)


def sent(standin: FireworksStandIn, method: str, pattern: str) -> list[Any]:
    return [r for r in standin.requests if r.method == method and re.search(pattern, r.path)]


def upload(client: openai.OpenAI, name: str = "train.jsonl", data: bytes = EXAMPLES) -> Any:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


# ---- lifecycle ---------------------------------------------------------------------------------


def test_full_lifecycle(fw: tuple[FireworksStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = fw
    client = sdk(gw, standin, headers)
    f = upload(client)
    assert re.fullmatch(r"file-train-[a-z0-9]{8}", f.id)
    assert (f.object, f.bytes, f.filename, f.purpose, f.status) == ("file", len(EXAMPLES), "train.jsonl",
                                                                     "fine-tune", "processed")
    created = json.loads(sent(standin, "POST", r"/datasets$")[0].body)
    assert created == {"datasetId": f.id, "dataset": {"displayName": "train.jsonl", "format": "CHAT",
                                                     "userUploaded": {}, "exampleCount": "12"}}
    assert standin.contents[f.id] == {"train.jsonl": EXAMPLES}  # one multipart :upload, bytes unchanged
    assert len(sent(standin, "POST", rf"/datasets/{f.id}:upload$")) == 1
    assert all(r.headers["Authorization"] == f"Bearer {standin.api_key}" for r in standin.requests)

    job = client.fine_tuning.jobs.create(
        training_file=f.id, model="llama-v3p1-8b-instruct", suffix="Weather Bot",
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2}}})
    post = sent(standin, "POST", r"/supervisedFineTuningJobs$")[0]
    assert post.path == f"/v1/accounts/{ACCOUNT}/supervisedFineTuningJobs"
    assert re.fullmatch(r"weather-bot-[a-z0-9]{8}", post.query["supervisedFineTuningJobId"])
    body = json.loads(post.body)
    assert body.pop("learningRate") == pytest.approx(2e-4)
    assert body == {"dataset": f"accounts/{ACCOUNT}/datasets/{f.id}",
                    "baseModel": "accounts/fireworks/models/llama-v3p1-8b-instruct",
                    "displayName": "Weather Bot", "epochs": 2, "batchSizeSamples": 4}
    assert job.id == post.query["supervisedFineTuningJobId"]
    assert (job.object, job.status, job.model, job.training_file, job.organization_id) == (
        "fine_tuning.job", "validating_files", "llama-v3p1-8b-instruct", f.id, ACCOUNT)
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size,
            job.hyperparameters.learning_rate_multiplier) == (2, 4, 2.0)
    assert isinstance(job.created_at, int) and job.created_at > 1_700_000_000
    assert job.fine_tuned_model is None and job.finished_at is None and job.error is None

    polled = [client.fine_tuning.jobs.retrieve(job.id) for _ in range(5)]
    assert [j.status for j in polled] == ["validating_files", "queued", "running", "running", "succeeded"]
    assert [j.provider_status for j in polled] == [  # type: ignore[attr-defined]
        "JOB_STATE_VALIDATING", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_WRITING_RESULTS",
        "JOB_STATE_COMPLETED"]
    done = polled[-1]
    assert done.fine_tuned_model == f"accounts/{ACCOUNT}/models/{job.id}"
    assert done.trained_tokens == 4096 and done.error is None
    assert isinstance(done.finished_at, int) and done.finished_at >= done.created_at

    listed = client.fine_tuning.jobs.list()
    assert [j.id for j in listed.data] == [job.id] and listed.has_more is False

    second = client.fine_tuning.jobs.create(training_file=f.id, model="accounts/acme-ai/models/my-base")
    assert json.loads(sent(standin, "POST", r"/supervisedFineTuningJobs$")[1].body)["baseModel"] == (
        "accounts/acme-ai/models/my-base")
    cancelled = client.fine_tuning.jobs.cancel(second.id)
    assert cancelled.status == "cancelled" and cancelled.id == second.id
    assert cancelled.provider_status == "JOB_STATE_CANCELLED"  # type: ignore[attr-defined]
    assert isinstance(cancelled.finished_at, int) and cancelled.fine_tuned_model is None
    cancel_calls = sent(standin, "POST", rf"/supervisedFineTuningJobs/{second.id}:cancel$")
    assert len(cancel_calls) == 1 and json.loads(cancel_calls[0].body) == {}
    assert not [r for r in standin.requests if r.method == "DELETE"]  # a cancel is never a delete
    assert second.id in standin.jobs

    resumed = client.fine_tuning.jobs.resume(second.id)
    assert resumed.status == "queued" and resumed.finished_at is None
    assert len(sent(standin, "POST", rf"{second.id}:resume$")) == 1

    with pytest.raises(openai.BadRequestError) as exc:
        client.fine_tuning.jobs.cancel(job.id)  # already succeeded
    assert exc.value.status_code == 400
    assert exc.value.body["message"] == "job is JOB_STATE_COMPLETED and cannot be cancelled"  # type: ignore[index]
    assert exc.value.body["code"] == "invalid_argument"  # type: ignore[index]


def test_failed_job_reports_its_error(fw: tuple[FireworksStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = fw
    client = sdk(gw, standin, headers)
    f = upload(client)
    job = client.fine_tuning.jobs.create(training_file=f.id, model="fail-model")
    statuses = [client.fine_tuning.jobs.retrieve(job.id) for _ in range(2)]
    assert [j.status for j in statuses] == ["validating_files", "failed"]
    failed = statuses[-1]
    assert failed.error is not None
    assert (failed.error.code, failed.error.message, failed.error.param) == (
        "invalid_argument", "Dataset row 3: assistant message is missing.", None)
    assert failed.fine_tuned_model is None and isinstance(failed.finished_at, int)


def test_hyperparameters_native_extras_and_validation_file(
        fw: tuple[FireworksStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = fw
    client = sdk(gw, standin, headers)
    train, valid = upload(client), upload(client, "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        training_file=train.id, validation_file=valid.id, model="qwen3-8b",
        extra_body={"method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 3, "lora_rank": 16, "learning_rate": 3e-5, "max_context_length": 8192,
            "early_stop": True}}}})
    body = json.loads(sent(standin, "POST", r"/supervisedFineTuningJobs$")[0].body)
    assert body == {"dataset": f"accounts/{ACCOUNT}/datasets/{train.id}",
                    "evaluationDataset": f"accounts/{ACCOUNT}/datasets/{valid.id}",
                    "baseModel": "accounts/fireworks/models/qwen3-8b", "epochs": 3, "loraRank": 16,
                    "learningRate": 3e-5, "maxContextLength": 8192, "earlyStop": True}
    assert re.fullmatch(r"qwen3-8b-[a-z0-9]{8}", job.id)
    assert job.validation_file == valid.id
    hp = job.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (3, "auto", 0.3)
    assert (hp.lora_rank, hp.learning_rate, hp.max_context_length) == (16, 3e-5, 8192)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"seed": 7}, "seed"),
    ({"metadata": {"team": "a"}}, "metadata"),
    ({"method": {"type": "dpo", "dpo": {}}}, "method.type"),
    ({"hyperparameters": {"n_epochs": 2, "warmup_ratio": 0.1}}, "hyperparameters.warmup_ratio"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"learning_rate_multiplier": 2, "learning_rate": 1e-4}}, "hyperparameters.learning_rate"),
    ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations[0].wandb"),  # no W&B key
])
def test_unmappable_values_are_a_clear_400(fw: tuple[FireworksStandIn, Gateway, dict[str, str]],
                                           kwargs: dict[str, Any], param: str) -> None:
    standin, gw, headers = fw
    client = sdk(gw, standin, headers)
    with pytest.raises(openai.BadRequestError) as exc:
        client.fine_tuning.jobs.create(training_file="file-x", model="qwen3-8b", **kwargs)
    assert exc.value.body["param"] == param  # type: ignore[index]
    assert not sent(standin, "POST", r"/supervisedFineTuningJobs$")  # nothing reached Fireworks


def test_unsupported_operations(fw: tuple[FireworksStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = fw
    client = sdk(gw, standin, headers)
    for call in (lambda: client.fine_tuning.jobs.list_events("some-job"),
                 lambda: client.fine_tuning.jobs.checkpoints.list("some-job"),
                 lambda: client.fine_tuning.jobs.pause("some-job")):
        with pytest.raises(openai.BadRequestError) as exc:
            call()
        assert exc.value.body["code"] == "unsupported_operation"  # type: ignore[index]
        assert "Fireworks" in exc.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.create(file=("b.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    assert exc.value.body["param"] == "purpose"  # type: ignore[index]
    assert standin.requests == []


def test_retried_create_finds_the_job_it_made(fw: tuple[FireworksStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = fw
    client = sdk(gw, standin, headers)
    f = upload(client)
    standin.lose_create_answers = 1
    job = client.fine_tuning.jobs.create(training_file=f.id, model="qwen3-8b",
                                         extra_headers={"Idempotency-Key": "create-once-1"})
    posts = sent(standin, "POST", r"/supervisedFineTuningJobs$")
    assert len(posts) == 2 and posts[0].query == posts[1].query  # the same job id both times
    assert list(standin.jobs) == [job.id] and job.status == "validating_files"
    standin.lose_create_answers = 1
    with pytest.raises(openai.InternalServerError):  # without a key a create is sent once, never replayed
        client.fine_tuning.jobs.create(training_file=f.id, model="qwen3-8b")
    assert len(sent(standin, "POST", r"/supervisedFineTuningJobs$")) == 3


# ---- pagination --------------------------------------------------------------------------------


def test_job_pagination_with_auto_paging(fw: tuple[FireworksStandIn, Gateway, dict[str, str]],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    standin, gw, headers = fw
    monkeypatch.setattr(REGISTRY["fireworks-ai"], "page_size_max", 2)  # force several upstream pages
    client = sdk(gw, standin, headers)
    f = upload(client)
    created = [client.fine_tuning.jobs.create(training_file=f.id, model="qwen3-8b", suffix=f"j{i}").id
               for i in range(7)]
    first = client.fine_tuning.jobs.list(limit=3)
    assert [j.id for j in first.data] == created[::-1][:3] and first.has_more is True
    assert [j.id for j in first] == created[::-1]  # the SDK follows after=<last id> to the end
    last = client.fine_tuning.jobs.list(limit=3, after=created[2])
    assert [j.id for j in last.data] == created[1::-1] and last.has_more is False
    exact = client.fine_tuning.jobs.list(limit=7)
    assert len(exact.data) == 7
    # has_more is Fireworks's nextPageToken, which comes with every full page (as from many AIP servers):
    # the page after the last one is then empty.
    tail = client.fine_tuning.jobs.list(limit=7, after=exact.data[-1].id)
    assert exact.has_more is True and tail.data == [] and tail.has_more is False
    lists = sent(standin, "GET", r"/supervisedFineTuningJobs$")
    assert all(r.query["orderBy"] == "createTime desc" and int(r.query["pageSize"]) <= 2 for r in lists)
    assert any("pageToken" in r.query for r in lists)
    with pytest.raises(openai.BadRequestError) as exc:
        client.fine_tuning.jobs.list(after="no-such-job")
    assert exc.value.body["param"] == "after"  # type: ignore[index]


def test_files_list_retrieve_content_delete(fw: tuple[FireworksStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = fw
    client = sdk(gw, standin, headers)
    lines = EXAMPLES.splitlines(keepends=True)
    ids = [upload(client, f"part{i}.jsonl", b"".join(lines[: 10 + i])).id for i in range(3)]
    page = client.files.list(limit=2)
    assert [x.id for x in page.data] == ids[::-1][:2] and page.has_more is True
    assert [x.id for x in client.files.list(limit=1)] == ids[::-1]
    assert [x.id for x in client.files.list(order="asc")] == ids
    assert client.files.list(purpose="batch").data == []

    got = client.files.retrieve(ids[0])
    assert (got.id, got.filename, got.purpose, got.status, got.bytes) == (ids[0], "part0.jsonl", "fine-tune",
                                                                         "processed", 0)
    assert got.example_count == 10  # type: ignore[attr-defined]
    assert client.files.content(ids[1]).read() == b"".join(lines[:11])
    signed = [r for r in standin.requests if r.path.startswith("/signed/")]
    assert len(signed) == 1 and "Authorization" not in signed[0].headers
    assert sent(standin, "GET", rf"/datasets/{ids[1]}:getDownloadEndpoint$")

    deleted = client.files.delete(ids[2])
    assert (deleted.id, deleted.object, deleted.deleted) == (ids[2], "file", True)
    assert ids[2] not in standin.datasets
    with pytest.raises(openai.NotFoundError) as exc:
        client.files.retrieve(ids[2])
    assert exc.value.body["code"] == "not_found"  # type: ignore[index]


def test_large_upload_uses_the_signed_url_flow(fw: tuple[FireworksStandIn, Gateway, dict[str, str]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    standin, gw, headers = fw
    monkeypatch.setattr(REGISTRY["fireworks-ai"], "small_upload_max", 100)
    client = sdk(gw, standin, headers)
    f = upload(client, "big.txt")
    assert f.bytes == len(EXAMPLES) and f.status == "processed" and f.filename == "big.txt"
    endpoint = sent(standin, "POST", rf"/datasets/{f.id}:getUploadEndpoint$")
    assert json.loads(endpoint[0].body) == {"filenameToSize": {"big.txt.jsonl": str(len(EXAMPLES))}}
    put = [r for r in standin.requests if r.method == "PUT"]
    assert len(put) == 1 and "Authorization" not in put[0].headers
    assert put[0].headers["X-Goog-Content-Length-Range"] == f"{len(EXAMPLES)},{len(EXAMPLES)}"
    assert json.loads(sent(standin, "POST", rf"/datasets/{f.id}:validateUpload$")[0].body) == {}
    assert not sent(standin, "POST", r":upload$")
    assert standin.contents[f.id] == {"big.txt.jsonl": EXAMPLES}
    assert client.files.content(f.id).read() == EXAMPLES


def test_failed_upload_leaves_no_dataset(fw: tuple[FireworksStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = fw
    standin.faults[":upload"] = [500]
    client = sdk(gw, standin, headers)
    with pytest.raises(openai.InternalServerError) as exc:
        upload(client)
    assert exc.value.status_code == 500 and exc.value.body["message"] == "scripted 500"  # type: ignore[index]
    assert standin.datasets == {} and len(sent(standin, "DELETE", r"/datasets/file-train-")) == 1


# ---- errors --------------------------------------------------------------------------------------


def test_provider_errors_arrive_openai_shaped(fw: tuple[FireworksStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = fw
    bad = openai.OpenAI(base_url=gw.url + "/v1", api_key="fw-wrong-key-0000", default_headers=headers,
                        max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        bad.fine_tuning.jobs.list()
    assert auth.value.status_code == 401
    assert auth.value.body == {"message": "unauthenticated: invalid API key", "type": "authentication_error",  # type: ignore[comparison-overlap]
                               "param": None, "code": "unauthenticated"}

    client = sdk(gw, standin, headers, **{"x-portkey-config": NO_RETRY})
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.retrieve("no-such-job")
    assert missing.value.body == {"message": "supervised fine-tuning job 'no-such-job' not found",  # type: ignore[comparison-overlap]
                                  "type": "invalid_request_error", "param": None, "code": "not_found"}

    other = sdk(gw, standin, headers, **{"x-portkey-fireworks-account-id": "someone-else"})
    with pytest.raises(openai.PermissionDeniedError) as denied:
        other.files.list()
    assert denied.value.body["code"] == "permission_denied"  # type: ignore[index]

    standin.faults["/supervisedFineTuningJobs"] = [429]
    with pytest.raises(openai.RateLimitError) as limited:
        client.fine_tuning.jobs.list()
    assert limited.value.status_code == 429 and limited.value.response.headers["retry-after"] == "0"
    assert limited.value.body["code"] == "resource_exhausted"  # type: ignore[index]
    assert limited.value.body["type"] == "rate_limit_error"  # type: ignore[index]

    for status in (500, 503):
        standin.faults["/supervisedFineTuningJobs"] = [status]
        with pytest.raises(openai.InternalServerError) as server:
            client.fine_tuning.jobs.list()
        assert server.value.status_code == status
        assert server.value.body["message"] == f"scripted {status}"  # type: ignore[index]

    # Raw HTTP: the error body is never `{}`.
    standin.faults["/supervisedFineTuningJobs"] = [503]
    raw = requests.get(gw.url + "/v1/fine_tuning/jobs", timeout=10,
                       headers={**headers, "x-portkey-config": NO_RETRY,
                                "Authorization": f"Bearer {standin.api_key}"})
    assert raw.status_code == 503 and raw.json()["error"]["message"] == "scripted 503"

    # With the default policy tunegate retries the idempotent GET itself.
    standin.faults["/supervisedFineTuningJobs"] = [503, 429]
    retried = sdk(gw, standin, headers).fine_tuning.jobs.list()
    assert retried.data == [] and standin.faults["/supervisedFineTuningJobs"] == []


def test_account_is_required(fw: tuple[FireworksStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = fw
    no_account = {k: v for k, v in headers.items() if k != "x-portkey-fireworks-account-id"}
    with pytest.raises(openai.BadRequestError) as exc:
        sdk(gw, standin, no_account).fine_tuning.jobs.list()
    assert exc.value.body["param"] == "x-portkey-fireworks-account-id"  # type: ignore[index]
    assert standin.requests == []


# ---- the stand-in against the contract -------------------------------------------------------------


def _tables(text: str) -> dict[str, list[tuple[list[str], str, str]]]:
    """section heading → rows of (field names, type cell, last cell) from the markdown tables."""
    sections: dict[str, list[tuple[list[str], str, str]]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("#"):
            current = line.lstrip("#").strip()
            sections[current] = []
        elif line.startswith("| `") and current:
            cells = [c.strip() for c in line.strip("|").split("|")]
            sections[current].append((re.findall(r"`(\w+)`", cells[0]), cells[1], cells[-1]))
    return sections


RFC3339 = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$"


def _prop(cell: str) -> dict[str, Any]:
    if "rfc3339" in cell.lower():
        return {"type": "string", "pattern": RFC3339}
    return {"type": _json_type(cell)}


def _json_type(cell: str) -> str:
    cell = cell.lower()
    for prefix, kind in (("string", "string"), ("int", "integer"), ("float", "number"), ("bool", "boolean"),
                         ("rfc3339", "string"), ("enum", "string")):
        if cell.startswith(prefix):
            return kind
    return "object"


def _schemas() -> dict[str, Any]:
    if not CONTRACT.exists():
        pytest.skip("../shared/specs is not beside the checkout")
    text = CONTRACT.read_text()
    tables = _tables(text)

    def section(start: str) -> list[tuple[list[str], str, str]]:
        return next(rows for title, rows in tables.items() if title.startswith(start))

    def enum(anchor: str) -> list[str]:
        block = text[text.index(anchor):].split("\n\n", 1)[0]
        return re.findall(r"`([A-Z][A-Z0-9_]+)`", block)

    status = {"type": "object", "additionalProperties": False,
              "properties": {"code": {"enum": enum("`Status.code` enum")}, "message": {"type": "string"}}}
    job_props: dict[str, Any] = {}
    for names, kind, _ in section("Create body") + section("Job object"):
        for name in names:
            job_props[name] = _prop(kind)
    job_props["state"] = {"enum": enum("`state` enum (JobState)")}
    job_props["status"] = status
    job = {"type": "object", "additionalProperties": False, "properties": job_props,
           "required": ["dataset", "name", "state", "createTime"]}
    ds_props: dict[str, Any] = {}
    for names, kind, notes in section("`Dataset` object"):
        for name in names:
            ds_props[name] = _prop(kind)
            if name == "state":
                ds_props[name] = {"enum": re.findall(r"`([A-Z_]+)`", notes)}
            if name == "format":
                ds_props[name] = {"enum": re.findall(r"`([A-Z_]+)`", notes)}
    ds_props["status"] = status
    dataset = {"type": "object", "additionalProperties": False, "properties": ds_props,
               "required": ["name", "state", "createTime"]}
    upload_line = next(line for line in section_text(text, "### `DatasetUploadResponse`").splitlines()
                       if line.startswith("`{"))
    upload_props = {k: {"type": {"str": "string", "int": "integer"}[t]}
                    for k, t in re.findall(r'"(\w+)": (str|int)', upload_line)}
    signed = {"type": "object", "additionalProperties": False, "required": ["filenameToSignedUrls"],
              "properties": {"filenameToSignedUrls": {"type": "object",
                                                      "additionalProperties": {"type": "string"}}}}
    return {
        "job": job, "dataset": dataset, "signed": signed, "empty": {"type": "object", "maxProperties": 0},
        "upload": {"type": "object", "additionalProperties": False, "properties": upload_props,
                   "required": sorted(upload_props)},
        "jobs": {"type": "object", "additionalProperties": False, "required": ["supervisedFineTuningJobs"],
                 "properties": {"supervisedFineTuningJobs": {"type": "array", "items": job},
                                "nextPageToken": {"type": "string"}}},
        "datasets": {"type": "object", "additionalProperties": False, "required": ["datasets"],
                     "properties": {"datasets": {"type": "array", "items": dataset},
                                    "nextPageToken": {"type": "string"}}},
        "error": {"type": "object", "required": ["code", "message"],
                  "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}},
    }


def section_text(text: str, anchor: str) -> str:
    start = text.index(anchor)
    return text[start:].split("\n### ", 1)[0]


def test_standin_answers_match_the_contract(tmp_path: Path) -> None:
    schemas = _schemas()
    standin = FireworksStandIn(account=ACCOUNT)
    server = ServerThread(standin.app())
    standin.url = server.url
    base = f"{server.url}/v1/accounts/{ACCOUNT}"
    auth = {"Authorization": f"Bearer {standin.api_key}"}

    def check(kind: str, resp: requests.Response, status: int = 200) -> Any:
        assert resp.status_code == status, resp.text
        jsonschema.validate(resp.json(), schemas[kind])
        return resp.json()

    with server:
        s = requests.Session()
        s.headers.update(auth)
        check("dataset", s.post(f"{base}/datasets", json={"datasetId": "small", "dataset": {
            "displayName": "t.jsonl", "format": "CHAT", "userUploaded": {}, "exampleCount": "12"}}))
        check("upload", s.post(f"{base}/datasets/small:upload", files={"file": ("t.jsonl", EXAMPLES)}))
        check("dataset", s.post(f"{base}/datasets", json={"datasetId": "big", "dataset": {"userUploaded": {}}}))
        urls = check("signed", s.post(f"{base}/datasets/big:getUploadEndpoint",
                                      json={"filenameToSize": {"t.jsonl": str(len(EXAMPLES))}}))
        put = requests.put(urls["filenameToSignedUrls"]["t.jsonl"], data=EXAMPLES, timeout=10, headers={
            "Content-Type": "application/octet-stream",
            "X-Goog-Content-Length-Range": f"{len(EXAMPLES)},{len(EXAMPLES)}"})
        assert put.status_code == 200
        check("empty", s.post(f"{base}/datasets/big:validateUpload", json={}))
        assert check("dataset", s.get(f"{base}/datasets/big"))["state"] == "READY"
        listed = check("datasets", s.get(f"{base}/datasets", params={"pageSize": "1"}))
        assert listed["nextPageToken"]
        check("datasets", s.get(f"{base}/datasets", params={"pageToken": listed["nextPageToken"]}))
        check("signed", s.get(f"{base}/datasets/big:getDownloadEndpoint"))

        hp = {"epochs": 2, "learningRate": 1e-4, "loraRank": 8, "batchSizeSamples": 4}
        for model, job_id in (("accounts/fireworks/models/qwen3-8b", "ok-job"),
                              ("accounts/fireworks/models/fail-x", "bad-job")):
            check("job", s.post(f"{base}/supervisedFineTuningJobs", params={"supervisedFineTuningJobId": job_id},
                                json={"dataset": f"accounts/{ACCOUNT}/datasets/small", "baseModel": model, **hp}))
        states = {check("job", s.get(f"{base}/supervisedFineTuningJobs/ok-job"))["state"] for _ in range(5)}
        assert "JOB_STATE_COMPLETED" in states
        assert check("job", s.get(f"{base}/supervisedFineTuningJobs/bad-job"))["state"] == "JOB_STATE_VALIDATING"
        assert check("job", s.get(f"{base}/supervisedFineTuningJobs/bad-job"))["state"] == "JOB_STATE_FAILED"
        check("job", s.post(f"{base}/supervisedFineTuningJobs", json={
            "dataset": f"accounts/{ACCOUNT}/datasets/small", "baseModel": "accounts/fireworks/models/q"}))
        uuid_job = [j for j in standin.jobs if j not in ("ok-job", "bad-job")][0]
        check("empty", s.post(f"{base}/supervisedFineTuningJobs/{uuid_job}:cancel", json={}))
        check("job", s.get(f"{base}/supervisedFineTuningJobs/{uuid_job}"))
        check("job", s.post(f"{base}/supervisedFineTuningJobs/{uuid_job}:resume", json={}))
        check("jobs", s.get(f"{base}/supervisedFineTuningJobs", params={"orderBy": "createTime desc"}))
        check("error", s.get(f"{base}/supervisedFineTuningJobs/nope"), 404)
        check("error", requests.get(f"{base}/datasets", timeout=10), 401)
        check("error", s.post(f"{base}/supervisedFineTuningJobs", json={"dataset": "x", "bogus": 1}), 400)
