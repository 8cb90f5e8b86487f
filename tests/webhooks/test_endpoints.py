"""Endpoints per key: key B never hears key A's jobs nor sees A's endpoints; URLs checked like custom
hosts (private and metadata addresses refused, also at connect time); redirects never followed; the
CLI and the dashboard show the delivery log; nothing secret is logged."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import requests
from aiohttp import web

from tests.gateway import _TEST_FERNET_KEY, Gateway
from tests.standins.openai_like import ServerThread, StandIn
from tests.webhooks.helpers import FAST_HOOKS, FAST_WATCH, Receiver, create_job, eventually, prepare, register


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_key_b_never_receives_key_a_events(tmp_path: Path, standin: tuple[StandIn, str]) -> None:
    s, url = standin
    keys = prepare(tmp_path / "d", url, s.api_key, keys=("alice", "bob"))
    a, b = Receiver().up(), Receiver().up()
    try:
        with Gateway(tmp_path / "d", watch=FAST_WATCH, webhooks=FAST_HOOKS) as gw:
            ea = register(gw.url, keys["alice"], a.url)
            eb = register(gw.url, keys["bob"], b.url, event_types=["fine_tuning.job.succeeded",
                                                                   "fine_tuning.job.running"])
            job_id = create_job(gw.url, keys["alice"])
            a.wait(1)
            time.sleep(1.0)
            # Bob cannot see, read, test or delete Alice's endpoint: it does not exist for him.
            listed = requests.get(gw.url + "/v1/webhooks", headers=_auth(keys["bob"]), timeout=10).json()["data"]
            for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/deliveries"), ("POST", "/test")):
                r = requests.request(method, f"{gw.url}/v1/webhooks/{ea['id']}{path}", headers=_auth(keys["bob"]),
                                     timeout=10)
                assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path, r.text)
            bob_log = requests.get(f"{gw.url}/v1/webhooks/{eb['id']}/deliveries", headers=_auth(keys["bob"]),
                                   timeout=10).json()["data"]
    finally:
        a.down()
        b.down()
    assert [e["id"] for e in listed] == [eb["id"]]
    assert b.got == [] and bob_log == []
    assert len(a.got) == 1 and json.loads(a.got[0].body)["data"]["id"] == job_id


@pytest.mark.parametrize("target,code", [
    ("http://10.1.2.3/hook", "custom_host_not_allowed"),
    ("http://169.254.169.254/latest/meta-data", "custom_host_not_allowed"),
    ("http://metadata.google.internal/hook", "custom_host_not_allowed"),
    ("http://[::ffff:169.254.169.254]/x", "custom_host_not_allowed"),
    ("ftp://example.com/hook", "invalid_custom_host"),
    ("http://user:pw@127.0.0.1/hook", "invalid_custom_host"),
])
def test_private_and_metadata_urls_are_refused(gateway: Gateway, target: str, code: str) -> None:
    r = requests.post(gateway.url + "/v1/webhooks", json={"url": target}, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["param"] == "url"


def test_bad_bodies_are_400s(gateway: Gateway) -> None:
    for body, param in (({}, "url"), ({"url": 5}, "url"), ({"url": "http://127.0.0.1/x", "event_types": ["nope"]},
                                                            "event_types"),
                        ({"url": "http://127.0.0.1/x", "event_types": []}, "event_types"),
                        ({"url": "http://127.0.0.1/x", "name": ["x"]}, "name")):
        r = requests.post(gateway.url + "/v1/webhooks", json=body, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    assert requests.get(gateway.url + "/v1/webhooks/whep_nope", timeout=10).status_code == 404


async def test_connect_time_guard_refuses_private_addresses(tmp_path: Path, receiver: Receiver) -> None:
    """Every attempt connects through the guarded pool: a name that resolves to loopback (``localhost``) or
    a metadata literal is refused at connect time when the operator does not list it — whatever passed
    at registration — and the receiver never sees a byte."""
    from tunegate.store import Store
    from tunegate.store.secretbox import SecretBox
    from tunegate.upstream import Upstream
    from tunegate.webhooks.delivery import Deliverer
    from tunegate.webhooks.signing import new_secret

    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", SecretBox(_TEST_FERNET_KEY))
    upstream = Upstream([])  # nothing non-public allowed
    try:
        deliverer = Deliverer(store, FAST_HOOKS, upstream, "test")
        for target in (f"http://localhost:{receiver.port}/hook", "http://169.254.169.254/latest",
                       f"http://[::ffff:127.0.0.1]:{receiver.port}/hook"):
            status, error, _ms = await deliverer.send(target, new_secret(), "wh_x", b"{}")
            assert status is None and error == "upstream_host_not_allowed", target
        listed = Upstream(["127.0.0.1"])
        try:
            sent = await Deliverer(store, FAST_HOOKS, listed, "test").send(receiver.url, new_secret(), "wh_y", b"{}")
            assert sent[0] == 200
        finally:
            await listed.close()
    finally:
        await upstream.close()
        await store.close()
    assert len(receiver.got) == 1 and receiver.got[0].headers["webhook-id"] == "wh_y"


def test_redirects_are_not_followed(tmp_path: Path, standin: tuple[StandIn, str], receiver: Receiver) -> None:
    s, url = standin

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(receiver.url)

    app = web.Application()
    app.router.add_post("/hook", redirect)
    keys = prepare(tmp_path / "d", url, s.api_key)
    with ServerThread(app) as redirector, Gateway(tmp_path / "d", watch=FAST_WATCH, webhooks=FAST_HOOKS) as gw:
        endpoint = register(gw.url, keys["alice"], redirector.url + "/hook")
        create_job(gw.url, keys["alice"])
        log = eventually(lambda: [d for d in requests.get(f"{gw.url}/v1/webhooks/{endpoint['id']}/deliveries",
                                                          headers=_auth(keys["alice"]), timeout=10).json()["data"]
                                  if d["attempts"] >= 2])
    assert receiver.got == []  # the Location was never visited
    assert log[0]["state"] == "pending" and log[0]["last_status"] == 302
    assert log[0]["last_error"] == "redirect (not followed)"


def test_nothing_secret_in_the_logs(tmp_path: Path, standin: tuple[StandIn, str], caplog: pytest.LogCaptureFixture) -> None:
    s, url = standin
    keys = prepare(tmp_path / "d", url, s.api_key)
    failing = Receiver(status=500).up()
    caplog.set_level(logging.INFO)  # the gateway's default log_level (DEBUG adds the drivers' SQL traces)
    try:
        with Gateway(tmp_path / "d", watch=FAST_WATCH, webhooks=FAST_HOOKS) as gw:
            secret = register(gw.url, keys["alice"], failing.url)["signing_secret"]
            create_job(gw.url, keys["alice"])
            got = failing.wait(2)
    finally:
        failing.down()
    assert len(got) >= 2
    text = caplog.text
    assert secret not in text and secret[6:] not in text and got[0].body.decode() not in text
    assert got[0].headers["webhook-signature"] not in text and s.api_key not in text


def test_cli_add_list_test_log_rm(tmp_path: Path, standin: tuple[StandIn, str], receiver: Receiver) -> None:
    s, url = standin
    keys = prepare(tmp_path / "d", url, s.api_key)
    with Gateway(tmp_path / "d", watch=FAST_WATCH, webhooks=FAST_HOOKS) as gw:
        env = {**os.environ, "TUNEGATE_URL": gw.url, "TUNEGATE_API_KEY": keys["alice"],
               "TUNEGATE_SECRET_KEY": _TEST_FERNET_KEY}

        def cli(*args: str, ok: bool = True) -> str:
            out = subprocess.run([sys.executable, "-m", "tunegate", "webhooks", *args], capture_output=True, text=True,
                                 timeout=60, env=env)
            assert (out.returncode == 0) == ok, out.stdout + out.stderr
            return out.stdout

        created = json.loads(cli("add", receiver.url, "--json"))
        listed = json.loads(cli("list", "--json"))
        tested = json.loads(cli("test", created["id"], "--json"))
        job_id = create_job(gw.url, keys["alice"])
        receiver.wait(2)
        log = eventually(lambda: json.loads(cli("log", created["id"], "--json")))
        cli("rm", created["id"])
        after = json.loads(cli("list", "--json"))
        cli("rm", created["id"], ok=False)
    assert created["signing_secret"].startswith("whsec_")
    assert [e["id"] for e in listed] == [created["id"]] and "signing_secret" not in listed[0]
    assert tested["status_code"] == 200 and tested["object"] == "webhook_endpoint.test"
    openai.OpenAI(api_key="x").webhooks.verify_signature(receiver.got[0].body, receiver.got[0].headers,
                                                         secret=created["signing_secret"])
    assert log[0]["job_id"] == job_id and log[0]["state"] == "delivered" and log[0]["attempts"] == 1
    assert after == []


def test_dashboard_shows_the_delivery_log(tmp_path: Path, standin: tuple[StandIn, str], receiver: Receiver) -> None:
    s, url = standin
    with Gateway(tmp_path / "d", watch=FAST_WATCH, webhooks=FAST_HOOKS,
                 providers={"openai": {"base_url": url}}) as gw:  # open gateway
        endpoint = requests.post(gw.url + "/v1/webhooks", json={"url": receiver.url}, timeout=10).json()
        requests.post(f"{gw.url}/v1/webhooks/{endpoint['id']}/test", json={}, timeout=10)
        empty = requests.get(gw.url + "/ui/webhooks", timeout=10)
    assert empty.status_code == 200 and endpoint["id"] in empty.text and receiver.url in empty.text
    assert endpoint["signing_secret"] not in empty.text and "No deliveries yet" in empty.text


def test_openai_sdk_manages_endpoints_on_its_own_path(gateway: Gateway, receiver: Receiver) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    created = client.webhooks.create(name="ci", url=receiver.url, event_types=["fine_tuning.job.failed"])
    assert created.signing_secret.startswith("whsec_") and created.event_types == ["fine_tuning.job.failed"]
    assert [e.id for e in client.webhooks.list()] == [created.id]
    assert client.webhooks.retrieve(created.id).signing_secret_hint == created.signing_secret_hint
    result = client.webhooks.test(created.id, event_type="fine_tuning.job.failed")
    assert result.status_code == 200 and result.webhook_endpoint_id == created.id
    event = client.webhooks.unwrap(receiver.got[0].body, receiver.got[0].headers, secret=created.signing_secret)
    assert event.type == "fine_tuning.job.failed"
    assert client.webhooks.delete(created.id).deleted is True
    assert list(client.webhooks.list()) == []
