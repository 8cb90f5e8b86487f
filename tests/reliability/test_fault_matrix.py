"""Every upstream fault × every operation of the OpenAI provider, through the real gateway.

For each case: tunegate's status (502 unreachable / reset / truncated / invalid JSON, 504 timeouts, the
upstream's own status for 5xx and 429 with ``Retry-After`` passed on), the OpenAI error body, and the
number of upstream attempts — idempotent calls retried per the ``x-portkey-config`` retry policy,
creates and uploads sent exactly once. Attempts are counted twice: by the faulty upstream and by the
gateway's own request log line (``upstream_attempts``), which also covers the refused connection.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.gateway import Gateway
from tests.reliability.faulty import FAULTS, PAST_RETRY_AFTER, FaultyServer, FaultyUpstream, closed_url
from tests.test_errors import TRAINING, assert_error

TIMEOUT_MS = 250
RETRIES = 2  # x-portkey-config retry.attempts counts retries: 3 tries in all
RETRY_CONFIG = json.dumps({"retry": {"attempts": RETRIES, "on_status_codes": [429, 500, 502, 503, 504]}})


@dataclass(frozen=True)
class Op:
    name: str
    method: str
    path: str  # gateway path, without /v1; the upstream path is the same
    idempotent: bool
    body: str = "none"  # none | json | file | part

    def send(self, gw: Gateway, headers: dict[str, str]) -> requests.Response:
        url = gw.url + "/v1" + self.path
        if self.body == "json":
            return requests.request(self.method, url, headers=headers, json=JSON_BODIES.get(self.name, {}), timeout=30)
        if self.body == "file":
            return requests.post(url, headers=headers, data={"purpose": "fine-tune"},
                                 files={"file": ("train.jsonl", TRAINING)}, timeout=30)
        if self.body == "part":
            return requests.post(url, headers=headers, files={"data": ("part", b"x" * 1000)}, timeout=30)
        return requests.request(self.method, url, headers=headers, timeout=30)


JSON_BODIES: dict[str, Any] = {
    "create_job": {"model": "gpt-4o-mini", "training_file": "file-abc"},
    "create_upload": {"filename": "t.jsonl", "purpose": "fine-tune", "bytes": 1000, "mime_type": "text/jsonl"},
    "complete_upload": {"part_ids": ["part-1"]},
    "create_permission": {"project_ids": ["proj_1"]},
    "run_grader": {"grader": {"type": "string_check", "name": "g", "input": "a", "reference": "a",
                              "operation": "eq"}, "model_sample": "a"},
    "validate_grader": {"grader": {"type": "string_check", "name": "g", "input": "a", "reference": "a",
                                   "operation": "eq"}},
}

OPS = [
    Op("list_jobs", "GET", "/fine_tuning/jobs", True),
    Op("create_job", "POST", "/fine_tuning/jobs", False, "json"),
    Op("retrieve_job", "GET", "/fine_tuning/jobs/ftjob-1", True),
    Op("cancel_job", "POST", "/fine_tuning/jobs/ftjob-1/cancel", True),
    Op("pause_job", "POST", "/fine_tuning/jobs/ftjob-1/pause", True),
    Op("resume_job", "POST", "/fine_tuning/jobs/ftjob-1/resume", True),
    Op("list_events", "GET", "/fine_tuning/jobs/ftjob-1/events", True),
    Op("list_checkpoints", "GET", "/fine_tuning/jobs/ftjob-1/checkpoints", True),
    Op("upload_file", "POST", "/files", False, "file"),
    Op("list_files", "GET", "/files", True),
    Op("retrieve_file", "GET", "/files/file-1", True),
    Op("delete_file", "DELETE", "/files/file-1", True),
    Op("file_content", "GET", "/files/file-1/content", False),  # streamed: "a download is read once"
    Op("create_upload", "POST", "/uploads", False, "json"),
    Op("add_upload_part", "POST", "/uploads/upload-1/parts", False, "part"),
    Op("complete_upload", "POST", "/uploads/upload-1/complete", False, "json"),
    Op("cancel_upload", "POST", "/uploads/upload-1/cancel", True),
    Op("list_permissions", "GET", "/fine_tuning/checkpoints/ft:gpt-4o:ckpt/permissions", True),
    Op("create_permission", "POST", "/fine_tuning/checkpoints/ft:gpt-4o:ckpt/permissions", False, "json"),
    Op("delete_permission", "DELETE", "/fine_tuning/checkpoints/ft:gpt-4o:ckpt/permissions/cp_1", True),
    Op("run_grader", "POST", "/fine_tuning/alpha/graders/run", False, "json"),
    Op("validate_grader", "POST", "/fine_tuning/alpha/graders/validate", False, "json"),
]

TRANSPORT = {"refused", "drop", "reset", "truncated"}
TIMEOUTS = {"slow_first", "stall"}
STATUSES = {"500", "503", "429"}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultyUpstream, str, Gateway]]:
    upstream = FaultyUpstream()
    data = tmp_path_factory.mktemp("faults") / "data"
    with FaultyServer(upstream) as server, Gateway(data, retry={"backoff_base": 0.005, "backoff_max": 0.02}) as gw:
        yield upstream, server.url, gw


def gateway_headers(host: str, **extra: str) -> dict[str, str]:
    return {"x-portkey-provider": "openai", "x-portkey-custom-host": host,
            "Authorization": "Bearer sk-fault-matrix-secret-0001", **extra}


def logged_attempts(caplog: pytest.LogCaptureFixture, trace_id: str) -> int | None:
    for _ in range(50):
        for record in caplog.records:
            if record.name == "tunegate.request" and getattr(record, "request_id", None) == trace_id:
                return getattr(record, "upstream_attempts", None)
        time.sleep(0.01)
    return None


def expected_tries(op: Op, fault: str) -> int:
    if fault == "invalid_json" or not op.idempotent:
        return 1
    return RETRIES + 1


def _cases() -> list[Any]:
    cases = []
    for op in OPS:
        for fault in FAULTS:
            cases.append(pytest.param(op, fault, id=f"{op.name}-{fault}"))
    return cases


CASES = _cases()


@pytest.mark.parametrize("op,fault", CASES)
def test_fault_matrix(rig: tuple[FaultyUpstream, str, Gateway], caplog: pytest.LogCaptureFixture, op: Op,
                      fault: str) -> None:
    upstream, url, gw = rig
    caplog.set_level(logging.INFO, logger="tunegate.request")
    upstream.reset_state(fault, delay=1.5)
    host = closed_url() if fault == "refused" else url
    trace = f"m-{op.name}-{fault}-{time.monotonic_ns()}"
    headers = gateway_headers(host, **{"x-portkey-request-timeout": str(TIMEOUT_MS), "x-portkey-config": RETRY_CONFIG,
                                       "x-portkey-trace-id": trace})
    started = time.monotonic()
    if op.name == "file_content" and fault in ("reset", "truncated", "stall"):
        # The 200 and its headers are already on their way when the body breaks: the client must see
        # an incomplete body (never a clean, short 200).
        with pytest.raises(requests.exceptions.RequestException):
            resp = requests.get(gw.url + "/v1" + op.path, headers=headers, timeout=30)
            resp.raise_for_status()
            assert len(resp.content) >= 0
            raise AssertionError(f"clean {resp.status_code} with {len(resp.content)} bytes for a broken download")
        assert upstream.count(op.method, op.path) == 1
        assert requests.get(gw.url + "/healthz", timeout=5).ok
        return
    resp = op.send(gw, headers)
    elapsed = time.monotonic() - started

    tries = 1 if op.name == "file_content" else expected_tries(op, fault)
    if op.name == "file_content" and fault == "invalid_json":
        assert resp.status_code == 200  # a file's content is opaque bytes: passed on as is
        assert resp.content == b'{"object": "fine_tuning.job", "id": '
    elif fault in TRANSPORT:
        assert_error(resp, 502, code="upstream_unreachable")
    elif fault in TIMEOUTS:
        assert_error(resp, 504, code="upstream_timeout")
    elif fault in STATUSES:
        err = assert_error(resp, int(fault), code=f"scripted_{fault}")
        assert "scripted" in err["message"]
        if fault == "429":
            assert resp.headers.get("Retry-After") == PAST_RETRY_AFTER
    elif fault == "invalid_json":
        assert_error(resp, 502, code="upstream_invalid_response")
    assert "sk-fault-matrix-secret-0001" not in resp.text

    if fault != "refused":
        assert upstream.count(op.method, op.path) == tries, (upstream.hits, tries)
        assert upstream.total == tries
    assert logged_attempts(caplog, trace) == tries
    if not op.idempotent:
        assert upstream.count(op.method, op.path) <= 1  # no create or upload ever ran twice
    # Timeouts stay near what the client asked for: tries × timeout, plus slack for a shared machine.
    assert elapsed < tries * (TIMEOUT_MS / 1000) * 2 + 3


# ---- the retry policy itself ---------------------------------------------------------------------

LIST = "/fine_tuning/jobs"


def _get(gw: Gateway, url: str, **extra: str) -> requests.Response:
    return requests.get(gw.url + "/v1" + LIST, headers=gateway_headers(url, **extra), timeout=60)


def test_default_policy_is_three_tries(rig: tuple[FaultyUpstream, str, Gateway]) -> None:
    upstream, url, gw = rig
    upstream.reset_state("503")
    assert_error(_get(gw, url), 503)
    assert upstream.count("GET", LIST) == 3


@pytest.mark.parametrize("codes,fault,tries", [
    ([503], "500", 1),  # a status not listed is answered at once
    ([503], "503", 4),
    ([], "429", 1),
    ([429], "429", 4),
])
def test_on_status_codes_respected(rig: tuple[FaultyUpstream, str, Gateway], codes: list[int], fault: str,
                                   tries: int) -> None:
    upstream, url, gw = rig
    upstream.reset_state(fault)
    config = json.dumps({"retry": {"attempts": 3, "on_status_codes": codes}})
    assert_error(_get(gw, url, **{"x-portkey-config": config}), int(fault))
    assert upstream.count("GET", LIST) == tries


def test_attempts_zero_means_one_try_even_on_transport_errors(rig: tuple[FaultyUpstream, str, Gateway]) -> None:
    upstream, url, gw = rig
    upstream.reset_state("reset")
    assert_error(_get(gw, url, **{"x-portkey-config": '{"retry": {"attempts": 0}}'}), 502)
    assert upstream.count("GET", LIST) == 1


def test_attempts_are_capped_at_ten(rig: tuple[FaultyUpstream, str, Gateway]) -> None:
    upstream, url, gw = rig
    upstream.reset_state("503")
    assert_error(_get(gw, url, **{"x-portkey-config": '{"retry": {"attempts": 500}}'}), 503)
    assert upstream.count("GET", LIST) == 10


def test_recovers_after_transient_faults(rig: tuple[FaultyUpstream, str, Gateway]) -> None:
    upstream, url, gw = rig
    for fault in ("drop", "reset", "truncated", "503", "429"):
        upstream.reset_state(fault, times=2)
        resp = _get(gw, url)
        assert resp.status_code == 200, (fault, resp.text)
        assert upstream.count("GET", LIST) == 3


def test_retry_after_seconds_are_honoured(rig: tuple[FaultyUpstream, str, Gateway]) -> None:
    upstream, url, gw = rig
    upstream.reset_state("429", times=1, retry_after="1")
    started = time.monotonic()
    assert _get(gw, url).status_code == 200
    assert time.monotonic() - started >= 0.95
    assert upstream.count("GET", LIST) == 2


@pytest.mark.parametrize("value", ["soon", "1.5 seconds"])
def test_unparseable_retry_after_is_not_a_500(rig: tuple[FaultyUpstream, str, Gateway], value: str) -> None:
    upstream, url, gw = rig
    upstream.reset_state("429", retry_after=value)
    resp = _get(gw, url)
    assert_error(resp, 429)  # the upstream's answer, after the policy's tries, never the gateway's own 500
    assert upstream.count("GET", LIST) == 3


def test_create_without_key_never_retried_on_any_fault(rig: tuple[FaultyUpstream, str, Gateway]) -> None:
    """The default policy (no x-portkey-config) must not replay a create either."""
    upstream, url, gw = rig
    for fault in ("drop", "reset", "truncated", "500", "503", "429"):
        upstream.reset_state(fault)
        resp = requests.post(gw.url + "/v1" + LIST, headers=gateway_headers(url), json=JSON_BODIES["create_job"],
                             timeout=30)
        assert resp.status_code >= 500 or resp.status_code == 429, fault
        assert upstream.count("POST", LIST) == 1, fault


def test_create_with_idempotency_key_is_retried_with_the_key_upstream(rig: tuple[FaultyUpstream, str, Gateway]) -> None:
    """Under an Idempotency-Key tunegate retries a create (the answer of a first try may be lost after the
    provider created the job: truncated). The retry is only safe when the key travels upstream so the
    provider can recognise the replay (providers/openai/MAPPING.md: 'sent upstream too')."""
    upstream, url, gw = rig
    key = f"k-{time.monotonic_ns()}"
    upstream.reset_state("truncated", times=1)
    upstream.ok_body = {"object": "fine_tuning.job", "id": "ftjob-once", "status": "queued"}
    try:
        resp = requests.post(gw.url + "/v1" + LIST, json=JSON_BODIES["create_job"], timeout=30,
                             headers=gateway_headers(url, **{"Idempotency-Key": key}))
    finally:
        upstream.ok_body = FaultyUpstream().ok_body
    assert resp.status_code == 200, resp.text
    assert upstream.count("POST", LIST) == 2
    assert [h.get("Idempotency-Key") for h in upstream.headers] == [key, key]
