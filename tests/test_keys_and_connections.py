"""Tunegate keys and stored connections, through the CLI and over HTTP: hashing, revocation, grants,
per-key ownership of jobs and files, and secrets encrypted at rest."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.gateway import _TEST_FERNET_KEY, Gateway
from tests.standins.openai_like import ServerThread, StandIn
from tests.test_errors import TRAINING, assert_error


def cli(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "tunegate", *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TUNEGATE_DATA_DIR": str(data_dir), "TUNEGATE_SECRET_KEY": _TEST_FERNET_KEY,
                              **(env or {})})
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[tuple[StandIn, Gateway, Path]]:
    data = tmp_path / "data"
    standin = StandIn()
    with ServerThread(standin.app()) as upstream:
        cli(data, "connections", "add", "team-openai", "--provider", "openai", "--base-url", upstream.url,
            env={"TUNEGATE_PROVIDER_API_KEY": standin.api_key})
        cli(data, "connections", "add", "other-openai", "--provider", "openai", "--base-url", upstream.url,
            "--api-key", "sk-other-key-000000")
        with Gateway(data) as gw:
            yield standin, gw, data


def make_key(data: Path, name: str, *connections: str, extra: tuple[str, ...] = ()) -> str:
    args = [a for c in connections for a in ("--connection", c)]
    return str(json.loads(cli(data, "keys", "create", "--name", name, *args, *extra, "--json"))["key"])


def sdk(gw: Gateway, key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0,
                         default_headers={"x-portkey-provider": "openai", **headers})


def test_key_maps_to_connection_and_secret_stays_inside(managed: tuple[StandIn, Gateway, Path]) -> None:
    standin, gw, data = managed
    key = make_key(data, "alice", "team-openai")
    assert key.startswith("tg-")
    client = sdk(gw, key)
    f = client.files.create(file=("t.jsonl", io.BytesIO(TRAINING)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=f.id, model="gpt-4o-mini")
    assert job.status == "validating_files"
    sent = standin.requests[-1].headers
    assert sent["Authorization"] == f"Bearer {standin.api_key}"  # the stored secret, not the tunegate key
    assert key not in json.dumps([r.headers for r in standin.requests])
    # Only hashes of keys and only encrypted secrets are on disk.
    db = sqlite3.connect(data / "tunegate.db")
    dump = "\n".join(db.iterdump())
    assert key.split("-", 2)[2] not in dump and standin.api_key not in dump and "sk-other-key-000000" not in dump


def test_keys_required_once_any_exists(managed: tuple[StandIn, Gateway, Path]) -> None:
    standin, gw, data = managed
    make_key(data, "alice", "team-openai")
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs",
                        headers={"x-portkey-provider": "openai", "Authorization": f"Bearer {standin.api_key}"})
    assert_error(resp, 401, code="missing_api_key")
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs",
                        headers={"x-portkey-provider": "openai", "x-portkey-api-key": "tg-abc-notreal"})
    assert_error(resp, 401, code="invalid_api_key")


def test_revoked_key_is_refused(managed: tuple[StandIn, Gateway, Path]) -> None:
    _, gw, data = managed
    key = make_key(data, "bob", "team-openai")
    assert sdk(gw, key).fine_tuning.jobs.list().data == []
    key_id = key.split("-")[1]
    cli(data, "keys", "revoke", key_id)
    listed = json.loads(cli(data, "keys", "list", "--json"))
    assert [k["revoked"] for k in listed if k["id"] == key_id] == [True]
    import time

    time.sleep(1.1)  # the key cache lives one second
    with pytest.raises(openai.AuthenticationError):
        sdk(gw, key).fine_tuning.jobs.list()


def test_key_not_granted_connection_is_403(managed: tuple[StandIn, Gateway, Path]) -> None:
    _, gw, data = managed
    key = make_key(data, "carol", "team-openai")
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers={
        "x-portkey-api-key": key, "x-portkey-virtual-key": "other-openai"})
    assert_error(resp, 403)
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers={
        "x-portkey-api-key": key, "x-portkey-provider": "azure-openai"})
    assert_error(resp, 403, code="no_connection")


def test_virtual_key_names_the_provider(managed: tuple[StandIn, Gateway, Path]) -> None:
    _, gw, data = managed
    key = make_key(data, "dave", "other-openai")
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs",
                        headers={"x-portkey-api-key": key, "x-portkey-virtual-key": "other-openai"})
    assert_error(resp, 401)  # the stand-in refuses the other connection's key: it was the one used
    assert "sk-other-key-000000" not in resp.text


def test_each_key_sees_only_its_own_objects(managed: tuple[StandIn, Gateway, Path]) -> None:
    standin, gw, data = managed
    alice, bob = make_key(data, "alice", "team-openai"), make_key(data, "bob", "team-openai")
    a, b = sdk(gw, alice), sdk(gw, bob)
    f = a.files.create(file=("t.jsonl", io.BytesIO(TRAINING)), purpose="fine-tune")
    job = a.fine_tuning.jobs.create(training_file=f.id, model="gpt-4o-mini")
    with pytest.raises(openai.NotFoundError):
        b.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        b.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        b.files.content(f.id)
    with pytest.raises(openai.NotFoundError):
        b.files.delete(f.id)
    assert [j.id for j in b.fine_tuning.jobs.list()] == []
    assert [x.id for x in b.files.list()] == []
    assert [j.id for j in a.fine_tuning.jobs.list()] == [job.id]
    # Alice needs no provider header for her own job: the registry knows where it lives.
    bare = openai.OpenAI(base_url=gw.url + "/v1", api_key=alice, max_retries=0)
    assert bare.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert standin.jobs[job.id]["status"] != "cancelled"


def test_tunegate_key_plus_provider_key(managed: tuple[StandIn, Gateway, Path]) -> None:
    standin, gw, data = managed
    strict = make_key(data, "strict", "team-openai")
    byok = make_key(data, "byok", "team-openai", extra=("--allow-provider-keys",))
    for key, expected in ((strict, standin.api_key), (byok, "sk-brought-by-client")):
        requests.get(gw.url + "/v1/fine_tuning/jobs", headers={
            "x-portkey-provider": "openai", "x-portkey-api-key": key, "Authorization": "Bearer sk-brought-by-client"})
        assert standin.requests[-1].headers["Authorization"] == f"Bearer {expected}"


def test_key_granted_everything_must_name_one_of_several(managed: tuple[StandIn, Gateway, Path]) -> None:
    _, gw, data = managed
    key = make_key(data, "admin", "*")
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers={"x-portkey-api-key": key,
                                                                   "x-portkey-provider": "openai"})
    assert_error(resp, 400, "x-portkey-virtual-key", "ambiguous_connection")
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers={"x-portkey-api-key": key,
                                                                   "x-portkey-virtual-key": "team-openai"})
    assert resp.status_code == 200, resp.text


def test_connections_cli_never_prints_secrets(managed: tuple[StandIn, Gateway, Path]) -> None:
    standin, _, data = managed
    out = cli(data, "connections", "list", "--json")
    listed = {c["name"]: c for c in json.loads(out)}
    assert listed["team-openai"]["secret_fields"] == ["api_key"]
    assert standin.api_key not in out and "sk-other-key-000000" not in out
    cli(data, "connections", "remove", "other-openai")
    assert "other-openai" not in cli(data, "connections", "list", "--json")


def test_result_files_belong_to_the_jobs_owner(managed: tuple[StandIn, Gateway, Path]) -> None:
    standin, gw, data = managed
    a, b = sdk(gw, make_key(data, "alice", "team-openai")), sdk(gw, make_key(data, "bob", "team-openai"))
    f = a.files.create(file=("t.jsonl", io.BytesIO(TRAINING)), purpose="fine-tune")
    job = a.fine_tuning.jobs.create(training_file=f.id, model="gpt-4o-mini")
    while (job := a.fine_tuning.jobs.retrieve(job.id)).status != "succeeded":
        pass
    (result,) = job.result_files
    assert a.files.content(result).read().startswith(b"step,train_loss")
    with pytest.raises(openai.NotFoundError):
        b.files.content(result)  # the provider's id is known to the gateway as alice's


def test_rate_limit_per_key(managed: tuple[StandIn, Gateway, Path]) -> None:
    _, gw, data = managed
    key = make_key(data, "slow", "team-openai", extra=("--rate-limit", "2"))
    h = {"x-portkey-api-key": key, "x-portkey-provider": "openai"}
    assert [requests.get(gw.url + "/v1/fine_tuning/jobs", headers=h).status_code for _ in range(2)] == [200, 200]
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers=h)
    assert_error(resp, 429, code="rate_limit_exceeded")
    assert int(resp.headers["Retry-After"]) >= 1


def test_connection_timeouts(tmp_path: Path) -> None:
    import asyncio

    from aiohttp import web

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return web.json_response({"object": "list", "data": [], "has_more": False})

    app = web.Application()
    app.router.add_get("/fine_tuning/jobs", slow)
    data = tmp_path / "d"
    with ServerThread(app) as upstream:
        cli(data, "connections", "add", "impatient", "--provider", "openai", "--base-url", upstream.url,
            "--api-key", "sk-x-000000", "--option", 'timeouts={"connect": 0.2, "first_byte": 0.3}')
        cli(data, "connections", "add", "patient", "--provider", "openai", "--base-url", upstream.url,
            "--api-key", "sk-x-000000")
        with Gateway(data) as gw:
            no_retry = {"x-portkey-config": '{"retry": {"attempts": 0}}'}
            resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers={"x-portkey-virtual-key": "impatient",
                                                                           **no_retry})
            assert_error(resp, 504, code="upstream_timeout")
            resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers={"x-portkey-virtual-key": "patient"})
            assert resp.status_code == 200
            # A request's own timeout wins over its connection's.
            resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers={
                "x-portkey-virtual-key": "impatient", "x-portkey-request-timeout": "5000"})
            assert resp.status_code == 200
