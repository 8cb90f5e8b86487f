"""Bedrock fidelity (issue 13): uploads with server-side encryption, S3 errors named as S3's, echoed
hyperparameters read defensively. Same upstreams as test_bedrock.py: moto for S3, the stand-in for Bedrock."""

from __future__ import annotations

import io
from typing import Any

import openai
import pytest
import requests

from tests.gateway import Gateway
from tests.providers import test_bedrock as base
from tests.providers.test_bedrock import BUCKET, CHAT, NOVA, aws_headers, headers_for, s3_key, sdk, upload
from tests.standins.bedrock import BedrockStandIn
from tunegate.providers import ids

# The fixtures of test_bedrock.py (moto with its bucket, the gateway, the Bedrock stand-in).
aws, gw, standin = base.aws, base.gw, base.standin
KMS_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def test_uploads_take_sse_kms_and_sse_s3(aws: Any, gw: Gateway) -> None:
    kms = sdk(gw, aws_headers(**{"x-portkey-amz-server-side-encryption-aws-kms-key-id": KMS_ARN}))
    obj = kms.files.create(file=("train.jsonl", io.BytesIO(CHAT)), purpose="fine-tune")
    head = aws.head_object(Bucket=BUCKET, Key=s3_key(obj.id))
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == KMS_ARN
    s3_managed = sdk(gw, aws_headers(**{"x-portkey-amz-server-side-encryption": "AES256"}))
    obj = s3_managed.files.create(file=("train.jsonl", io.BytesIO(CHAT)), purpose="fine-tune")
    assert aws.head_object(Bucket=BUCKET, Key=s3_key(obj.id))["ServerSideEncryption"] == "AES256"
    plain = sdk(gw, aws_headers()).files.create(file=("train.jsonl", io.BytesIO(CHAT)), purpose="fine-tune")
    assert "SSEKMSKeyId" not in aws.head_object(Bucket=BUCKET, Key=s3_key(plain.id))


@pytest.mark.parametrize(("extra", "param"), [
    ({"x-portkey-amz-server-side-encryption": "aws:fsx"}, "x-portkey-amz-server-side-encryption"),
    ({"x-portkey-amz-server-side-encryption": "AES256",
      "x-portkey-amz-server-side-encryption-aws-kms-key-id": KMS_ARN},
     "x-portkey-amz-server-side-encryption-aws-kms-key-id"),
    ({"x-portkey-amz-server-side-encryption-aws-kms-key-id": "key id with spaces"},
     "x-portkey-amz-server-side-encryption-aws-kms-key-id"),
])
def test_bad_encryption_options_are_400s_before_any_upload(aws: Any, gw: Gateway, extra: dict[str, str],
                                                            param: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        sdk(gw, aws_headers(**extra)).files.create(file=("t.jsonl", io.BytesIO(CHAT)), purpose="fine-tune")
    assert exc.value.body["param"] == param  # type: ignore[index]
    assert aws.list_multipart_uploads(Bucket=BUCKET).get("Uploads") is None
    assert aws.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_s3_errors_are_named_as_s3s(aws: Any, gw: Gateway) -> None:
    client = sdk(gw, aws_headers(**{"x-portkey-aws-s3-bucket": "no-such-bucket-here"}))
    with pytest.raises(openai.NotFoundError) as exc:
        client.files.create(file=("t.jsonl", io.BytesIO(CHAT)), purpose="fine-tune")
    body: dict[str, Any] = exc.value.body  # type: ignore[assignment]
    assert body["code"] == "NoSuchBucket" and body["type"] == "upstream_error"
    assert body["message"].startswith("Amazon S3 answered HTTP 404 NoSuchBucket: "), body
    # A download from a bucket that is not there: S3's XML error, named the same way.
    missing = ids.encode("file", "s3://no-such-bucket-here/tunegate/files/x/fine-tune/t.jsonl")
    answer = requests.get(f"{gw.url}/v1/files/{missing}/content", headers=aws_headers(), timeout=10)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "NoSuchBucket"
    assert answer.json()["error"]["message"].startswith("Amazon S3 answered HTTP 404 NoSuchBucket")


@pytest.mark.parametrize(("echoed", "expected"), [
    ({"epochCount": "two", "batchSize": "", "learningRate": "NaN"}, {}),
    ({"epochCount": "3.0", "learningRate": "0.00002"}, {"n_epochs": 3, "learning_rate_multiplier": 2.0}),
    ({"epochCount": "2.5", "learningRateMultiplier": "auto", "learningRate": "1e-5"},
     {"learning_rate_multiplier": 1.0}),
    ({"epochCount": None, "batchSize": ["8"]}, {}),
    (None, {}),
    (["not", "a", "map"], {}),
])
def test_echoed_hyperparameters_never_fail_a_read(standin: tuple[BedrockStandIn, str], gw: Gateway,
                                                  echoed: Any, expected: dict[str, Any]) -> None:
    fake, url = standin
    client = sdk(gw, headers_for(url))
    job = client.fine_tuning.jobs.create(model=NOVA, training_file=upload(client))
    arn = ids.decode("ftjob", job.id)
    fake.jobs[arn]["hyperParameters"] = echoed  # as a job made elsewhere may carry them
    answer = requests.get(f"{gw.url}/v1/fine_tuning/jobs/{job.id}", headers=headers_for(url), timeout=10)
    assert answer.status_code == 200, answer.text
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert answer.json()["hyperparameters"] == {**auto, **expected}
    assert client.fine_tuning.jobs.list().data[0].id == job.id
