"""Bedrock end to end with the `openai` SDK through the gateway.

Two upstreams: moto in server mode (S3 for every test; Bedrock for the moto tests) and the stand-in
``tests/standins/bedrock.py`` for the Bedrock behaviour moto lacks (201 on create, real ARNs, a job
lifecycle, failures, scripted errors, SigV4 verification). Every request the gateway sent to the
stand-in is validated against the botocore model in ``../shared/specs/bedrock-model-customization.json``,
patterns, enums and bounds included (botocore's own validator skips patterns).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import openai
import pytest
import requests
from moto.bedrock.models import BedrockBackend, bedrock_backends

from tests.gateway import Gateway
from tests.standins import bedrock as standin_mod
from tests.standins.bedrock import BedrockStandIn
from tests.standins.openai_like import ServerThread
from tests.standins.sts import StsStandIn
from tunegate.aws.s3 import PART_SIZE
from tunegate.providers import ids

SPEC = Path(__file__).resolve().parents[3] / "shared" / "specs" / "bedrock-model-customization.json"
ROLE = "arn:aws:iam::123456789012:role/BedrockFineTuning"
BUCKET = "tunegate-train"
NOVA = "amazon.nova-micro-v1:0:128k"
CHAT = b"".join(json.dumps({"messages": [{"role": "system", "content": "Be terse."},
                                         {"role": "user", "content": f"Say {i}"},
                                         {"role": "assistant", "content": f"{i}"}]}).encode() + b"\n"
               for i in range(12))
NO_RETRY = json.dumps({"retry": {"attempts": 0}})


# ---- moto -----------------------------------------------------------------------------------------

@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh moto (S3 bucket created) that the gateway reaches through AWS_ENDPOINT_URL."""
    requests.post(moto_url + "/moto-api/reset", timeout=5)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_BEDROCK", raising=False)
    # Moto's Bedrock finds jobs by name only; the real service (and tunegate) use the job ARN.
    by_name_get = BedrockBackend.get_model_customization_job
    by_name_stop = BedrockBackend.stop_model_customization_job

    def _name(backend: BedrockBackend, identifier: str) -> str:
        identifier = unquote(identifier)
        return next((n for n, j in backend.model_customization_jobs.items() if j.job_arn == identifier), identifier)

    monkeypatch.setattr(BedrockBackend, "get_model_customization_job",
                        lambda self, job_identifier: by_name_get(self, _name(self, job_identifier)))
    monkeypatch.setattr(BedrockBackend, "stop_model_customization_job",
                        lambda self, job_identifier: by_name_stop(self, _name(self, job_identifier)))
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="AKIAMOTO",
                      aws_secret_access_key="moto-secret")
    s3.create_bucket(Bucket=BUCKET)
    yield s3


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with Gateway(tmp_path / "data") as gateway:
        yield gateway


def aws_headers(**extra: str) -> dict[str, str]:
    return {"x-portkey-provider": "bedrock", "x-portkey-aws-region": "us-east-1",
            "x-portkey-aws-access-key-id": standin_mod.ACCESS_KEY,
            "x-portkey-aws-secret-access-key": standin_mod.SECRET,
            "x-portkey-aws-s3-bucket": f"{BUCKET}/team-a", "x-portkey-aws-bedrock-role-arn": ROLE, **extra}


def sdk(gw: Gateway, headers: dict[str, str], api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=api_key, default_headers=headers, max_retries=0)


def s3_key(file_id: str) -> str:
    uri = ids.decode("file", file_id)
    assert uri.startswith(f"s3://{BUCKET}/")
    return uri[len(f"s3://{BUCKET}/"):]


