"""Every error the gateway answers: OpenAI-shaped, with the right status, and nothing upstream
that should not be there."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ipaddress
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from aiohttp import web

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, StandIn, free_port

GOOD_LINE = json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                     {"role": "assistant", "content": "a"}]})
TRAINING = ("\n".join([GOOD_LINE] * 10) + "\n").encode()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[StandIn, str, Gateway]]:
    standin = StandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data", max_upload_bytes=4096) as gw:
        yield standin, upstream.url, gw


def headers(upstream: str, key: str = "sk-standin-secret-0001", **extra: str) -> dict[str, str]:
    return {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream, "Authorization": f"Bearer {key}",
            **extra}


def assert_error(resp: requests.Response, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err  # type: ignore[no-any-return]


def test_missing_and_unknown_provider(env: tuple[StandIn, str, Gateway]) -> None:
    _, upstream, gw = env
    err = assert_error(requests.get(gw.url + "/v1/fine_tuning/jobs"), 400, "x-portkey-provider", "missing_provider")
    assert "x-portkey-provider" in err["message"]
    err = assert_error(requests.get(gw.url + "/v1/fine_tuning/jobs", headers={"x-portkey-provider": "nope"}), 400,
                       "x-portkey-provider", "unknown_provider")
    assert "openai" in err["message"]


@pytest.mark.parametrize("body", [b"{not json", b"[1,2]", b'"text"', b"", b"null"])
def test_invalid_json_is_400(env: tuple[StandIn, str, Gateway], body: bytes) -> None:
    standin, upstream, gw = env
    resp = requests.post(gw.url + "/v1/fine_tuning/jobs", data=body,
                         headers={**headers(upstream), "content-type": "application/json"})
    assert_error(resp, 400, code="invalid_json")
    assert not [r for r in standin.requests if r.method == "POST"]


@pytest.mark.parametrize("body,param", [
    ({"training_file": "file-1"}, "model"),
    ({"model": "gpt-4o-mini"}, "training_file"),
    ({"model": "gpt-4o-mini", "training_file": "file-1", "suffix": "x" * 65}, "suffix"),
    ({"model": "gpt-4o-mini", "training_file": "file-1", "suffix": ""}, "suffix"),
    ({"model": 3, "training_file": "file-1"}, "model"),
    ({"model": "m", "training_file": "file-1", "hyperparameters": []}, "hyperparameters"),
    ({"model": "m", "training_file": "file-1", "seed": -1}, "seed"),
    ({"model": "m", "training_file": "file-1", "metadata": {"k": 1}}, "metadata"),
])
def test_create_validation(env: tuple[StandIn, str, Gateway], body: dict[str, Any], param: str) -> None:
    standin, upstream, gw = env
    assert_error(requests.post(gw.url + "/v1/fine_tuning/jobs", json=body, headers=headers(upstream)), 400, param)
    assert not [r for r in standin.requests if r.method == "POST"]  # nothing went upstream


def test_suffix_of_64_is_fine_for_openai(env: tuple[StandIn, str, Gateway]) -> None:
    standin, upstream, gw = env
    standin.files["file-1"] = {"id": "file-1"}
    resp = requests.post(gw.url + "/v1/fine_tuning/jobs", headers=headers(upstream),
                         json={"model": "m", "training_file": "file-1", "suffix": "x" * 64})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("method,path,status", [
    ("POST", "/v1/fine_tuning/jobs/ftjob-1/bogus", 404),
    ("GET", "/v1/fine_tuning/jobs/ftjob-1/cancel/extra", 404),
    ("GET", "/v2/anything", 404),
    ("PUT", "/v1/fine_tuning/jobs/ftjob-1", 405),
    ("DELETE", "/v1/fine_tuning/jobs/ftjob-1", 400),  # a route (Azure can delete jobs); OpenAI cannot: 400
    ("GET", "/v1/fine_tuning/jobs/ftjob-1/cancel", 405),
    ("PUT", "/v1/files", 405),
])
def test_routes(env: tuple[StandIn, str, Gateway], method: str, path: str, status: int) -> None:
    standin, upstream, gw = env
    assert_error(requests.request(method, gw.url + path, headers=headers(upstream)), status)
    assert not standin.requests  # an unknown sub-path is never dispatched as some other operation


def test_upload_too_large_is_413_and_nothing_registered(env: tuple[StandIn, str, Gateway]) -> None:
    standin, upstream, gw = env
    big = b'{"prompt": "x", "completion": "y"}\n' * 200  # 7 KB > the 4 KB limit of this gateway
    resp = requests.post(gw.url + "/v1/files", headers=headers(upstream), data={"purpose": "batch"},
                         files={"file": ("big.jsonl", big)})
    assert_error(resp, 413)
    assert not standin.files


def test_invalid_training_file_refused_before_provider_creates_it(env: tuple[StandIn, str, Gateway]) -> None:
    standin, upstream, gw = env
    bad = TRAINING.replace(b'"assistant"', b'"robot"', 1)
    resp = requests.post(gw.url + "/v1/files", headers=headers(upstream), data={"purpose": "fine-tune"},
                         files={"file": ("train.jsonl", bad)})
    err = assert_error(resp, 400, "file", "invalid_training_file")
    assert "line 1" in err["message"]
    assert not standin.files  # the upstream request was aborted before it completed
    ok = requests.post(gw.url + "/v1/files", headers=headers(upstream), data={"purpose": "fine-tune"},
                       files={"file": ("train.jsonl", TRAINING)})
    assert ok.status_code == 200, ok.text
    assert list(standin.contents.values()) == [TRAINING]


def test_too_few_examples_is_the_job_create_s_400(env: tuple[StandIn, str, Gateway]) -> None:
    """A 3-line file uploads (OpenAI accepts it); as a training file its job is a 400 naming the count and
    OpenAI's minimum; as a validation file it is fine."""
    standin, upstream, gw = env
    resp = requests.post(gw.url + "/v1/files", headers=headers(upstream), data={"purpose": "fine-tune"},
                         files={"file": ("t.jsonl", (GOOD_LINE + "\n").encode() * 3)})
    assert resp.status_code == 200, resp.text
    small = resp.json()["id"]
    assert small in standin.files
    big = requests.post(gw.url + "/v1/files", headers=headers(upstream), data={"purpose": "fine-tune"},
                        files={"file": ("t.jsonl", TRAINING)}).json()["id"]
    create = gw.url + "/v1/fine_tuning/jobs"
    resp = requests.post(create, headers=headers(upstream), json={"model": "gpt-4o-mini", "training_file": small})
    err = assert_error(resp, 400, "training_file", "invalid_n_examples")
    assert "3 example(s)" in err["message"] and "at least 10" in err["message"] and "'openai'" in err["message"]
    assert not [r for r in standin.requests if r.path.endswith("/fine_tuning/jobs")]  # refused before the provider
    resp = requests.post(create, headers=headers(upstream),
                         json={"model": "gpt-4o-mini", "training_file": big, "validation_file": small})
    assert resp.status_code == 200, resp.text
    assert resp.json()["validation_file"] == small


