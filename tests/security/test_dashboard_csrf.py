"""The dashboard's login (finding 21): posts from another site are refused (login CSRF), ``?key=`` links
log nobody in, the session cookie can be marked Secure behind a TLS proxy. Over the real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.gateway import Gateway


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[Gateway, str]]:
    with Gateway(tmp_path / "d") as gw:
        key = gw.with_store(lambda store: store.create_key("ui", ["*"]))[1]
        yield gw, key


def login(gw: Gateway, key: str, **headers: str) -> requests.Response:
    return requests.post(gw.url + "/ui/login", data={"key": key, "next": "/ui/files"}, headers=headers,
                         allow_redirects=False, timeout=10)


@pytest.mark.parametrize("headers", [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                                     {"Origin": "https://attacker.example"}, {"Origin": "null"}])
def test_a_login_posted_from_another_site_is_refused(keyed: tuple[Gateway, str], headers: dict[str, str]) -> None:
    gw, key = keyed
    r = login(gw, key, **headers)
    assert r.status_code == 403 and "set-cookie" not in r.headers


@pytest.mark.parametrize("headers", [{"Sec-Fetch-Site": "same-origin"}, {}])
def test_a_login_from_the_gateways_own_page_works(keyed: tuple[Gateway, str], headers: dict[str, str]) -> None:
    gw, key = keyed
    own = {"Origin": gw.url} if not headers else headers
    r = login(gw, key, **own)
    assert r.status_code == 303 and r.headers["location"] == "/ui/files" and "tunegate_ui=" in r.headers["set-cookie"]


def test_logout_from_another_site_is_refused(keyed: tuple[Gateway, str]) -> None:
    gw, key = keyed
    session = requests.Session()
    assert session.post(gw.url + "/ui/login", data={"key": key}, allow_redirects=False, timeout=10).status_code == 303
    r = session.post(gw.url + "/ui/logout", headers={"Sec-Fetch-Site": "cross-site"}, allow_redirects=False,
                     timeout=10)
    assert r.status_code == 403 and "set-cookie" not in r.headers
    assert session.get(gw.url + "/ui/files", allow_redirects=False, timeout=10).status_code == 200  # still in


def test_a_key_in_a_link_logs_nobody_in(keyed: tuple[Gateway, str]) -> None:
    gw, key = keyed
    r = requests.get(gw.url + f"/ui/jobs?key={key}", allow_redirects=False, timeout=10)
    assert r.status_code == 400 and "set-cookie" not in r.headers
    assert key not in r.text


def test_a_large_or_foreign_login_body_is_a_400(keyed: tuple[Gateway, str]) -> None:
    gw, key = keyed
    big = requests.post(gw.url + "/ui/login", data={"key": key, "pad": "x" * 100_000}, allow_redirects=False,
                        timeout=10)
    assert big.status_code == 400 and "set-cookie" not in big.headers
    multipart = requests.post(gw.url + "/ui/login", files={"key": (None, key)}, allow_redirects=False, timeout=10)
    assert multipart.status_code == 400


def test_the_secure_flag_behind_a_tls_proxy(tmp_path: Path) -> None:
    for setting, secure in ((None, False), (True, True)):
        with Gateway(tmp_path / f"d{setting}", ui_secure_cookie=setting) as gw:
            key = gw.with_store(lambda store: store.create_key("ui", ["*"]))[1]
            cookie = login(gw, key).headers["set-cookie"]
            assert ("Secure" in cookie) is secure, cookie
