"""What Fireworks and Bedrock answer is never relayed raw, nor read into a 500:

- A non-JSON error body (a proxy's HTML page with a stack trace, a framework's plain-text trace) is cut to
  what ``providers.base.short_error_text`` lets through: the page's <title>, or the first line of text.
- A count an upstream sends with non-ASCII digits ('²', which ``int()`` refuses, or '١', which it reads as
  1) is left out, never a 500 or another number (``providers.base.whole_number``); so is a timestamp or
  hyperparameter Bedrock echoes in such digits.

Driven through the in-process gateway on real sockets against small upstreams, plus the mapping functions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from aiohttp import web

from tests.gateway import Gateway
from tests.standins import bedrock as bedrock_standin
from tests.standins.fireworks import FireworksStandIn, rfc3339
from tests.standins.openai_like import ServerThread
from tunegate.providers import ids
from tunegate.providers.base import clean_retry_after
from tunegate.providers.bedrock import chat as bedrock_chat
from tunegate.providers.bedrock import jobs as bedrock_jobs
from tunegate.providers.fireworks.jobs import to_job

SECRET = "fw-caller-secret-123456"
HTML_TRACE = ("<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body><h1>Oops</h1><pre>\n"
              "Traceback (most recent call last):\n  File \"/srv/app/views.py\", line 42, in jobs\n"
              f"    db.connect(password='hunter2', key='{SECRET}')\nRuntimeError: boom\n</pre></body></html>\n")
TEXT_TRACE = ("upstream busy\nTraceback (most recent call last):\n  File \"/srv/app/views.py\", line 42\n"
              "    db.connect(password='hunter2')\n")
NO_RETRY = json.dumps({"retry": {"attempts": 0}})
JOB_ARN = f"arn:aws:bedrock:us-east-1:{bedrock_standin.ACCOUNT}:model-customization-job/amazon.nova-micro-v1:0/a1b2c3d4e5f6"


@pytest.fixture
def broken() -> Iterator[str]:
    """Every path answers an error page: HTML for a request naming 'html' (path or body), plain text otherwise."""

    async def page(request: web.Request) -> web.Response:
        if "html" in request.path or b"html" in await request.read():
            return web.Response(status=502, text=HTML_TRACE, content_type="text/html")
        return web.Response(status=503, text=TEXT_TRACE, content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    with ServerThread(app) as server:
        yield server.url


def _fireworks(url: str) -> dict[str, str]:
    return {"x-portkey-provider": "fireworks-ai", "Authorization": f"Bearer {SECRET}", "x-portkey-config": NO_RETRY,
            "x-portkey-custom-host": url + "/v1", "x-portkey-fireworks-account-id": "team"}


def _bedrock(url: str) -> dict[str, str]:
    return {"x-portkey-provider": "bedrock", "x-portkey-aws-access-key-id": bedrock_standin.ACCESS_KEY,
            "x-portkey-aws-secret-access-key": bedrock_standin.SECRET, "x-portkey-aws-region": "us-east-1",
            "x-portkey-custom-host": url, "x-portkey-config": NO_RETRY}


def _message(r: requests.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    message = str(body["error"]["message"])
    for leaked in ("<", "Traceback", "hunter2", SECRET, "views.py", "\n"):
        assert leaked not in message, message
    assert len(message) <= 260, message
    return message


# Fireworks: a job (control plane), and a chat (inference), each behind an HTML page and a plain-text trace.
FIREWORKS_CALLS = [("GET", "/v1/fine_tuning/jobs/{word}-job", None),
                   ("POST", "/v1/chat/completions", {"model": "accounts/fireworks/models/{word}",
                                                     "messages": [{"role": "user", "content": "hi"}]})]


@pytest.mark.parametrize("method, path, body", FIREWORKS_CALLS)
def test_fireworks_an_html_error_page_gives_its_title_only(gateway: Gateway, broken: str, method: str, path: str,
                                                           body: Any) -> None:
    data = json.loads(json.dumps(body).replace("{word}", "html")) if body else None
    r = requests.request(method, gateway.url + path.format(word="html"), json=data, headers=_fireworks(broken),
                         timeout=20)
    assert _message(r, 502) == "Fireworks answered with HTTP 502. 502 Bad Gateway"


@pytest.mark.parametrize("method, path, body", FIREWORKS_CALLS)
def test_fireworks_a_plain_text_error_gives_its_first_line_only(gateway: Gateway, broken: str, method: str,
                                                                path: str, body: Any) -> None:
    data = json.loads(json.dumps(body).replace("{word}", "text")) if body else None
    r = requests.request(method, gateway.url + path.format(word="text"), json=data, headers=_fireworks(broken),
                         timeout=20)
    assert _message(r, 503) == "Fireworks answered with HTTP 503. upstream busy"


def _bedrock_job(word: str) -> str:
    return ids.encode("ftjob", JOB_ARN.replace("a1b2c3d4e5f6", word))


def test_bedrock_an_html_error_page_gives_its_title_only(gateway: Gateway, broken: str) -> None:
    """An HTML page parses as XML, but it is no S3 <Error>: not named as S3's, and only its title is told."""
    r = requests.get(f"{gateway.url}/v1/fine_tuning/jobs/{_bedrock_job('html')}", headers=_bedrock(broken),
                     timeout=20)
    assert _message(r, 502) == "Bedrock answered with HTTP 502. 502 Bad Gateway"
    chat = requests.post(f"{gateway.url}/v1/chat/completions", headers=_bedrock(broken), timeout=20,
                         json={"model": "amazon.html-v1:0", "messages": [{"role": "user", "content": "hi"}]})
    assert _message(chat, 502) == "Bedrock answered with HTTP 502. 502 Bad Gateway"