def test_upload_form_errors(env: tuple[StandIn, str, Gateway]) -> None:
    _, upstream, gw = env
    assert_error(requests.post(gw.url + "/v1/files", headers=headers(upstream), data={"purpose": "fine-tune"}),
                 400)  # not multipart at all: form-urlencoded
    assert_error(requests.post(gw.url + "/v1/files", headers=headers(upstream),
                               files={"purpose": (None, "fine-tune")}), 400, "file")
    assert_error(requests.post(gw.url + "/v1/files", headers=headers(upstream),
                               files={"file": ("t.jsonl", TRAINING)}), 400, "purpose")


def _open_spools() -> int:
    """Anonymous temporary files (spools) open in this process, where the in-thread gateway runs."""
    tmp = tempfile.gettempdir()
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            count += target.startswith(tmp) and target.endswith("(deleted)")
    return count


def test_file_before_purpose_is_accepted(env: tuple[StandIn, str, Gateway]) -> None:
    standin, upstream, gw = env
    before = _open_spools()
    # `file` first, as the openai Node SDK (v6) sends it: parked on disk until `purpose` arrives.
    resp = requests.post(gw.url + "/v1/files", headers=headers(upstream),
                         files=[("file", ("t.jsonl", TRAINING)), ("purpose", (None, "fine-tune"))])
    assert resp.status_code == 200, resp.text
    assert resp.json()["purpose"] == "fine-tune" and list(standin.contents.values()) == [TRAINING]
    # Still validated: a bad file is refused and nothing reaches the provider.
    bad = TRAINING.replace(b'"assistant"', b'"robot"', 1)
    resp = requests.post(gw.url + "/v1/files", headers=headers(upstream),
                         files=[("file", ("t.jsonl", bad)), ("purpose", (None, "fine-tune"))])
    assert_error(resp, 400, "file", "invalid_training_file")
    # Too large, or no purpose at all after the file: clear errors, and the spool is gone each time.
    big = b'{"prompt": "x", "completion": "y"}\n' * 200
    assert_error(requests.post(gw.url + "/v1/files", headers=headers(upstream),
                               files=[("file", ("b.jsonl", big)), ("purpose", (None, "batch"))]), 413)
    assert_error(requests.post(gw.url + "/v1/files", headers=headers(upstream),
                               files=[("file", ("t.jsonl", TRAINING)), ("other", (None, "x"))]), 400, "purpose")
    assert len(standin.files) == 1
    assert _open_spools() == before