def test_moto_files_and_jobs(aws: Any, gw: Gateway) -> None:
    client = sdk(gw, aws_headers())
    uploaded = client.files.create(file=("train data.jsonl", io.BytesIO(CHAT)), purpose="fine-tune")
    key = s3_key(uploaded.id)
    assert key.startswith("team-a/files/") and key.endswith("/fine-tune/train_data.jsonl")
    stored = aws.get_object(Bucket=BUCKET, Key=key)
    lines = [json.loads(line) for line in stored["Body"].read().splitlines()]
    assert len(lines) == 12 and lines[0] == {  # converted for Nova (the default format)
        "schemaVersion": "bedrock-conversation-2024", "system": [{"text": "Be terse."}],
        "messages": [{"role": "user", "content": [{"text": "Say 0"}]},
                     {"role": "assistant", "content": [{"text": "0"}]}]}
    assert stored["Metadata"]["tunegate-format"] == "bedrock-conversation-2024"
    assert uploaded.bytes == stored["ContentLength"] and uploaded.filename == "train_data.jsonl"
    assert uploaded.purpose == "fine-tune" and uploaded.status == "processed"
    assert aws.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []

    retrieved = client.files.retrieve(uploaded.id)
    assert retrieved.model_dump() == uploaded.model_dump()
    assert client.files.content(uploaded.id).read() == aws.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    jobs = []
    for n in range(3):
        jobs.append(client.fine_tuning.jobs.create(
            model=NOVA, training_file=uploaded.id, suffix=f"weather{n}",
            hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 2}))
    job = jobs[0]
    assert job.object == "fine_tuning.job" and job.status == "running" and job.model == NOVA
    assert job.training_file == uploaded.id and job.hyperparameters.n_epochs == 3
    assert job.hyperparameters.learning_rate_multiplier == 2.0 and job.finished_at is None and job.error is None
    native = bedrock_backends["123456789012"]["us-east-1"].model_customization_jobs
    assert ids.decode("ftjob", job.id) == next(iter(native.values())).job_arn
    sent = next(iter(native.values()))
    assert sent.hyper_parameters == {"epochCount": "3", "learningRate": "0.00002"}
    assert sent.training_data_config == {"s3Uri": f"s3://{BUCKET}/{key}"}
    assert sent.output_data_config["s3Uri"].startswith(f"s3://{BUCKET}/team-a/outputs/tunegate-")
    assert sent.role_arn == ROLE and sent.customization_type == "FINE_TUNING"
    assert re.fullmatch(r"weather0-[0-9a-f]{8}", sent.custom_model_name)

    assert client.fine_tuning.jobs.retrieve(job.id).id == job.id
    listed = [j.id for j in client.fine_tuning.jobs.list(limit=2)]  # auto-pagination across 2 pages
    assert sorted(listed) == sorted(j.id for j in jobs) and len(listed) == 3
    first = client.fine_tuning.jobs.list(limit=2)
    assert first.has_more is True and len(first.data) == 2
    rest = client.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert rest.has_more is False and [j.id for j in first.data + rest.data] == listed

    cancelled = client.fine_tuning.jobs.cancel(jobs[1].id)
    assert cancelled.status == "cancelled" and cancelled.id == jobs[1].id

    sent.status = "Completed"  # moto never finishes a job: finish it by hand
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded" and done.fine_tuned_model == sent.output_model_arn and done.finished_at

    assert [f.id for f in client.files.list()] == [uploaded.id]
    assert client.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_moto_file_listing_pages_newest_first(aws: Any, gw: Gateway) -> None:
    client = sdk(gw, aws_headers())
    made = [client.files.create(file=(f"f{i}.jsonl", io.BytesIO(CHAT)), purpose="fine-tune").id for i in range(5)]
    other = client.files.create(file=("b.jsonl", io.BytesIO(b'{"custom_id": "1"}\n')), purpose="batch")
    page = client.files.list(limit=2, purpose="fine-tune")
    assert [f.id for f in page.data] == made[::-1][:2] and page.has_more is True
    assert [f.id for f in client.files.list(limit=2, purpose="fine-tune")] == made[::-1]  # auto-pagination
    assert [f.id for f in client.files.list()][0] == other.id
    raw = requests.get(gw.url + "/v1/files", params={"limit": 2, "after": made[2]}, headers=aws_headers()).json()
    assert [f["id"] for f in raw["data"]] == [made[1], made[0]] and raw["has_more"] is False
    assert raw["first_id"] == made[1] and raw["last_id"] == made[0]


