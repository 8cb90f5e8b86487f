"""A real Ray head (``TUNEGATE_TEST_RAY_ADDRESS``, started on loopback by ``.ci/run``), moto's S3 as the shared
object store, and the tiny model of tests/trainer: ``local`` jobs trained on Ray through the gateway."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.trainer.conftest import tiny_model  # noqa: F401  (the session's tiny model, a fixture)

BUCKET = "tunegate-cluster"
PREFIX = "shared/files"
ACCESS, SECRET = "AKIAMOTOCLUSTER", "moto-cluster-secret"


TOKEN = os.environ.get("TUNEGATE_TEST_RAY_TOKEN")  # .ci/run's head runs with RAY_AUTH_MODE=token
AUTH = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}


@pytest.fixture(scope="session")
def ray_address() -> str:
    address = os.environ.get("TUNEGATE_TEST_RAY_ADDRESS")
    if not address:
        pytest.skip("no Ray head: set TUNEGATE_TEST_RAY_ADDRESS (.ci/run starts one on loopback)")
    requests.get(address.rstrip("/") + "/api/jobs/", headers=AUTH, timeout=10).raise_for_status()
    return address.rstrip("/")


@pytest.fixture
def bucket(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    client = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id=ACCESS,
                          aws_secret_access_key=SECRET)
    if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)
    return client


def ray_settings(address: str, model_root: Path, **ray: Any) -> dict[str, Any]:
    """Gateway settings: jobs go to the Ray head, files live in moto's bucket."""
    return dict(file_store="s3", file_store_s3_bucket=BUCKET, file_store_s3_prefix=PREFIX,
                file_store_s3_region="us-east-1", local_model_roots=[model_root], local_concurrency=2,
                local_training={"engine": "ray", "threads": 1, "ray": {
                    "address": address, "python": sys.executable, "poll_interval": 0.3, "num_cpus": 0.5,
                    "forward_aws_credentials": True, **({"token": TOKEN} if TOKEN else {}), **ray}})


@pytest.fixture
def ray_jobs(ray_address: str) -> Iterator[list[str]]:
    """Submission ids a test made; any still running at the end is stopped (the head is shared)."""
    made: list[str] = []
    yield made
    for submission_id in made:
        requests.post(f"{ray_address}/api/jobs/{submission_id}/stop", headers=AUTH, timeout=10)