def test_pause_on_azure_ga_is_400(env: tuple[StandIn, str, Gateway]) -> None:
    _, upstream, gw = env
    resp = requests.post(gw.url + "/v1/fine_tuning/jobs/ftjob-1/pause",
                         headers={**headers(upstream), "x-portkey-provider": "azure-openai"})
    err = assert_error(resp, 400, code="unsupported_operation")
    assert "pausing" in err["message"]


def test_upstream_unreachable_is_502(env: tuple[StandIn, str, Gateway]) -> None:
    _, _, gw = env
    dead = f"http://127.0.0.1:{free_port()}"
    assert_error(requests.get(gw.url + "/v1/fine_tuning/jobs", headers=headers(dead)), 502,
                 code="upstream_unreachable")


def test_upstream_timeout_is_504(tmp_path: Path) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/fine_tuning/jobs", slow)
    with ServerThread(app) as upstream, Gateway(tmp_path / "d") as gw:
        resp = requests.get(gw.url + "/v1/fine_tuning/jobs",
                            headers=headers(upstream.url, **{"x-portkey-request-timeout": "300",
                                                             "x-portkey-config": '{"retry": {"attempts": 0}}'}))
        assert_error(resp, 504, code="upstream_timeout")


def test_upstream_error_keeps_status_and_message_without_the_key(env: tuple[StandIn, str, Gateway]) -> None:
    _, upstream, gw = env
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs/ftjob-missing", headers=headers(upstream))
    err = assert_error(resp, 404, code="fine_tune_not_found")
    assert "ftjob-missing" in err["message"]
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers=headers(upstream, key="sk-wrong-secret-xyz"))
    err = assert_error(resp, 401)
    assert "sk-wrong-secret-xyz" not in resp.text


def test_upstream_5xx_and_429(env: tuple[StandIn, str, Gateway]) -> None:
    standin, upstream, gw = env
    no_retry = {"x-portkey-config": '{"retry": {"attempts": 0}}'}
    standin.faults["/fine_tuning/jobs"] = [503]
    assert_error(requests.get(gw.url + "/v1/fine_tuning/jobs", headers=headers(upstream, **no_retry)), 503)
    standin.faults["/fine_tuning/jobs"] = [429]
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers=headers(upstream, **no_retry))
    assert_error(resp, 429)
    assert resp.headers["Retry-After"] == "0"
    # With the default policy a GET is retried: two 503s, then success, in one client call.
    standin.faults["/fine_tuning/jobs"] = [503, 503]
    before = len(standin.requests)
    assert requests.get(gw.url + "/v1/fine_tuning/jobs", headers=headers(upstream)).status_code == 200
    assert len(standin.requests) - before == 3