def test_multipart_upload_in_parts_over_5_mib(aws: Any, gw: Gateway) -> None:
    line = json.dumps({"custom_id": "x" * 1000}).encode() + b"\n"
    body = line * (2 * PART_SIZE // len(line) + 2)  # two full parts and a small last one
    client = sdk(gw, aws_headers())
    uploaded = client.files.create(file=("big.jsonl", io.BytesIO(body)), purpose="batch")
    head = aws.head_object(Bucket=BUCKET, Key=s3_key(uploaded.id), PartNumber=1)
    assert PART_SIZE >= 5 * 1024 * 1024  # S3's minimum for every part but the last
    assert head["PartsCount"] == 3 and head["ContentLength"] == PART_SIZE
    assert uploaded.bytes == len(body)
    assert aws.get_object(Bucket=BUCKET, Key=s3_key(uploaded.id))["Body"].read() == body
    assert client.files.content(uploaded.id).read() == body


def test_failed_upload_aborts_the_multipart_upload(aws: Any, gw: Gateway) -> None:
    good = CHAT * (9 * 1024 * 1024 // len(CHAT) + 1)  # more than one part is sent before the bad line
    bad = good + b'{"not": "an example"}\n'
    client = sdk(gw, aws_headers(**{"x-portkey-validate-uploads": "false"}))
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="fine-tune")
    lineno = good.count(b"\n") + 1
    assert err.value.status_code == 400 and f"line {lineno}" in err.value.message
    assert err.value.body["param"] == "file" and err.value.body["code"] == "invalid_training_file"
    assert aws.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert aws.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


# ---- the stand-in (Bedrock as the real service behaves) --------------------------------------------

@pytest.fixture
def standin(aws: Any) -> Iterator[tuple[BedrockStandIn, str]]:
    fake = BedrockStandIn()
    with ServerThread(fake.app()) as server:
        yield fake, server.url


def headers_for(url: str, **extra: str) -> dict[str, str]:
    return aws_headers(**{"x-portkey-custom-host": url, **extra})


def upload(client: openai.OpenAI) -> str:
    return client.files.create(file=("train.jsonl", io.BytesIO(CHAT)), purpose="fine-tune").id


def test_lifecycle_against_the_real_shapes(standin: tuple[BedrockStandIn, str], gw: Gateway) -> None:
    fake, url = standin
    client = sdk(gw, headers_for(url))
    file_id = upload(client)
    job = client.fine_tuning.jobs.create(model=NOVA, training_file=file_id, validation_file=file_id,
                                         suffix="support", metadata={"team": "search"},
                                         method={"type": "supervised", "supervised": {"hyperparameters": {
                                             "n_epochs": 2, "learning_rate_multiplier": 0.5}}})
    assert job.status == "queued" and job.metadata == {"team": "search"} and job.validation_file == file_id
    assert job.created_at == 1740830400 and job.hyperparameters.learning_rate_multiplier == 0.5
    create = next(r for r in fake.requests if r.method == "POST")
    assert create.headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={standin_mod.ACCESS_KEY}/") and "/us-east-1/bedrock/aws4_request" in \
        create.headers["Authorization"]
    sent = create.json()
    assert sent["hyperParameters"] == {"epochCount": "2", "learningRate": "0.000005"}
    assert sent["baseModelIdentifier"] == NOVA and sent["customizationType"] == "FINE_TUNING"
    assert sent["jobTags"] == [{"key": "team", "value": "search"}]
    assert sent["validationDataConfig"] == {"validators": [{"s3Uri": ids.decode("file", file_id)}]}
    assert re.fullmatch(r"support-[0-9a-f]{8}", sent["customModelName"])
    arn = ids.decode("ftjob", job.id)
    assert arn == next(iter(fake.jobs)) and re.fullmatch(r"[-A-Za-z0-9_]+", job.id)

    statuses = [client.fine_tuning.jobs.retrieve(job.id).status for _ in range(2)]
    assert statuses == ["running", "succeeded"]
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.fine_tuned_model == fake.jobs[arn]["outputModelArn"] and done.finished_at == 1740830401
    assert done.error is None and done.model_extra["provider_status"] == "Completed"
    assert done.model_extra["training_loss"] == 0.25
    gets = [r for r in fake.requests if r.method == "GET" and r.path.startswith("/model-customization-jobs/")]
    assert gets[0].path == "/model-customization-jobs/" + arn.replace(":", "%3A").replace("/", "%2F")


def test_failed_and_cancelled_jobs(standin: tuple[BedrockStandIn, str], gw: Gateway) -> None:
    fake, url = standin
    client = sdk(gw, headers_for(url))
    file_id = upload(client)
    failing = client.fine_tuning.jobs.create(model=NOVA, training_file=file_id, suffix="failing")
    for _ in range(2):
        failed = client.fine_tuning.jobs.retrieve(failing.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "job_failed" and failed.error.message == \
        "The training data has an invalid format on line 3." and failed.fine_tuned_model is None

    job = client.fine_tuning.jobs.create(model=NOVA, training_file=file_id)
    stopping = client.fine_tuning.jobs.cancel(job.id)
    assert stopping.status == "running" and stopping.model_extra["provider_status"] == "Stopping"
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    stop = [r for r in fake.requests if r.path.endswith("/stop")]
    assert len(stop) == 1 and unquote(stop[0].path) == f"/model-customization-jobs/{ids.decode('ftjob', job.id)}/stop"
    with pytest.raises(openai.BadRequestError) as err:  # a stopped job cannot be stopped again
        client.fine_tuning.jobs.cancel(job.id)
    assert err.value.body["code"] == "ValidationException"


def test_pagination_with_after_and_auto_paging(standin: tuple[BedrockStandIn, str], gw: Gateway) -> None:
    fake, url = standin
    client = sdk(gw, headers_for(url))
    file_id = upload(client)
    made = [client.fine_tuning.jobs.create(model=NOVA, training_file=file_id).id for _ in range(5)]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2)] == made[::-1]
    page = client.fine_tuning.jobs.list(limit=2, after=made[3])  # served above: Bedrock's nextToken
    assert [j.id for j in page.data] == [made[2], made[1]] and page.has_more is True
    # Items come from the summaries alone: what only a GET has is null there, and a retrieve has it.
    assert all(j.training_file is None and j.hyperparameters is None for j in page.data)
    assert client.fine_tuning.jobs.retrieve(made[2]).training_file == file_id
    last = client.fine_tuning.jobs.list(limit=2, after=made[1])
    assert [j.id for j in last.data] == [made[0]] and last.has_more is False
    lists = [r for r in fake.requests if r.method == "GET" and r.path == "/model-customization-jobs"]
    assert all(r.query["sortBy"] == "CreationTime" and r.query["sortOrder"] == "Descending" for r in lists)
    assert not any("creationTimeBefore" in r.query for r in lists)
    odd = client.fine_tuning.jobs.list(limit=2, after=made[2])  # never a page's last: found by its time
    assert [j.id for j in odd.data] == [made[1], made[0]] and odd.has_more is False
    assert "creationTimeBefore" in fake.requests[-1].query


