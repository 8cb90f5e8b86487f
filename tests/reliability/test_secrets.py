"""Secrets never leave the gateway through its logs, its data directory or its error bodies.

``tunegate serve`` runs at log level debug with its output captured; a series of requests carries
provider keys, tunegate keys, stored connection secrets, AWS-style secret headers and custom hosts, and
an upstream that echoes every header it receives back in its error message (the worst case for
redaction). Afterwards every secret value is looked for in the captured output, in every file under the
data directory (raw bytes: connection secrets are Fernet-encrypted and tunegate keys are hashed, so the
plaintext must not appear anywhere, the SQLite database and its WAL included) and in every answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from tests.gateway import _TEST_FERNET_KEY
from tests.reliability.helpers import LoggedServe
from tests.standins.openai_like import ServerThread, StandIn
from tests.test_errors import TRAINING

PROVIDER_KEY = "sk-provider-SECRET-a1b2c3d4e5f6"
CONN_KEY = "sk-connection-SECRET-0f9e8d7c6b5a"
CONN_OTHER = "conn-other-SECRET-55aa66bb77cc"
WRONG_TG_KEY = "tg-wrongkey-SECRET-9x8y7z6w5v4u"
AWS_ACCESS = "AKIASECRETACCESS7777"
AWS_SECRET = "aws-secret-SECRET-wJalrXUtnFEMI/K7MDENG+bPxRfiCY"
AWS_TOKEN = "aws-session-SECRET-FQoGZXIvYXdzEJr//////////"
HOST_PASSWORD = "hostpw-SECRET-4242"
HOST_TOKEN = "sig-SECRET-3c3c3c3c"
AZURE_KEY = "azure-api-key-SECRET-1234567890"


def echo_app() -> web.Application:
    """An upstream that puts every header value and its own URL into a 400 error message."""

    async def echo(request: web.Request) -> web.Response:
        await request.read()
        said = f"echo of {request.method} {request.url}: " + "; ".join(f"{k}={v}" for k, v in request.headers.items())
        return web.json_response({"message": said, "Message": said,
                                  "error": {"message": said, "type": "invalid_request_error", "code": "echo"}},
                                 status=400)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def cli(data: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "tunegate", *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TUNEGATE_DATA_DIR": str(data), "TUNEGATE_SECRET_KEY": _TEST_FERNET_KEY})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_no_secret_in_logs_data_dir_or_error_bodies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    standin = StandIn(api_key=CONN_KEY)
    answers: list[requests.Response] = []
    with ServerThread(standin.app()) as good, ServerThread(echo_app()) as echo:
        cli(data, "connections", "add", "sec-conn", "--provider", "openai", "--base-url", good.url,
            "--api-key", CONN_KEY, "--secret", f"other={CONN_OTHER}")
        cli(data, "connections", "add", "echo-conn", "--provider", "openai", "--base-url", echo.url,
            "--api-key", CONN_KEY)
        cli(data, "connections", "add", "aws-conn", "--provider", "bedrock", "--base-url", echo.url,
            "--secret", f"aws_access_key_id={AWS_ACCESS}", "--secret", f"aws_secret_access_key={AWS_SECRET}",
            "--secret", f"aws_session_token={AWS_TOKEN}", "--option", "aws_region=us-east-1")
        tg_key = json.loads(cli(data, "keys", "create", "--name", "secrets", "--allow-provider-keys", "--json"))["key"]
        secrets = [PROVIDER_KEY, CONN_KEY, CONN_OTHER, WRONG_TG_KEY, AWS_SECRET, AWS_TOKEN, HOST_PASSWORD,
                   HOST_TOKEN, AZURE_KEY, tg_key, tg_key.split("-", 1)[1]]
        with LoggedServe(data, tmp_path / "serve.log", env={"TUNEGATE_LOG_LEVEL": "debug"}) as gw:
            url = gw.url + "/v1"

            def call(method: str, path: str, **kw: Any) -> requests.Response:
                resp = requests.request(method, url + path, timeout=30, **kw)
                answers.append(resp)
                return resp

            tg = {"x-portkey-api-key": tg_key}
            # Tunegate key + stored connection: the happy path, then the provider's own errors.
            conn = {**tg, "x-portkey-virtual-key": "sec-conn"}
            assert call("GET", "/fine_tuning/jobs", headers=conn).status_code == 200
            up = call("POST", "/files", headers=conn, data={"purpose": "fine-tune"},
                      files={"file": ("t.jsonl", TRAINING)})
            assert up.status_code == 200, up.text
            job = call("POST", "/fine_tuning/jobs", headers={**conn, "Idempotency-Key": "secret-idem"},
                       json={"model": "gpt-4o-mini", "training_file": up.json()["id"]})
            assert job.status_code == 200, job.text
            assert call("GET", f"/fine_tuning/jobs/{job.json()['id']}", headers=conn).status_code == 200
            assert call("GET", "/fine_tuning/jobs/ftjob-nope", headers=conn).status_code == 404
            # The connection's upstream echoes its Authorization header back.
            assert call("GET", "/fine_tuning/jobs", headers={**tg, "x-portkey-virtual-key": "echo-conn"}
                        ).status_code == 400
            # A provider key brought by the request (Bearer) to an echoing custom host.
            byo = {**tg, "Authorization": f"Bearer {PROVIDER_KEY}", "x-portkey-provider": "openai",
                   "x-portkey-custom-host": echo.url}
            assert call("GET", "/fine_tuning/jobs", headers=byo).status_code == 400
            assert call("POST", "/fine_tuning/jobs/ftjob-1/cancel", headers=byo).status_code == 400
            assert call("POST", "/files", headers=byo, data={"purpose": "fine-tune"},
                        files={"file": ("t.jsonl", TRAINING)}).status_code == 400
            # Azure's api-key style, echoed.
            assert call("GET", "/fine_tuning/jobs", headers={
                **tg, "Authorization": f"Bearer {AZURE_KEY}", "x-portkey-provider": "azure-openai",
                "x-portkey-custom-host": echo.url, "x-portkey-azure-resource-name": "res"}).status_code in (400, 404)
            # A wrong tunegate key, in either header.
            assert call("GET", "/fine_tuning/jobs", headers={"x-portkey-api-key": WRONG_TG_KEY}).status_code == 401
            assert call("GET", "/fine_tuning/jobs", headers={"Authorization": f"Bearer {WRONG_TG_KEY}"}
                        ).status_code == 401
            # AWS-style secrets (SigV4 signing; the session token travels upstream and is echoed back).
            aws = {**tg, "x-portkey-provider": "bedrock", "x-portkey-custom-host": echo.url,
                   "x-portkey-aws-access-key-id": AWS_ACCESS, "x-portkey-aws-secret-access-key": AWS_SECRET,
                   "x-portkey-aws-session-token": AWS_TOKEN, "x-portkey-aws-region": "us-east-1"}
            assert call("GET", "/fine_tuning/jobs", headers=aws).status_code in (400, 403)
            aws_conn = {**tg, "x-portkey-virtual-key": "aws-conn"}
            assert call("GET", "/fine_tuning/jobs", headers=aws_conn).status_code == 400, answers[-1].text
            assert "echo of GET" in answers[-1].text
            assert call("GET", "/fine_tuning/jobs/ftjob-1", headers=aws_conn).status_code in (400, 404)
            # Custom hosts carrying credentials: refused, and never repeated back.
            call("GET", "/fine_tuning/jobs", headers={**byo, "x-portkey-custom-host":
                                                      f"http://user:{HOST_PASSWORD}@127.0.0.1:1"})
            call("GET", "/fine_tuning/jobs", headers={**byo, "x-portkey-custom-host":
                                                      f"http://10.1.2.3/v1?sig={HOST_TOKEN}"})
            call("GET", "/fine_tuning/jobs", headers={**byo, "x-portkey-custom-host": f"{echo.url}/v1?sig={HOST_TOKEN}"})
            # Secrets in a malformed config header and in the trace id.
            call("GET", "/fine_tuning/jobs", headers={**byo, "x-portkey-config": '{"api_key": "' + PROVIDER_KEY + '"'})
            call("GET", "/fine_tuning/jobs", headers={**byo, "x-portkey-request-timeout": PROVIDER_KEY})
        log = gw.output()
    assert "DEBUG" in log.upper()  # the run really was at debug level
    leaks: list[str] = []
    for secret in secrets:
        if secret in log:
            line = next(x for x in log.splitlines() if secret in x)
            leaks.append(f"log: {secret!r} in {line[:300]!r}")
        for path in sorted(p for p in data.rglob("*") if p.is_file()):
            if secret.encode() in path.read_bytes():
                leaks.append(f"data dir: {secret!r} in {path.relative_to(data)}")
        for resp in answers:
            if secret in resp.text or any(secret in v for v in resp.headers.values()):
                leaks.append(f"answer: {secret!r} in {resp.request.method} {resp.request.url} -> "
                             f"{resp.status_code} {resp.text[:300]}")
    assert not leaks, "\n".join(leaks)


def test_debug_log_has_no_aws_session_token(tmp_path: Path) -> None:
    with ServerThread(echo_app()) as echo, LoggedServe(tmp_path / "d", tmp_path / "serve.log",
                                                       env={"TUNEGATE_LOG_LEVEL": "debug"}) as gw:
        requests.get(gw.url + "/v1/fine_tuning/jobs", timeout=30, headers={
            "x-portkey-provider": "bedrock", "x-portkey-custom-host": echo.url,
            "x-portkey-aws-access-key-id": AWS_ACCESS, "x-portkey-aws-secret-access-key": AWS_SECRET,
            "x-portkey-aws-session-token": AWS_TOKEN, "x-portkey-aws-region": "us-east-1"})
        log = gw.output()
    assert AWS_SECRET not in log
    assert AWS_TOKEN not in log, [x for x in log.splitlines() if AWS_TOKEN in x][0][:300]


@pytest.mark.parametrize("secret", [pytest.param(AWS_TOKEN, id="session-token"),
                                    pytest.param(AWS_SECRET, id="secret-access-key")])
def test_option_secret_echoed_by_upstream_is_redacted(tmp_path: Path, secret: str) -> None:
    """Secrets that arrive as provider *options* (x-portkey-aws-* headers, open gateway) rather than as
    credentials are redacted too. (The secret access key never travels: SigV4 only signs with it.)"""
    from tests.gateway import Gateway

    with ServerThread(echo_app()) as echo, Gateway(tmp_path / "d") as gw:
        resp = requests.get(gw.url + "/v1/fine_tuning/jobs", timeout=30, headers={
            "x-portkey-provider": "bedrock", "x-portkey-custom-host": echo.url,
            "x-portkey-aws-access-key-id": AWS_ACCESS, "x-portkey-aws-secret-access-key": AWS_SECRET,
            "x-portkey-aws-session-token": AWS_TOKEN, "x-portkey-aws-region": "us-east-1"})
        assert resp.status_code == 400, resp.text[:500]
        assert "echo of GET" in resp.text  # the upstream's message did come back
        assert secret not in resp.text, resp.text[:500]
