"""A client-chosen URL that is not a URL is a 400 naming it, wherever it comes in: x-portkey-custom-host
(with the caller's own key, or a stored connection's), a webhook's url, a Vertex credential's token_uri.
Each of these was a 500 (urlsplit's or the IDNA codec's error, or yarl's on a port out of range), or,
for a webhook, stored and then a 500 on its first delivery. And x-portkey-config's retry and
timeout values that are not numbers of the right kind are a 400, not read as something else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests.gateway import Gateway
from tests.test_keys_and_connections import cli

BAD_URLS = {
    "unclosed IPv6 bracket": "http://[::1",
    "not an IPv6 address": "http://[abc]/v1",
    "empty label": "http://a..b/v1",
    "only dots": "http://.../v1",
    "a 64-character label": "http://" + "a" * 64 + ".com/v1",
    "port out of range": "http://127.0.0.1:99999/v1",
    "port not a number": "http://127.0.0.1:abc/v1",
    "negative port": "http://127.0.0.1:-1/v1",
    "port zero": "http://127.0.0.1:0/v1",
    "a NUL": "http://127.0.0.1:9/v1\x00x",
    "a line break": "http://127.0.0.1:9/v1\r\nX-Injected: 1",
    "a space": "http://127.0.0.1:9/v 1",
    "too long": "http://example.com/" + "a" * 3000,
}


def _is_400(r: requests.Response, param: str) -> None:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error
    assert error["code"] in ("invalid_custom_host", "invalid_url"), error  # the webhook route checks length first


@pytest.mark.parametrize("name", sorted(BAD_URLS))
def test_a_bad_custom_host_is_a_400(gateway: Gateway, name: str) -> None:
    url = BAD_URLS[name]
    if "\r" in url or "\x00" in url:  # not sendable in a header: the same URL as a webhook's url below
        pytest.skip("not a header value")
    r = requests.get(gateway.url + "/v1/fine_tuning/jobs", timeout=20, headers={
        "x-portkey-provider": "openai", "Authorization": "Bearer sk-x", "x-portkey-custom-host": url})
    _is_400(r, "x-portkey-custom-host")


@pytest.mark.parametrize("name", sorted(BAD_URLS))
def test_a_bad_webhook_url_is_refused_before_it_is_stored(gateway: Gateway, name: str) -> None:
    r = requests.post(gateway.url + "/v1/webhooks", json={"url": BAD_URLS[name]}, timeout=20)
    _is_400(r, "url")
    assert requests.get(gateway.url + "/v1/webhooks", timeout=20).json()["data"] == []


def test_a_bad_custom_host_beside_a_stored_connection_is_a_400(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cli(data, "connections", "add", "team", "--provider", "openai", "--base-url", "https://api.openai.com/v1",
        "--api-key", "sk-stored-000000")
    with Gateway(data) as gw:
        for url in ("http://[::1", "http://127.0.0.1:99999/v1"):
            r = requests.get(gw.url + "/v1/fine_tuning/jobs", timeout=20,
                             headers={"x-portkey-virtual-key": "team", "x-portkey-custom-host": url})
            _is_400(r, "x-portkey-custom-host")


def test_a_bad_token_uri_is_a_400(gateway: Gateway) -> None:
    account = {"type": "service_account", "client_email": "a@p.iam.gserviceaccount.com", "private_key": "x",
               "token_uri": "http://[::1"}
    r = requests.get(gateway.url + "/v1/fine_tuning/jobs", timeout=20, headers={
        "x-portkey-provider": "vertex-ai", "x-portkey-vertex-project-id": "p", "x-portkey-vertex-region": "us-central1",
        "x-portkey-vertex-service-account-json": json.dumps(account)})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_custom_host"


@pytest.mark.parametrize("config", [
    {"retry": {"attempts": "3"}}, {"retry": {"attempts": -5}}, {"retry": {"attempts": 1.9}},
    {"retry": {"attempts": True}}, {"retry": {"attempts": None}}, {"request_timeout": 0},
    {"request_timeout": -1}, {"request_timeout": False},
])
def test_config_values_of_the_wrong_kind_are_a_400(gateway: Gateway, config: dict) -> None:
    r = requests.get(gateway.url + "/v1/fine_tuning/jobs", timeout=20, headers={
        "x-portkey-provider": "openai", "Authorization": "Bearer sk-x", "x-portkey-config": json.dumps(config)})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] in ("x-portkey-config", "x-portkey-request-timeout")