def test_idempotency_key_becomes_the_client_request_token(standin: tuple[BedrockStandIn, str], gw: Gateway) -> None:
    fake, url = standin
    client = sdk(gw, headers_for(url))
    file_id = upload(client)
    first = client.fine_tuning.jobs.create(model=NOVA, training_file=file_id,
                                           extra_headers={"Idempotency-Key": "order-42"})
    again = client.fine_tuning.jobs.create(model=NOVA, training_file=file_id,
                                           extra_headers={"Idempotency-Key": "order-42"})
    assert again.id == first.id
    creates = [r.json() for r in fake.requests if r.method == "POST" and r.path == "/model-customization-jobs"]
    token = hashlib.sha256(b"::order-42").hexdigest()
    assert [c["clientRequestToken"] for c in creates] == [token]  # the replay never reached Bedrock
    assert creates[0]["jobName"] == f"tunegate-{token[:20]}"


def test_bedrock_api_key_as_bearer(standin: tuple[BedrockStandIn, str], gw: Gateway) -> None:
    fake, url = standin
    client = sdk(gw, headers_for(url))
    job = client.fine_tuning.jobs.create(model=NOVA, training_file="s3://tunegate-train/data/train.jsonl")
    bearer = sdk(gw, {"x-portkey-provider": "bedrock", "x-portkey-custom-host": url}, api_key=standin_mod.BEARER)
    assert bearer.fine_tuning.jobs.retrieve(job.id).training_file == ids.encode(
        "file", "s3://tunegate-train/data/train.jsonl")
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {standin_mod.BEARER}"
    with pytest.raises(openai.BadRequestError) as err:  # S3 needs keys
        bearer.files.list(extra_headers={"x-portkey-aws-s3-bucket": BUCKET})
    assert err.value.body["param"] == "x-portkey-aws-access-key-id"


@pytest.mark.parametrize(("status", "error_type", "exc"), [
    (401, "UnrecognizedClientException", openai.AuthenticationError),
    (403, "AccessDeniedException", openai.PermissionDeniedError),
    (404, "ResourceNotFoundException", openai.NotFoundError),
    (429, "ThrottlingException", openai.RateLimitError),
    (500, "InternalServerException", openai.InternalServerError),
    (503, "ServiceUnavailableException", openai.InternalServerError),
])
def test_provider_errors_arrive_openai_shaped(standin: tuple[BedrockStandIn, str], gw: Gateway, status: int,
                                             error_type: str, exc: type[openai.APIStatusError]) -> None:
    fake, url = standin
    client = sdk(gw, headers_for(url, **{"x-portkey-config": NO_RETRY}))
    fake.fail_next(status, error_type)
    job_id = ids.encode("ftjob", f"arn:aws:bedrock:us-east-1:123456789012:model-customization-job/{NOVA}/abcdefghijkl")
    with pytest.raises(exc) as err:
        client.fine_tuning.jobs.retrieve(job_id)
    assert err.value.status_code == status
    assert err.value.body == {"message": f"Scripted {error_type}.", "type": "upstream_error", "param": None,
                              "code": error_type}


def test_tunegate_retries_throttled_reads(standin: tuple[BedrockStandIn, str], gw: Gateway) -> None:
    fake, url = standin
    client = sdk(gw, headers_for(url))
    job = client.fine_tuning.jobs.create(model=NOVA, training_file="s3://tunegate-train/t.jsonl")
    fake.fail_next(429, "ThrottlingException", times=2)
    assert client.fine_tuning.jobs.retrieve(job.id).id == job.id


