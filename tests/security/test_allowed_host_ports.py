"""The operator's allowed_custom_hosts (and a connection's allowed_client_hosts) may narrow a host to a
port (``llm.internal:8443``) or to a scheme and port (``https://llm.internal:8443``), and both the
request-time check and the connect-time guard honour it: a client cannot use an allowed entry to reach
another service (another port, or the same port in plain HTTP) on that host. Before, such an entry was
compared as a whole string with the URL's hostname and so allowed nothing at all, which left an
operator only the bare hostname, i.e. every port of it. Bare names, addresses and ranges still allow
every port and both schemes (Portkey's reading, the default list's loopback included)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, StandIn
from tests.test_keys_and_connections import cli
from tunegate import hosts
from tunegate.errors import InvalidRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@pytest.fixture(autouse=True)
def private_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """No kept verdicts; every name the request-time check looks up answers a private address."""
    async def private(host: str, port: int) -> list[Address]:
        return [ipaddress.ip_address("10.9.9.9")]

    monkeypatch.setattr(hosts, "_verdicts", {})
    monkeypatch.setattr(hosts, "lookup", private)


async def allowed(url: str, entries: list[str]) -> bool:
    try:
        await hosts.check_custom_host(url, entries)
    except InvalidRequest as exc:
        assert exc.code == "custom_host_not_allowed", exc
        return False
    return True


@pytest.mark.parametrize(("entry", "url", "expected"), [
    # a port: that port only, either scheme
    ("10.1.2.3:8443", "https://10.1.2.3:8443/v1", True),
    ("10.1.2.3:8443", "http://10.1.2.3:8443/v1", True),
    ("10.1.2.3:8443", "http://10.1.2.3:6379/", False),
    ("10.1.2.3:8443", "https://10.1.2.3/v1", False),  # 443
    ("[fd00::5]:8443", "https://[fd00::5]:8443/v1", True),
    ("[fd00::5]:8443", "https://[fd00::5]:22/v1", False),
    ("localhost:8443", "http://localhost:8443/v1", True),
    ("localhost:8443", "http://localhost:2375/v1", False),
    # a scheme and port
    ("https://10.1.2.3:8443", "https://10.1.2.3:8443/v1", True),
    ("https://10.1.2.3:8443/", "https://10.1.2.3:8443/v1", True),
    ("https://10.1.2.3:8443", "http://10.1.2.3:8443/v1", False),
    ("https://10.1.2.3:8443", "https://10.1.2.3:9443/v1", False),
    ("HTTPS://LLM.Internal:8443", "https://llm.internal:8443/v1", True),
    # a URL without a port: its scheme's own
    ("https://10.1.2.3", "https://10.1.2.3/v1", True),
    ("https://10.1.2.3", "https://10.1.2.3:443/v1", True),
    ("https://10.1.2.3", "https://10.1.2.3:8443/v1", False),
    ("https://10.1.2.3", "http://10.1.2.3/v1", False),
    ("http://10.1.2.3", "http://10.1.2.3:80/v1", True),
    # bare entries, as before: every port, both schemes
    ("10.1.2.3", "http://10.1.2.3:6379/", True),
    ("10.0.0.0/8", "https://10.1.2.3:8443/v1", True),
    ("fd00::/8", "http://[fd00::5]:22/", True),
    # not an entry: allows nothing
    ("https://10.1.2.3:8443/v1", "https://10.1.2.3:8443/v1", False),
    ("https://user@10.1.2.3:8443", "https://10.1.2.3:8443/v1", False),
    ("10.0.0.0/8:8443", "https://10.1.2.3:8443/v1", False),
    ("10.1.2.3:0", "https://10.1.2.3:8443/v1", False),
    ("https://10.1.2.3:0", "https://10.1.2.3/v1", False),
    ("10.1.2.3:99999", "https://10.1.2.3:8443/v1", False),
    ("10.1.2.3:", "https://10.1.2.3:8443/v1", False),
    ("ftp://10.1.2.3:8443", "https://10.1.2.3:8443/v1", False),
])
async def test_an_entry_allows_what_it_names_and_no_more(entry: str, url: str, expected: bool) -> None:
    assert await allowed(url, [entry]) is expected


async def test_a_listed_name_is_judged_on_its_port_too() -> None:
    assert await allowed("https://llm.internal:8443/v1", ["llm.internal:8443"])
    assert not await allowed("http://llm.internal:6379/", ["llm.internal:8443"])
    assert await allowed("http://llm.internal:6379/", ["llm.internal"])  # a bare name: every port


async def test_a_metadata_name_listed_for_one_port_is_refused_on_another() -> None:
    assert not await allowed("http://metadata.google.internal/", ["metadata.google.internal:8080"])


def test_invalid_entries_are_named() -> None:
    assert hosts.invalid_entries(["localhost", "10.0.0.0/8", "https://a.internal:8443", "a.internal:x",
                                  "https://a.internal/path", "a b"]) == [
        "a.internal:x", "https://a.internal/path", "a b"]


async def test_the_connect_time_guard_honours_the_port_and_the_scheme() -> None:
    # aiohttp asks the resolver with the port it connects to; the scheme is the session's.
    for scheme in ("http", "https", None):
        resolver = hosts.GuardedResolver(["localhost:8443"], scheme)
        assert await resolver.resolve("localhost", 8443)
        with pytest.raises(hosts.HostNotAllowed):
            await resolver.resolve("localhost", 6379)
        await resolver.close()
    https_only = hosts.GuardedResolver(["https://localhost:8443"], "https")
    plain = hosts.GuardedResolver(["https://localhost:8443"], "http")
    unknown = hosts.GuardedResolver(["https://localhost:8443"])
    try:
        assert await https_only.resolve("localhost", 8443)
        for resolver in (plain, unknown):
            with pytest.raises(hosts.HostNotAllowed):
                await resolver.resolve("localhost", 8443)
        with pytest.raises(hosts.HostNotAllowed):
            await https_only.resolve("localhost", 9443)
    finally:
        for resolver in (https_only, plain, unknown):
            await resolver.close()


async def test_address_literals_are_judged_on_port_and_scheme_before_the_connect() -> None:
    from tunegate.config import RetryPolicy, Timeouts
    from tunegate.upstream import CallPolicy, Upstream

    upstream = Upstream(["https://10.1.2.3:8443", "127.0.0.1:9"])
    policy = CallPolicy(timeouts=Timeouts(), retry=RetryPolicy(attempts=1))
    try:
        assert upstream._session_for("https://10.1.2.3:8443/v1", policy) is upstream.client_session("https")
        assert upstream._session_for("http://127.0.0.1:9/v1", policy) is upstream.client_session("http")
        assert upstream.client_session("http") is not upstream.client_session("https")
        for url in ("http://10.1.2.3:8443/v1", "https://10.1.2.3:9443/v1", "https://10.1.2.3/v1",
                    "http://127.0.0.1:10/v1"):
            with pytest.raises(Exception) as refused:
                upstream._session_for(url, policy)
            assert getattr(refused.value, "code", None) == "upstream_host_not_allowed", url
        # An upstream's answer can name any scheme: they share one session, not one each.
        assert upstream.client_session("foo") is upstream.client_session("bar")
    finally:
        await upstream.close()


def _two_stand_ins() -> tuple[StandIn, StandIn, ServerThread, ServerThread]:
    listed, other = StandIn(), StandIn()
    return listed, other, ServerThread(listed.app()), ServerThread(other.app())


def _get(gw: Gateway, custom: str, **extra: str) -> requests.Response:
    return requests.get(gw.url + "/v1/fine_tuning/jobs", timeout=30, headers={
        "x-portkey-provider": "openai", "x-portkey-custom-host": custom,
        "Authorization": f"Bearer {StandIn.api_key}", **extra})


def test_a_port_entry_serves_that_port_and_refuses_another_on_the_same_host(tmp_path: Path) -> None:
    listed, other, a, b = _two_stand_ins()
    with a, b, Gateway(tmp_path / "d", allowed_custom_hosts=[f"127.0.0.1:{a.port}"]) as gw:
        assert _get(gw, a.url).status_code == 200
        refused = _get(gw, b.url)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "custom_host_not_allowed"
    assert listed.requests and not other.requests


def test_a_name_listed_for_one_port_is_refused_on_another_at_connect_time(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # 'localhost' answers a public address when the request arrives (so the request-time check passes),
    # then loopback when the HTTP client connects: the connect-time guard alone decides, on the port.
    async def public(host: str, port: int) -> list[Address]:
        return [ipaddress.ip_address("93.184.216.34")]

    listed, other, a, b = _two_stand_ins()
    with a, b, Gateway(tmp_path / "d", allowed_custom_hosts=[f"localhost:{a.port}"]) as gw:
        monkeypatch.setattr(hosts, "lookup", public)
        assert _get(gw, f"http://localhost:{a.port}").status_code == 200
        refused = _get(gw, f"http://localhost:{b.port}")
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "custom_host_not_allowed"
    assert listed.requests and not other.requests


def test_a_scheme_entry_refuses_plain_http_to_that_port(tmp_path: Path) -> None:
    listed, _other, a, b = _two_stand_ins()
    with a, b, Gateway(tmp_path / "d", allowed_custom_hosts=[f"https://127.0.0.1:{a.port}"]) as gw:
        refused = _get(gw, a.url)  # http:// to the https-only entry
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "custom_host_not_allowed"
    assert not listed.requests


def test_a_connection_lists_a_host_for_one_port_only(tmp_path: Path) -> None:
    """A stored key follows x-portkey-custom-host only to what the connection lists: a port entry there
    allows that port, not another service on the same host."""
    data = tmp_path / "data"
    listed, other, a, b = _two_stand_ins()
    with a, b:
        cli(data, "connections", "add", "team", "--provider", "openai", "--base-url", "https://api.openai.com/v1",
            "--api-key", StandIn.api_key, "--option", f'allowed_client_hosts=["127.0.0.1:{a.port}"]')
        with Gateway(data) as gw:
            def get(url: str) -> requests.Response:
                return requests.get(gw.url + "/v1/fine_tuning/jobs", timeout=30, headers={
                    "x-portkey-virtual-key": "team", "x-portkey-custom-host": url})

            served = get(a.url)
            assert served.status_code == 200, served.text
            refused = get(b.url)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["code"] == "custom_host_not_allowed"
    assert listed.requests and not other.requests


@pytest.mark.parametrize(("listed", "url", "expected"), [
    (["llm.internal"], "http://llm.internal:6379/", True),  # a bare name, as before: every port
    (["llm.internal:8443"], "https://llm.internal:8443/v1", True),
    (["llm.internal:8443"], "http://llm.internal:6379/", False),
    (["https://llm.internal"], "http://llm.internal/v1", False),
    (["https://llm.internal"], "https://llm.internal/v1", True),
    ([8443, None], "https://llm.internal:8443/v1", False),  # a stored list of odd JSON values
])
def test_url_listed(listed: list[Any], url: str, expected: bool) -> None:
    assert hosts.url_listed(urlsplit(url), listed) is expected


async def test_an_entry_that_allows_nothing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    from tunegate.upstream import Upstream

    with caplog.at_level("WARNING", logger="tunegate"):
        await Upstream(["localhost", "https://llm.internal:8443/v1", "10.1.2.3:8443"]).close()
    assert "'https://llm.internal:8443/v1'" in caplog.text and "10.1.2.3:8443" not in caplog.text