def test_create_is_not_retried_without_idempotency_key(env: tuple[StandIn, str, Gateway]) -> None:
    standin, upstream, gw = env
    standin.files["file-1"] = {"id": "file-1"}
    standin.faults["/fine_tuning/jobs"] = [503]
    resp = requests.post(gw.url + "/v1/fine_tuning/jobs", headers=headers(upstream),
                         json={"model": "m", "training_file": "file-1"})
    assert_error(resp, 503)
    assert len([r for r in standin.requests if r.method == "POST"]) == 1


def test_idempotency_key_returns_the_same_job(env: tuple[StandIn, str, Gateway]) -> None:
    standin, upstream, gw = env
    standin.files["file-1"] = {"id": "file-1"}
    body = {"model": "m", "training_file": "file-1"}
    h = headers(upstream, **{"Idempotency-Key": "create-42"})
    first = requests.post(gw.url + "/v1/fine_tuning/jobs", headers=h, json=body)
    again = requests.post(gw.url + "/v1/fine_tuning/jobs", headers=h, json=body)
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(standin.jobs) == 1
    other = requests.post(gw.url + "/v1/fine_tuning/jobs", headers=h, json={**body, "model": "other"})
    assert_error(other, 422, code="idempotency_key_reused")


def test_nothing_of_ours_goes_upstream(env: tuple[StandIn, str, Gateway]) -> None:
    standin, upstream, gw = env
    requests.get(gw.url + "/v1/fine_tuning/jobs", headers=headers(
        upstream, **{"x-portkey-trace-id": "trace-1", "x-portkey-openai-project": "proj_9",
                     "x-portkey-openai-organization": "org_9", "Cookie": "session=1"}))
    sent = standin.requests[-1].headers
    assert not [h for h in sent if h.lower().startswith("x-portkey")]
    assert sent["Authorization"] == "Bearer sk-standin-secret-0001"
    assert sent["OpenAI-Project"] == "proj_9" and sent["OpenAI-Organization"] == "org_9"
    assert "Cookie" not in sent
    assert sent["Host"] == upstream.removeprefix("http://")


def test_a_repeated_header_counts_by_its_first_value(env: tuple[StandIn, str, Gateway]) -> None:
    """For every header alike: the provider, the host and the options (an option once counted by its
    last value while the others counted by their first)."""
    standin, upstream, gw = env
    parts = urlsplit(gw.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port)
    conn.putrequest("GET", "/v1/fine_tuning/jobs")
    for name, value in [*headers(upstream).items(), ("x-portkey-openai-project", "proj_first"),
                        ("x-portkey-openai-project", "proj_second"), ("x-portkey-provider", "mistral")]:
        conn.putheader(name, value)
    conn.endheaders()
    answer = conn.getresponse()
    assert answer.status == 200, answer.read()
    conn.close()
    assert standin.requests[-1].headers["OpenAI-Project"] == "proj_first"


def test_trace_id_echoed_or_generated(env: tuple[StandIn, str, Gateway]) -> None:
    _, upstream, gw = env
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers=headers(upstream, **{"x-portkey-trace-id": "abc"}))
    assert resp.headers["x-portkey-trace-id"] == "abc"
    resp = requests.get(gw.url + "/v1/nothing-here")
    assert len(resp.headers["x-portkey-trace-id"]) == 32


@pytest.mark.parametrize("host", ["http://169.254.169.254", "http://10.0.0.8:8080", "http://192.168.1.1",
                                  "http://metadata.google.internal", "http://[fd00:ec2::254]", "ftp://127.0.0.1",
                                  "http://user:pw@127.0.0.1"])
def test_custom_host_refused(env: tuple[StandIn, str, Gateway], host: str) -> None:
    _, _, gw = env
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs",
                        headers={"x-portkey-provider": "openai", "x-portkey-custom-host": host,
                                 "Authorization": "Bearer sk-1"})
    assert_error(resp, 400, "x-portkey-custom-host")


def test_operator_list_replaces_loopback_default(tmp_path: Path) -> None:
    standin = StandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "d", allowed_custom_hosts=["10.0.0.0/8"]) as gw:
        resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers=headers(upstream.url))
        assert_error(resp, 400, "x-portkey-custom-host", "custom_host_not_allowed")