def test_bad_signature_and_unknown_job(standin: tuple[BedrockStandIn, str], gw: Gateway) -> None:
    fake, url = standin
    wrong = sdk(gw, headers_for(url, **{"x-portkey-aws-secret-access-key": "not-the-secret"}))
    job_id = ids.encode("ftjob", f"arn:aws:bedrock:us-east-1:123456789012:model-customization-job/{NOVA}/abcdefghijkl")
    with pytest.raises(openai.PermissionDeniedError) as err:
        wrong.fine_tuning.jobs.retrieve(job_id)
    assert err.value.body["code"] == "InvalidSignatureException"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk(gw, headers_for(url)).fine_tuning.jobs.retrieve(job_id)
    assert missing.value.body["code"] == "ResourceNotFoundException"
    with pytest.raises(openai.NotFoundError):
        sdk(gw, headers_for(url)).fine_tuning.jobs.retrieve("ftjob-abc")  # not one of ours


@pytest.mark.parametrize(("change", "param"), [
    ({"method": {"type": "dpo", "dpo": {}}}, "method.type"),
    ({"seed": 3}, "seed"),
    ({"hyperparameters": {"batch_size": 8}}, "hyperparameters.batch_size"),  # Nova has no batch size
    ({"hyperparameters": {"n_epochs": 9}}, "hyperparameters.n_epochs"),  # Nova: 1–5
    ({"hyperparameters": {"learning_rate_multiplier": 50}}, "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup"),
    ({"suffix": "two--dashes"}, "suffix"),
    ({"metadata": {"k": "a;b"}}, "metadata"),
    ({"training_file": "file-abc"}, "training_file"),
])
def test_unmappable_requests_are_clear_400s(standin: tuple[BedrockStandIn, str], gw: Gateway,
                                            change: dict[str, Any], param: str) -> None:
    fake, url = standin
    body = {"model": NOVA, "training_file": "s3://tunegate-train/t.jsonl", **change}
    answer = requests.post(gw.url + "/v1/fine_tuning/jobs", json=body, headers=headers_for(url))
    assert answer.status_code in (400, 404) and answer.json()["error"]["param"] == param, answer.text
    assert not [r for r in fake.requests if r.method == "POST"]


def test_role_events_checkpoints_and_format_mismatch(standin: tuple[BedrockStandIn, str], gw: Gateway) -> None:
    fake, url = standin
    no_role = {k: v for k, v in headers_for(url).items() if k != "x-portkey-aws-bedrock-role-arn"}
    with pytest.raises(openai.BadRequestError) as err:
        sdk(gw, no_role).fine_tuning.jobs.create(model=NOVA, training_file="s3://tunegate-train/t.jsonl")
    assert err.value.body["param"] == "x-portkey-aws-bedrock-role-arn"
    client = sdk(gw, headers_for(url))
    job = client.fine_tuning.jobs.create(model=NOVA, training_file="s3://tunegate-train/t.jsonl")
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.fine_tuning.jobs.checkpoints.list(job.id)
    assert unsupported.value.body["code"] == "unsupported_operation"
    # Converted for Claude 3 Haiku, then used for Llama: refused before Bedrock sees it.
    claude = sdk(gw, headers_for(url, **{"x-portkey-bedrock-model": "anthropic.claude-3-haiku-20240307-v1:0:200k"}))
    claude_file = upload(claude)
    with pytest.raises(openai.BadRequestError) as mismatch:
        client.fine_tuning.jobs.create(model="meta.llama3-1-8b-instruct-v1:0:128k", training_file=claude_file)
    assert mismatch.value.body["param"] == "training_file" and "bedrock-claude" in mismatch.value.message
    ok = client.fine_tuning.jobs.create(model="anthropic.claude-3-haiku-20240307-v1:0:200k", training_file=claude_file,
                                        hyperparameters={"batch_size": 8, "learning_rate_multiplier": 1.5})
    sent = [r.json() for r in fake.requests if r.method == "POST" and r.path == "/model-customization-jobs"][-1]
    assert sent["hyperParameters"] == {"batchSize": "8", "learningRateMultiplier": "1.5"}
    assert ok.hyperparameters.batch_size == 8 and ok.hyperparameters.learning_rate_multiplier == 1.5


# ---- contract: what tunegate sends, and what the stand-in answers, against the botocore model -------

def _spec() -> dict[str, Any]:
    if not SPEC.exists():
        pytest.skip("../shared/specs is not beside the checkout")
    return json.loads(SPEC.read_text())  # type: ignore[no-any-return]


