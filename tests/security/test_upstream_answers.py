"""Issue 17, findings 10, 15, 16 and 23: what an upstream answers is bounded and redacted, and malformed
input is a 400, never a 500. Driven through a real `tunegate serve` process (memory) or the in-process
gateway on real sockets."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from tests.gateway import Gateway
from tests.process import PeakRSS, ServeProcess
from tests.standins.openai_like import ServerThread

SECRET = "sk-caller-secret-123456"


def _liar() -> web.Application:
    """An upstream that lies: huge answers, a gzip bomb, secrets echoed in every error field."""
    bomb = gzip.compress(b" " * (512 * 1024 * 1024), compresslevel=9)  # ~0.5 MiB on the wire

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        chunk = b" " * (1024 * 1024)
        for _ in range(200):  # 200 MiB, no Content-Length
            await resp.write(chunk)
        return resp

    async def gz(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    async def echo(request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return web.json_response({"error": {"message": f"bad key {key}", "type": f"type-{key}", "code": f"code-{key}"}},
                                 status=429, headers={"Retry-After": f"{key}\tinjected"})

    async def dated(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "slow down"}}, status=429,
                                 headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})

    app = web.Application()
    app.router.add_get("/huge/fine_tuning/jobs", huge)
    app.router.add_get("/gzip/fine_tuning/jobs", gz)
    app.router.add_get("/echo/fine_tuning/jobs", echo)
    app.router.add_get("/dated/fine_tuning/jobs", dated)
    return app


@pytest.fixture(scope="module")
def liar() -> Iterator[str]:
    with ServerThread(_liar()) as server:
        yield server.url


def _headers(host: str) -> dict[str, str]:
    return {"x-portkey-provider": "openai", "Authorization": f"Bearer {SECRET}", "x-portkey-custom-host": host,
            "x-portkey-config": json.dumps({"retry": {"attempts": 0}})}


def test_huge_and_compressed_answers_are_cut_off_with_little_memory(tmp_path: Path, liar: str) -> None:
    """Finding 10: 200 MiB of answer, and 0.5 MiB of gzip that expands to 512 MiB, each cost the gateway
    at most its 32 MiB read bound; /healthz answers meanwhile."""
    with ServeProcess(tmp_path / "d") as gw:
        assert gw.proc is not None
        with PeakRSS(gw.proc.pid) as rss:
            for path in ("huge", "gzip"):
                r = requests.get(gw.url + "/v1/fine_tuning/jobs", headers=_headers(f"{liar}/{path}"), timeout=60)
                assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_answer_too_large", r.text
            assert requests.get(gw.url + "/healthz", timeout=5).status_code == 200
        growth_mib = (rss.peak - rss.start) / 1024
        print(f"\nupstream answers: RSS start {rss.start / 1024:.1f} MiB, peak {rss.peak / 1024:.1f} MiB "
              f"(+{growth_mib:.1f} MiB)")
        assert growth_mib < 80  # the bound (32 MiB) plus the parts held while it fills; was +2 GB


def test_every_error_field_is_redacted(gateway: Gateway, liar: str) -> None:
    """Finding 15: the secret echoed in message, type, code and Retry-After never reaches the client."""
    r = requests.get(gateway.url + "/v1/fine_tuning/jobs", headers=_headers(f"{liar}/echo"), timeout=20)
    assert r.status_code == 429
    assert SECRET not in r.text and SECRET not in json.dumps(dict(r.headers))
    assert "Retry-After" not in r.headers or r.headers["Retry-After"].isdigit()
    dated = requests.get(gateway.url + "/v1/fine_tuning/jobs", headers=_headers(f"{liar}/dated"), timeout=20)
    assert dated.status_code == 429 and dated.headers["Retry-After"] == "Wed, 21 Oct 2099 07:28:00 GMT"  # re-written


MALFORMED: dict[str, dict[str, Any]] = {
    "config provider not a string": {"headers": {"x-portkey-config": json.dumps({"provider": 123})}},
    "config virtual_key an object": {"headers": {"x-portkey-config": json.dumps({"virtual_key": {"a": 1}})}},
    "config retry a list": {"headers": {"x-portkey-config": json.dumps({"provider": "openai", "retry": [1]})}},
    "config retry codes not codes": {"headers": {"x-portkey-config": json.dumps(
        {"provider": "openai", "retry": {"attempts": 1, "on_status_codes": ["x", None]}})}},
    "config timeout an object": {"headers": {"x-portkey-config": json.dumps(
        {"provider": "openai", "request_timeout": {"ms": 1}})}},
    "timeout nan": {"headers": {"x-portkey-provider": "openai", "x-portkey-request-timeout": "nan"}},
    "timeout inf": {"headers": {"x-portkey-provider": "openai", "x-portkey-request-timeout": "inf"}},
    "timeout huge": {"headers": {"x-portkey-provider": "openai", "x-portkey-request-timeout": "1e308"}},
    "limit beyond 64 bits": {"headers": {"x-portkey-provider": "openai"}, "query": "?limit=99999999999999999999999"},
    "limit negative": {"headers": {"x-portkey-provider": "openai"}, "query": "?limit=-1"},
    "after too long": {"headers": {"x-portkey-provider": "openai"}, "query": "?after=" + "a" * 600},
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input_is_a_400(gateway: Gateway, name: str) -> None:
    """Finding 16: each of these was a 500 (or reached the upstream) before."""
    case = MALFORMED[name]
    r = requests.get(gateway.url + "/v1/fine_tuning/jobs" + case.get("query", ""),
                     headers={"Authorization": "Bearer sk-x", **case["headers"]}, timeout=20)
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_a_limit_beyond_64_bits_on_the_gateways_own_store(gateway: Gateway) -> None:
    r = requests.get(gateway.url + "/v1/files?limit=99999999999999999999999",
                     headers={"x-portkey-provider": "tunegate"}, timeout=20)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


def test_an_upstream_redirect_is_a_502(gateway: Gateway) -> None:
    app = web.Application()

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "http://169.254.169.254/"})

    app.router.add_get("/v1/fine_tuning/jobs", moved)
    with ServerThread(app) as server:
        r = requests.get(gateway.url + "/v1/fine_tuning/jobs", headers=_headers(server.url + "/v1"), timeout=20)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_redirect"


def test_connection_names_are_not_enumerable(gateway: Gateway) -> None:
    """Finding 23: a key hears the same answer for a connection that exists but is not granted and for one
    that does not exist."""

    async def work(store: Any) -> str:
        await store.add_connection("secret-team", "openai", {"api_key": "sk-x"}, None, {})
        _k, full = await store.create_key("outsider", ["mine"])
        return str(full)

    key = gateway.with_store(work)
    answers = []
    for name in ("secret-team", "no-such-connection"):
        r = requests.get(gateway.url + "/v1/fine_tuning/jobs", timeout=20, headers={
            "x-portkey-api-key": key, "x-portkey-provider": "openai", "x-portkey-virtual-key": name})
        answers.append((r.status_code, r.json()["error"]["code"], r.json()["error"]["message"].replace(name, "N")))
    assert answers[0] == answers[1] and answers[0][0] == 403


def test_a_providers_cookie_is_never_sent_back(gateway: Gateway) -> None:
    """The gateway's upstream sessions are shared by every caller, so a cookie one answer sets (a
    provider's session or load-balancer cookie, or one a caller's own host plants) would be sent on the
    next caller's request to that host. The sessions keep no cookies."""
    seen: list[str | None] = []
    app = web.Application()

    async def jobs(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        resp = web.json_response({"object": "list", "data": [], "has_more": False})
        resp.set_cookie("session", "caller-one", path="/")
        return resp

    app.router.add_get("/v1/fine_tuning/jobs", jobs)
    with ServerThread(app) as server:
        host = server.url.replace("127.0.0.1", "localhost") + "/v1"  # a name: a jar refuses cookies from an IP
        for key in ("sk-caller-one", "sk-caller-two", "sk-caller-two"):
            r = requests.get(gateway.url + "/v1/fine_tuning/jobs", timeout=20, headers={
                "x-portkey-provider": "openai", "Authorization": f"Bearer {key}", "x-portkey-custom-host": host})
            assert r.status_code == 200, r.text
    assert seen == [None, None, None]
