"""Three paths around the ownership and address rules (docs/security.md), each found open by a review:

- an object of the open era (no owner, no connection) is reached only with a provider key the caller
  may use, never by adding a junk ``Authorization`` header next to a tunegate key that may not bring
  provider keys (the stored connection's secret went upstream);
- once a client chose a host, a URL that host hands back is held to the address check even when it
  names a host the operator trusts (an internal base URL, on any port);
- IPv6 addresses that carry an IPv4 address (NAT64, SIIT, 6to4, IPv4-compatible) are judged by it."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import requests
from aiohttp import web

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, free_port
from tunegate.config import ProviderSettings
from tunegate.hosts import address_allowed
from tunegate.store import Store


def test_a_junk_bearer_does_not_open_an_orphan_through_stored_secrets(tmp_path: Path) -> None:
    seen: list[str | None] = []

    async def job(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"id": "ftjob-orphan1", "object": "fine_tuning.job", "status": "running"})

    app = web.Application()
    app.router.add_get("/v1/fine_tuning/jobs/{id}", job)
    with ServerThread(app) as up, Gateway(tmp_path / "data") as gw:
        async def setup(store: Store) -> str:
            await store.record("job", "ftjob-orphan1", "openai", None, None, "running", None)  # the open era
            await store.add_connection("team-oa", "openai", {"api_key": "sk-team-secret"}, up.url + "/v1", {})
            _, bob = await store.create_key("bob", ["team-oa"])  # may not bring provider keys
            return str(bob)

        bob = gw.with_store(setup)
        for extra in ({}, {"Authorization": "Bearer junk"}):
            r = requests.get(gw.url + "/v1/fine_tuning/jobs/ftjob-orphan1", timeout=20,
                             headers={"x-portkey-api-key": bob, **extra})
            assert r.status_code == 404, (extra, r.text)
    assert seen == []


def test_a_url_handed_back_by_a_clients_host_is_checked_even_for_an_operator_host(tmp_path: Path) -> None:
    """The operator's Fireworks base URL is an internal host (127.0.0.2, not in allowed_custom_hosts). A
    client's own host (127.0.0.1, allowed) answers a download with a 'signed URL' to another port of it."""
    hits: list[str] = []

    async def internal(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="INTERNAL")

    inner_app = web.Application()
    inner_app.router.add_route("*", "/{tail:.*}", internal)
    inner_port = free_port()

    async def attacker(request: web.Request) -> web.Response:
        return web.json_response({"filenameToSignedUrls": {"a.jsonl": f"http://127.0.0.2:{inner_port}/admin"}})

    attacker_app = web.Application()
    attacker_app.router.add_route("*", "/{tail:.*}", attacker)
    with ServerThread(inner_app, port=inner_port, host="127.0.0.2"), ServerThread(attacker_app) as theirs:
        providers = {"fireworks-ai": ProviderSettings(base_url="http://127.0.0.2:1/v1")}
        with Gateway(tmp_path / "data", providers=providers) as gw:
            r = requests.get(gw.url + "/v1/files/ds-1/content", timeout=20, headers={
                "x-portkey-provider": "fireworks-ai", "Authorization": "Bearer fw-own",
                "x-portkey-fireworks-account-id": "me", "x-portkey-custom-host": theirs.url + "/v1"})
    assert r.status_code == 502 and "INTERNAL" not in r.text, r.text
    assert hits == []


@pytest.mark.parametrize("address, public", [
    ("64:ff9b::a9fe:a9fe", False),  # NAT64 of the metadata address
    ("64:ff9b::a00:5", False),  # NAT64 of 10.0.0.5
    ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
    ("::ffff:0:a9fe:a9fe", False),  # SIIT
    ("::a9fe:a9fe", False),  # IPv4-compatible
    ("2002:a9fe:a9fe::1", False),  # 6to4 of the metadata address
    ("2002:808:808::1", True),
    ("64:ff9b:1::a00:5", False),  # local-use NAT64
    ("fec0::1", False),  # site-local
    ("::ffff:10.0.0.1", False),
    ("2001:4860:4860::8888", True),
])
def test_ipv6_carrying_ipv4_is_judged_by_the_ipv4(address: str, public: bool) -> None:
    assert address_allowed(address, ipaddress.ip_address(address), []) is public


def test_a_nat64_custom_host_is_refused(gateway: Gateway) -> None:
    r = requests.get(gateway.url + "/v1/fine_tuning/jobs", timeout=20, headers={
        "x-portkey-provider": "openai", "Authorization": "Bearer sk-x",
        "x-portkey-custom-host": "http://[64:ff9b::a9fe:a9fe]/v1"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "custom_host_not_allowed", r.text