def check_shape(spec: dict[str, Any], shape_name: str, value: Any, where: str, problems: list[str]) -> None:
    shape = spec["shapes"][shape_name]
    kind = shape["type"]
    if kind == "structure":
        if not isinstance(value, dict):
            problems.append(f"{where}: not an object")
            return
        for name in shape.get("required", []):
            if name not in value:
                problems.append(f"{where}.{name}: required")
        for name, item in value.items():
            member = shape["members"].get(name)
            if member is None:
                problems.append(f"{where}.{name}: not in {shape_name}")
            else:
                check_shape(spec, member["shape"], item, f"{where}.{name}", problems)
        if shape.get("union") and len(value) != 1:
            problems.append(f"{where}: a union takes exactly one member")
        return
    if kind == "list":
        if not isinstance(value, list):
            problems.append(f"{where}: not a list")
            return
        size = len(value)
        for i, item in enumerate(value):
            check_shape(spec, shape["member"]["shape"], item, f"{where}[{i}]", problems)
    elif kind == "map":
        if not isinstance(value, dict):
            problems.append(f"{where}: not a map")
            return
        size = len(value)
        for k, v in value.items():
            check_shape(spec, shape["key"]["shape"], k, f"{where} key", problems)
            check_shape(spec, shape["value"]["shape"], v, f"{where}[{k}]", problems)
    elif kind == "string":
        if not isinstance(value, str):
            problems.append(f"{where}: not a string")
            return
        size = len(value)
        if "enum" in shape and value not in shape["enum"]:
            problems.append(f"{where}: {value!r} not in {shape['enum']}")
        if "pattern" in shape and not re.fullmatch(shape["pattern"], value):
            problems.append(f"{where}: {value!r} does not match {shape['pattern']}")
    elif kind in ("integer", "long", "float", "double"):
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, int | float):
            problems.append(f"{where}: not a number")
            return
        if "min" in shape and number < shape["min"] or "max" in shape and number > shape["max"]:
            problems.append(f"{where}: {number} outside {shape.get('min')}..{shape.get('max')}")
        return
    elif kind == "timestamp":
        if not (isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)",
                                                          value)):
            problems.append(f"{where}: {value!r} is not ISO 8601")
        return
    elif kind == "boolean":
        if not isinstance(value, bool):
            problems.append(f"{where}: not a boolean")
        return
    else:
        return
    if "min" in shape and size < shape["min"] or "max" in shape and size > shape["max"]:
        problems.append(f"{where}: size {size} outside {shape.get('min')}..{shape.get('max')}")


def operation_for(spec: dict[str, Any], method: str, path: str) -> tuple[str, dict[str, str]]:
    for name, op in spec["operations"].items():
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", op["http"]["requestUri"].split("?")[0])
        match = re.fullmatch(pattern, path)
        if op["http"]["method"] == method and match:
            return name, {k: unquote(v) for k, v in match.groupdict().items()}
    raise AssertionError(f"no operation for {method} {path}")


def validate_request(spec: dict[str, Any], req: standin_mod.Recorded) -> list[str]:
    name, labels = operation_for(spec, req.method, req.path)
    shape_name = spec["operations"][name]["input"]["shape"]
    shape = spec["shapes"][shape_name]
    params: dict[str, Any] = dict(req.json() or {})
    for member, info in shape["members"].items():
        location = info.get("location")
        if location == "uri":
            params[member] = labels[info["locationName"]]
        elif location == "querystring" and info["locationName"] in req.query:
            params[member] = req.query[info["locationName"]]
            if spec["shapes"][info["shape"]]["type"] == "integer":
                params[member] = int(params[member])
            elif spec["shapes"][info["shape"]]["type"] == "timestamp":
                pass
    unknown = set(req.query) - {i.get("locationName") for i in shape["members"].values()}
    problems = [f"{name}: unknown query parameter {q}" for q in unknown]
    check_shape(spec, shape_name, params, name, problems)
    return problems