def test_custom_host_that_rebinds_to_a_private_address_is_refused(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # DNS rebinding: the name answers a public address when the gateway checks it, then a private one
    # (here loopback, which this operator's empty list refuses) when the HTTP client connects.
    from tunegate import hosts

    checked: list[str] = []

    async def public_at_check_time(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        checked.append(host)
        return [ipaddress.ip_address("93.184.216.34")]

    standin = StandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "d", allowed_custom_hosts=[]) as gw:
        monkeypatch.setattr(hosts, "lookup", public_at_check_time)
        custom = f"http://localhost:{urlsplit(upstream.url).port}{standin.prefix}"
        resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers={
            "x-portkey-provider": "openai", "x-portkey-custom-host": custom, "Authorization": "Bearer sk-1"})
        assert_error(resp, 400, "x-portkey-custom-host", "custom_host_not_allowed")
    assert checked == ["localhost"]  # the first check passed...
    assert not standin.requests  # ...and still nothing was sent to the address the name rebound to


def test_custom_host_by_name_on_the_default_list_is_served(tmp_path: Path) -> None:
    # The connect-time guard applies the same list: 'localhost' (listed by default) resolves and works.
    standin = StandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "d") as gw:
        custom = f"http://localhost:{urlsplit(upstream.url).port}{standin.prefix}"
        resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers={
            "x-portkey-provider": "openai", "x-portkey-custom-host": custom, "Authorization": f"Bearer {standin.api_key}"})
        assert resp.status_code == 200, resp.text
    assert standin.requests


def test_health_and_readiness(env: tuple[StandIn, str, Gateway]) -> None:
    _, _, gw = env
    assert requests.get(gw.url + "/healthz").json() == {"status": "ok"}
    assert requests.get(gw.url + "/readyz").json()["database"] == "ok"


def test_request_log_has_no_secrets(env: tuple[StandIn, str, Gateway]) -> None:
    _, upstream, gw = env
    requests.get(gw.url + "/v1/fine_tuning/jobs", headers=headers(upstream, **{"x-portkey-trace-id": "log-1"}))
    rows: list[dict[str, Any]] = []
    for _ in range(50):  # the log is written in batches, off the request path
        rows = gw.with_store(lambda s: s.recent_requests())
        if any(r["trace_id"] == "log-1" for r in rows):
            break
        time.sleep(0.1)
    entry = next(r for r in rows if r["trace_id"] == "log-1")
    assert entry["provider"] == "openai" and entry["operation"] == "list_jobs" and entry["status"] == 200
    assert entry["upstream_status"] == 200 and entry["latency_ms"] > 0
    assert "sk-standin-secret-0001" not in json.dumps(rows)


def test_oversized_headers_are_431(env: tuple[StandIn, str, Gateway]) -> None:
    _, upstream, gw = env
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers=headers(upstream, **{"x-big": "a" * 40000}))
    assert_error(resp, 431, code="headers_too_large")


def test_concurrent_uploads_limited(tmp_path: Path) -> None:
    import socket

    with Gateway(tmp_path / "d", max_concurrent_uploads=1) as gw:
        boundary = "bnd"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jsonl\"\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", gw.port)) as held:
            held.sendall((f"POST /v1/files HTTP/1.1\r\nHost: x\r\nx-portkey-provider: tunegate\r\n"
                          f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n"
                          ).encode() + head + b"{}\n" * 100)
            time.sleep(0.3)  # the first upload is now streaming, and holds the only slot
            resp = requests.post(gw.url + "/v1/files", headers={"x-portkey-provider": "tunegate"},
                                 data={"purpose": "batch"}, files={"file": ("y.jsonl", b"{}\n")})
            assert_error(resp, 429, code="too_many_concurrent_uploads")
        time.sleep(0.3)
        ok = requests.post(gw.url + "/v1/files", headers={"x-portkey-provider": "tunegate"},
                           data={"purpose": "batch"}, files={"file": ("y.jsonl", b"{}\n")})
        assert ok.status_code == 200, ok.text
