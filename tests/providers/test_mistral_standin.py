"""The Mistral stand-in answers in the shapes of Mistral's published OpenAPI spec
(../shared/specs/mistral-openapi.yaml), so the adapter's tests cannot pass against a drifted fake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.standins.mistral import SPEC, MistralStandIn, load_spec, schema_validator
from tests.standins.openai_like import ServerThread

LINE = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if not SPEC.exists():
        pytest.skip("../shared/specs is not beside the checkout")
    return load_spec()


@pytest.fixture
def standin() -> Iterator[tuple[MistralStandIn, requests.Session, str]]:
    s = MistralStandIn()
    with ServerThread(s.app()) as server, requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {s.api_key}"
        yield s, http, server.url + "/v1"


def valid(spec: dict[str, Any], schema: str, response: requests.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    errors = list(schema_validator(schema, spec).iter_errors(body))
    assert not errors, f"{schema}: {[e.message for e in errors[:3]]}"
    return body


def test_files_match_the_spec(spec: dict[str, Any], standin: tuple[MistralStandIn, requests.Session, str]) -> None:
    _s, http, url = standin
    up = valid(spec, "UploadFileOut", http.post(url + "/files", data={"purpose": "fine-tune"},
                                                files={"file": ("t.jsonl", (LINE + "\n").encode())}))
    assert up["purpose"] == "fine-tune" and up["num_lines"] == 1
    valid(spec, "ListFilesOut", http.get(url + "/files", params={"page": 0, "page_size": 10}))
    valid(spec, "RetrieveFileOut", http.get(f"{url}/files/{up['id']}"))
    assert http.get(f"{url}/files/{up['id']}/content").content == (LINE + "\n").encode()
    valid(spec, "DeleteFileOut", http.delete(f"{url}/files/{up['id']}"))
    valid(spec, "HTTPValidationError", http.post(url + "/files", data={"purpose": "vision"},
                                                 files={"file": ("t.jsonl", b"{}\n")}), status=422)


def test_jobs_match_the_spec_through_their_lifecycle(spec: dict[str, Any],
                                                     standin: tuple[MistralStandIn, requests.Session, str]) -> None:
    s, http, url = standin
    file_id = http.post(url + "/files", data={"purpose": "fine-tune"},
                        files={"file": ("t.jsonl", (LINE + "\n").encode())}).json()["id"]
    job_in: dict[str, Any] = {"model": "open-mistral-7b", "training_files": [{"file_id": file_id, "weight": 1}],
              "hyperparameters": {"epochs": 2, "learning_rate": 0.0002}, "auto_start": True, "suffix": "demo",
              "integrations": [{"type": "wandb", "project": "p", "api_key": "k" * 40}]}
    assert not list(schema_validator("JobIn", spec).iter_errors(job_in))
    job = valid(spec, "CompletionJobOut", http.post(url + "/fine_tuning/jobs", json=job_in))
    statuses = [valid(spec, "CompletionDetailedJobOut", http.get(f"{url}/fine_tuning/jobs/{job['id']}"))["status"]
                for _ in range(4)]
    assert statuses == ["VALIDATING", "VALIDATED", "RUNNING", "SUCCESS"]
    done = http.get(f"{url}/fine_tuning/jobs/{job['id']}").json()
    assert [e["data"]["status"] for e in done["events"]] == ["SUCCESS", "RUNNING", "VALIDATED", "VALIDATING",
                                                              "QUEUED"]
    assert [c["step_number"] for c in done["checkpoints"]] == [20, 10]
    valid(spec, "JobsOut", http.get(url + "/fine_tuning/jobs", params={"page": 0, "page_size": 5}))

    other = http.post(url + "/fine_tuning/jobs", json={**job_in, "model": "fail-7b"}).json()
    for _ in range(3):
        failed = valid(spec, "CompletionDetailedJobOut", http.get(f"{url}/fine_tuning/jobs/{other['id']}"))
    assert failed["status"] == "FAILED_VALIDATION"
    third = http.post(url + "/fine_tuning/jobs", json=job_in).json()
    valid(spec, "CompletionDetailedJobOut", http.post(f"{url}/fine_tuning/jobs/{third['id']}/cancel"))
    waiting = s.add_job("open-mistral-7b", file_id, auto_start=False)
    for _ in range(2):
        http.get(f"{url}/fine_tuning/jobs/{waiting['id']}")
    started = valid(spec, "CompletionDetailedJobOut", http.post(f"{url}/fine_tuning/jobs/{waiting['id']}/start"))
    assert started["status"] == "STARTED"


def test_job_requests_are_checked_against_job_in(spec: dict[str, Any],
                                                 standin: tuple[MistralStandIn, requests.Session, str]) -> None:
    _s, http, url = standin
    bad: dict[str, Any] = {"model": "open-mistral-7b", "training_files": [], "hyperparameters": {}, "suffix": "x" * 19}
    body = valid(spec, "HTTPValidationError", http.post(url + "/fine_tuning/jobs", json=bad), status=422)
    assert body["detail"][0]["loc"] == ["body", "suffix"]
    assert http.get(url + "/fine_tuning/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