def test_every_request_sent_matches_the_botocore_model(standin: tuple[BedrockStandIn, str], gw: Gateway) -> None:
    spec = _spec()
    fake, url = standin
    client = sdk(gw, headers_for(url))
    file_id = upload(client)
    for n, (model, hp) in enumerate([
        (NOVA, {"n_epochs": 5, "learning_rate_multiplier": 10}),
        ("anthropic.claude-3-haiku-20240307-v1:0:200k", {"n_epochs": 10, "batch_size": 256,
                                                          "learning_rate_multiplier": 0.1}),
        ("meta.llama3-1-8b-instruct-v1:0:128k", {"batch_size": 1, "learning_rate_multiplier": 0.05}),
        ("amazon.titan-text-express-v1:0:8k", {"batch_size": 64}),
    ]):
        created = client.fine_tuning.jobs.create(model=model, training_file=f"s3://{BUCKET}/d/{n}.jsonl",
                                                 validation_file=f"s3://{BUCKET}/d/v{n}.jsonl",
                                                 hyperparameters=hp, suffix=f"Model_{n}-x", metadata={"run": str(n)},
                                                 extra_headers={"Idempotency-Key": f"key {n}/x!"})
        client.fine_tuning.jobs.retrieve(created.id)
    fresh = client.fine_tuning.jobs.create(model=NOVA, training_file=file_id)
    client.fine_tuning.jobs.cancel(fresh.id)
    list(client.fine_tuning.jobs.list(limit=2))
    client.fine_tuning.jobs.list(limit=1, after=created.id)
    assert len(fake.requests) > 15
    problems = [p for req in fake.requests for p in validate_request(spec, req)]
    assert problems == []
    # The checker itself catches what botocore's validator would not (patterns, bounds).
    bad = standin_mod.Recorded("POST", "/model-customization-jobs", {}, {}, json.dumps({
        "jobName": "-bad", "customModelName": "a--b", "roleArn": "arn:aws:iam::1:user/x", "baseModelIdentifier": NOVA,
        "trainingDataConfig": {"s3Uri": "s3://B/x"}, "outputDataConfig": {"s3Uri": "s3://ok-bucket/o/"},
        "customizationType": "DPO", "clientRequestToken": "-"}).encode())
    assert len(validate_request(spec, bad)) == 6


def test_standin_answers_match_the_botocore_model(standin: tuple[BedrockStandIn, str], gw: Gateway) -> None:
    spec = _spec()
    fake, url = standin
    client = sdk(gw, headers_for(url))
    jobs = [client.fine_tuning.jobs.create(model=NOVA, training_file=f"s3://{BUCKET}/t.jsonl",
                                           suffix="failing" if n else None) for n in range(2)]
    client.fine_tuning.jobs.cancel(jobs[0].id)
    answers: list[tuple[str, Any]] = []
    for job in jobs:
        arn = ids.decode("ftjob", job.id)
        for _ in range(4):
            answers.append(("GetModelCustomizationJobResponse", fake.view(fake.jobs[arn])))
            fake.advance(fake.jobs[arn])
    listing = json.loads(fake.list({"maxResults": "1"}).text)
    answers.append(("ListModelCustomizationJobsResponse", listing))
    answers.append(("CreateModelCustomizationJobResponse", {"jobArn": ids.decode("ftjob", jobs[0].id)}))
    problems: list[str] = []
    for shape, value in answers:
        check_shape(spec, shape, value, shape, problems)
    assert problems == []
    assert listing["nextToken"] and len(listing["modelCustomizationJobSummaries"]) == 1
    statuses = {fake.jobs[ids.decode("ftjob", j.id)]["status"] for j in jobs}
    assert statuses == {"Stopped", "Failed"}


def test_events_are_derived_from_the_job(standin: tuple[BedrockStandIn, str], gw: Gateway) -> None:
    fake, url = standin
    client = sdk(gw, headers_for(url))
    job = client.fine_tuning.jobs.create(model=NOVA, training_file="s3://tunegate-train/t.jsonl", suffix="ev")
    first = client.fine_tuning.jobs.list_events(job.id)  # validating: created, the three phases started
    assert re.fullmatch(r"Created fine-tuning job tunegate-\w+ for custom model ev-[0-9a-f]{8}", first.data[-1].message)
    assert "Validating the training data: started" in [e.message for e in first.data]
    while client.fine_tuning.jobs.retrieve(job.id).status != "succeeded":
        pass
    events = client.fine_tuning.jobs.list_events(job.id)
    arn = ids.decode("ftjob", job.id)
    assert [e.message for e in events.data] == [
        f"The job has successfully completed: {fake.jobs[arn]['outputModelArn']}", "Final training loss 0.25",
        "Training: completed", "Processing the training data: completed", "Validating the training data: completed",
        "Training: started", "Processing the training data: started", "Validating the training data: started",
        events.data[-1].message]
    assert events.data[1].type == "metrics" and events.data[1].data == {"train_loss": 0.25}
    assert all(e.object == "fine_tuning.job.event" and e.level == "info" for e in events.data)
    assert [e.created_at for e in events.data] == sorted((e.created_at for e in events.data), reverse=True)
    # Stable ids, so OpenAI's cursor pages through them.
    page = client.fine_tuning.jobs.list_events(job.id, limit=3)
    rest = client.fine_tuning.jobs.list_events(job.id, limit=20, after=page.data[-1].id)
    assert page.has_more and [e.id for e in page.data + rest.data] == [e.id for e in events.data]
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.list_events(job.id, after="ftevent-nope")
    assert bad.value.body["param"] == "after"  # type: ignore[index]

    failing = client.fine_tuning.jobs.create(model=NOVA, training_file="s3://tunegate-train/t.jsonl", suffix="fail")
    while client.fine_tuning.jobs.retrieve(failing.id).status != "failed":
        pass
    latest = client.fine_tuning.jobs.list_events(failing.id).data[0]
    assert latest.level == "error" and "invalid format on line 3" in latest.message


