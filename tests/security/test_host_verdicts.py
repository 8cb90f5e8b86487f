"""check_custom_host keeps the verdict that let a URL through for a few seconds (tunegate/hosts.py): a
client's custom host is parsed and resolved once, not on every request. What must not change: a refusal
is never remembered, a verdict holds only for the same allowed list, and the connect-time guard still
stops a name that rebinds to a refused address while its verdict is kept."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, StandIn
from tunegate import hosts
from tunegate.errors import InvalidRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every DNS lookup the request-time check makes; each name answers a public address."""
    asked: list[str] = []

    async def public(host: str, port: int) -> list[Address]:
        asked.append(host)
        return [ipaddress.ip_address("93.184.216.34")]

    monkeypatch.setattr(hosts, "lookup", public)
    monkeypatch.setattr(hosts, "_verdicts", {})
    return asked


async def test_a_passing_verdict_is_kept_for_a_while(lookups: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://models.example.com/v1/"
    assert await hosts.check_custom_host(url, []) == "https://models.example.com/v1"
    assert await hosts.check_custom_host(url, []) == "https://models.example.com/v1"
    assert lookups == ["models.example.com"]  # resolved once
    monkeypatch.setattr(hosts, "VERDICT_SECONDS", 0.0)  # kept no longer: checked (and resolved) again
    assert await hosts.check_custom_host(url, []) == "https://models.example.com/v1"
    assert lookups == ["models.example.com", "models.example.com"]


async def test_a_verdict_holds_for_its_allowed_list_only(lookups: list[str]) -> None:
    assert await hosts.check_custom_host("http://127.0.0.1:9/v1", ["127.0.0.1"]) == "http://127.0.0.1:9/v1"
    with pytest.raises(InvalidRequest) as refused:  # the same URL under a list that does not name loopback
        await hosts.check_custom_host("http://127.0.0.1:9/v1", [])
    assert refused.value.code == "custom_host_not_allowed"


async def test_a_refusal_is_never_kept(lookups: list[str]) -> None:
    for param in ("x-portkey-custom-host", "x-portkey-azure-endpoint"):
        with pytest.raises(InvalidRequest) as refused:
            await hosts.check_custom_host("http://169.254.169.254/latest", [], param=param, what=param)
        assert refused.value.param == param  # each refusal worded for its own header
    assert hosts._verdicts == {}


def test_the_connect_time_guard_still_runs_while_a_verdict_is_kept(tmp_path: Path, lookups: list[str]) -> None:
    # 'localhost' answers a public address at check time (kept as a pass), then loopback when the HTTP
    # client connects, which this operator's empty list refuses: every request is refused, none sent.
    standin = StandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "d", allowed_custom_hosts=[]) as gw:
        custom = f"http://localhost:{urlsplit(upstream.url).port}{standin.prefix}"
        for _ in range(3):
            resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers={
                "x-portkey-provider": "openai", "x-portkey-custom-host": custom, "Authorization": "Bearer sk-1"})
            assert resp.status_code == 400 and resp.json()["error"]["code"] == "custom_host_not_allowed", resp.text
    assert lookups == ["localhost"]  # the request-time verdict was kept...
    assert not standin.requests  # ...and the connect-time check refused each connection all the same


async def test_address_literals_are_judged_once_per_upstream_and_refused_every_time() -> None:
    from tunegate.config import RetryPolicy, Timeouts
    from tunegate.upstream import CallPolicy, Upstream

    upstream = Upstream(["127.0.0.1"])
    policy = CallPolicy(timeouts=Timeouts(), retry=RetryPolicy(attempts=1), client_host="10.0.0.8")
    try:
        for _ in range(2):  # the kept "no" refuses as the first one did
            with pytest.raises(InvalidRequest) as refused:
                upstream._session_for("http://10.0.0.8:8080/v1/files", policy)
            assert refused.value.code == "custom_host_not_allowed"
        assert upstream._session_for("http://127.0.0.1:9/v1", policy) is upstream.client_session("http")
        assert upstream._literals == {("10.0.0.8", 8080, "http"): False, ("127.0.0.1", 9, "http"): True}
        with pytest.raises(InvalidRequest):  # another Upstream has its own list: nothing carried over
            Upstream([])._session_for("http://127.0.0.1:9/v1", CallPolicy(
                timeouts=Timeouts(), retry=RetryPolicy(attempts=1), client_host="127.0.0.1"))
    finally:
        await upstream.close()