def test_bedrock_a_plain_text_error_gives_its_first_line_only(gateway: Gateway, broken: str) -> None:
    r = requests.get(f"{gateway.url}/v1/fine_tuning/jobs/{_bedrock_job('text')}", headers=_bedrock(broken),
                     timeout=20)
    assert _message(r, 503) == "Bedrock answered with HTTP 503. upstream busy"


def test_bedrock_an_s3_error_is_still_named_as_s3s() -> None:
    from tunegate.providers.bedrock import Bedrock
    from tunegate.upstream import UpstreamResponse

    xml = b"<?xml version='1.0'?><Error><Code>NoSuchBucket</Code><Message>The bucket does not exist</Message></Error>"
    message, _type, code = Bedrock().error_message(UpstreamResponse(404, {"Content-Type": "application/xml"}, xml))
    assert message == "Amazon S3 answered HTTP 404 NoSuchBucket: The bucket does not exist" and code == "NoSuchBucket"


# ---- counts in non-ASCII digits ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (4096, 4096), ("4096", 4096), (0, 0), ("0", 0),
    ("\u00b2", None), ("\u0661\u0662", None), ("\uff11", None), ("12\n", None), (" 12", None), ("-1", None),
    (-1, None), (True, None), (1.5, None), ("1" * 19, None), (None, None), ({"n": 1}, None),
])
def test_whole_number_takes_ascii_digits_only(value: Any, expected: int | None) -> None:
    from tunegate.providers.base import whole_number

    assert whole_number(value) == expected


@pytest.mark.parametrize("value", ["\u00b2", "\u0661"])
def test_a_retry_after_in_other_digits_is_dropped(value: str) -> None:
    assert clean_retry_after(value) is None
    assert clean_retry_after("7") == "7"


@pytest.mark.parametrize("tokens", ["\u00b2", "\u0661\u0662", "12x", -5])
def test_fireworks_trained_tokens_in_other_digits_are_left_out(tokens: Any) -> None:
    raw = {"name": "accounts/team/supervisedFineTuningJobs/j", "state": "JOB_STATE_COMPLETED",
           "outputModel": "accounts/team/models/j", "jobProgress": {"inputTokens": tokens}}
    assert to_job(raw, "team")["trained_tokens"] is None
    assert to_job({**raw, "jobProgress": {"inputTokens": "4096"}}, "team")["trained_tokens"] == 4096


@pytest.fixture
def fireworks(gateway: Gateway) -> Iterator[tuple[FireworksStandIn, dict[str, str]]]:
    standin = FireworksStandIn(account="team")
    with ServerThread(standin.app()) as upstream:
        yield standin, {"x-portkey-provider": "fireworks-ai", "Authorization": f"Bearer {standin.api_key}",
                        "x-portkey-custom-host": upstream.url + "/v1", "x-portkey-fireworks-account-id": "team"}


@pytest.mark.parametrize("digits", ["\u00b2", "\u0661\u0662"])
def test_fireworks_a_job_and_a_dataset_with_other_digits_are_served(
        gateway: Gateway, fireworks: tuple[FireworksStandIn, dict[str, str]], digits: str) -> None:
    standin, headers = fireworks
    standin.jobs["tuned"] = {"name": "accounts/team/supervisedFineTuningJobs/tuned", "state": "JOB_STATE_COMPLETED",
                             "outputModel": "accounts/team/models/tuned", "createTime": rfc3339(time.time()),
                             "completedTime": rfc3339(time.time()), "dataset": "accounts/team/datasets/data",
                             "baseModel": "accounts/fireworks/models/llama-v3p1-8b-instruct",
                             "jobProgress": {"percent": 100, "inputTokens": digits}}
    standin.datasets["data"] = {"name": "accounts/team/datasets/data", "state": "READY", "exampleCount": digits,
                                "createTime": rfc3339(time.time()), "status": {"code": "OK", "message": ""}}
    job = requests.get(f"{gateway.url}/v1/fine_tuning/jobs/tuned", headers=headers, timeout=20)
    assert job.status_code == 200 and job.json()["trained_tokens"] is None, job.text
    file = requests.get(f"{gateway.url}/v1/files/data", headers=headers, timeout=20)
    assert file.status_code == 200 and "example_count" not in file.json(), file.text


def test_bedrock_counts_times_and_hyperparameters_in_other_digits_are_left_out() -> None:
    assert bedrock_chat._usage({"inputTokens": "\u00b2", "outputTokens": "\u0661"}) == bedrock_chat._usage(
        {"inputTokens": 0, "outputTokens": 0})
    assert bedrock_jobs.timestamp("\u0662\u0660\u0662\u0664-01-01T00:00:00Z") is None
    assert bedrock_jobs.timestamp("not a time") is None and bedrock_jobs.timestamp(float("nan")) is None
    assert bedrock_jobs.timestamp("2024-01-01T00:00:00Z") == 1704067200
    echoed = bedrock_jobs.echoed_hyperparameters({"epochCount": "\u0662", "batchSize": "\u00b2",
                                                  "learningRateMultiplier": "\u0661"}, None)
    assert echoed == {}
    raw = {"jobArn": JOB_ARN, "status": "Completed", "creationTime": "\u00b2", "endTime": "soon",
           "baseModelArn": "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-micro-v1:0",
           "hyperParameters": {"epochCount": "\u0662"}}
    job = bedrock_jobs.to_job(raw)
    assert job["created_at"] == 0 and job["finished_at"] is None and job["hyperparameters"]["n_epochs"] == "auto"