# ---- assumed roles (STS AssumeRole) ----------------------------------------------------------------

ASSUMED = "arn:aws:iam::123456789012:role/tunegate-caller"


@pytest.fixture
def sts(standin: tuple[BedrockStandIn, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[StsStandIn]:
    fake, _ = standin
    service = StsStandIn(keys=fake.keys)  # what STS issues, the Bedrock stand-in accepts
    with ServerThread(service.app()) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", server.url)
        yield service


def test_assumed_role_signs_with_temporary_credentials(standin: tuple[BedrockStandIn, str], sts: StsStandIn,
                                                       gw: Gateway) -> None:
    fake, url = standin
    sts.allow(ASSUMED, "ext-42")
    client = sdk(gw, headers_for(url, **{"x-portkey-aws-role-arn": ASSUMED, "x-portkey-aws-external-id": "ext-42"}))
    assert client.fine_tuning.jobs.list().data == []
    job = client.fine_tuning.jobs.create(model=NOVA, training_file=f"s3://{BUCKET}/data/train.jsonl", suffix="role")
    assert client.fine_tuning.jobs.retrieve(job.id).id == job.id
    # One AssumeRole, signed with the long-term keys, for every Bedrock call that followed.
    assert len(sts.calls) == 1
    call = sts.calls[0]
    assert call["RoleArn"] == ASSUMED and call["ExternalId"] == "ext-42" and call["DurationSeconds"] == "3600"
    (temporary,) = sts.issued
    assert len(fake.requests) == 4  # list, create and the GET of the full job, retrieve
    for request in fake.requests:  # each signed with the temporary key and carrying its session token
        assert request.headers["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={temporary}/")
        assert request.headers["X-Amz-Security-Token"] == fake.keys[temporary][1]


def test_assume_role_errors(standin: tuple[BedrockStandIn, str], sts: StsStandIn, gw: Gateway) -> None:
    fake, url = standin
    sts.allow(ASSUMED, "ext-42")
    wrong = sdk(gw, headers_for(url, **{"x-portkey-aws-role-arn": ASSUMED, "x-portkey-aws-external-id": "ext-43"}))
    with pytest.raises(openai.PermissionDeniedError) as denied:
        wrong.fine_tuning.jobs.list()
    body: dict[str, Any] = denied.value.body  # type: ignore[assignment]
    assert body["code"] == "assume_role_denied" and "AccessDenied" in body["message"] and ASSUMED in body["message"]
    assert standin_mod.SECRET not in json.dumps(body)
    bad_arn = sdk(gw, headers_for(url, **{"x-portkey-aws-role-arn": "role/tunegate-caller"}))
    with pytest.raises(openai.BadRequestError) as invalid:
        bad_arn.fine_tuning.jobs.list()
    assert invalid.value.body["param"] == "x-portkey-aws-role-arn"  # type: ignore[index]
    bearer_only = {k: v for k, v in headers_for(url, **{"x-portkey-aws-role-arn": ASSUMED}).items()
                   if "access-key" not in k}
    with pytest.raises(openai.BadRequestError) as no_keys:  # STS needs SigV4: a Bedrock API key cannot assume
        sdk(gw, bearer_only, api_key=standin_mod.BEARER).fine_tuning.jobs.list()
    assert no_keys.value.body["param"] == "x-portkey-aws-access-key-id"  # type: ignore[index]
    assert len(sts.calls) == 1 and fake.requests == []  # only the denied AssumeRole went out


def test_assumed_role_against_moto_sts_and_s3(aws: Any, gw: Gateway) -> None:
    # moto's STS answers AssumeRole with its own XML: the S3 upload then runs on those credentials.
    from tunegate.providers import REGISTRY

    roles = REGISTRY["bedrock"].roles  # type: ignore[attr-defined]
    before = roles.assumed
    client = sdk(gw, aws_headers(**{"x-portkey-aws-role-arn": ASSUMED}))
    uploaded = client.files.create(file=("train.jsonl", io.BytesIO(CHAT)), purpose="fine-tune")
    assert aws.head_object(Bucket=BUCKET, Key=s3_key(uploaded.id))["ContentLength"] == uploaded.bytes
    assert [f.id for f in client.files.list().data] == [uploaded.id]
    assert roles.assumed == before + 1  # moto's credentials parsed, cached, and used for every call
