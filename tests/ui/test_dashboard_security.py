"""The dashboard's security review: ownership on every page (docs/security.md rule 4, the same rule as the
API), the security headers on every ``/ui`` answer (errors, redirects, JSON and static files included),
no cross-site trigger of the validation that rewrites a file's shown report, and escaping of what clients
and providers send. Over the real server with ``requests``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread
from tests.ui.conftest import EXAMPLES
from tests.ui.standin import MetricsStandIn
from tunegate.ui import data as ui_data

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@dataclass
class Two:
    gateway: Gateway
    alice: str  # granted connection "oa"
    alice_id: str
    bob: str  # granted connection "ob"
    bob_id: str


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Two]:
    standin = MetricsStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        async def setup(store: Any) -> tuple[str, str, str, str]:
            await store.add_connection("oa", "openai", {"api_key": standin.api_key}, base_url=upstream.url)
            await store.add_connection("ob", "openai", {"api_key": standin.api_key}, base_url=upstream.url)
            alice, alice_full = await store.create_key("alice", ["oa"])
            bob, bob_full = await store.create_key("bob", ["ob"])

            def job(status: str, **extra: Any) -> dict[str, Any]:
                return {"object": "fine_tuning.job", "status": status, "model": "gpt-4o-mini", "created_at": 1_700_000_000,
                        **extra}

            rec = store.record
            await rec("job", "ftjob-alice0000000000000000", "openai", "oa", alice.id, "running",
                      job("running", id="ftjob-alice0000000000000000"), claim=True)
            await rec("job", "ftjob-bob00000000000000000000", "openai", "ob", bob.id, "running",
                      job("running", id="ftjob-bob00000000000000000000"), claim=True)
            await rec("job", "ftjob-sharedoa0000000000000000", "openai", "oa", None, "running",
                      job("running", id="ftjob-sharedoa0000000000000000"), claim=False)
            # Unowned, of a connection Alice is not granted; and one from the open era (no connection).
            await rec("job", "ftjob-sharedob0000000000000000", "openai", "ob", None, "running",
                      job("running", id="ftjob-sharedob0000000000000000"), claim=False)
            await rec("job", "ftjob-openera0000000000000000", "openai", None, None, "running",
                      job("running", id="ftjob-openera0000000000000000"), claim=False)
            await rec("job", "mistral-job-of-ob", "mistral", "ob", None, "running",
                      job("running", id="mistral-job-of-ob"), claim=False)

            def file(purpose: str, **extra: Any) -> dict[str, Any]:
                return {"object": "file", "purpose": purpose, "bytes": 10, "created_at": 1_700_000_000,
                        "filename": "x.jsonl", **extra}

            await rec("file", "file-sharedoa", "openai", "oa", None, "processed",
                      file("fine-tune", id="file-sharedoa"), claim=False)
            await rec("file", "file-sharedob", "openai", "ob", None, "processed",
                      file("fine-tune", id="file-sharedob"), claim=False)
            await rec("file", "file-openera", "openai", None, None, "processed",
                      file("fine-tune", id="file-openera"), claim=False)
            await rec("file", "file-result", "openai", "oa", None, "processed",
                      file("fine-tune-results", id="file-result"), claim=False)
            return alice.id, alice_full, bob.id, bob_full

        alice_id, alice, bob_id, bob = gw.with_store(setup)
        yield Two(gw, alice, alice_id, bob, bob_id)


def session(gw: Gateway, key: str) -> requests.Session:
    s = requests.Session()
    r = s.post(gw.url + "/ui/login", data={"key": key, "next": "/ui/jobs"}, allow_redirects=False, timeout=30)
    assert r.status_code == 303
    return s


# ---- ownership -----------------------------------------------------------------------------------


def test_a_key_sees_only_its_own_and_unowned_objects_of_its_connections(two: Two) -> None:
    url = two.gateway.url
    alice = session(two.gateway, two.alice)
    jobs = alice.get(url + "/ui/jobs", timeout=30).text
    assert "ftjob-alice0000000000000000" in jobs and "ftjob-sharedoa0000000000000000" in jobs
    for hidden in ("ftjob-bob00000000000000000000", "ftjob-sharedob0000000000000000",
                   "ftjob-openera0000000000000000", "mistral-job-of-ob"):
        assert hidden not in jobs, hidden
    assert 'value="mistral"' not in jobs  # the provider filter names no provider of hidden objects
    listed = alice.get(url + "/ui/api/jobs", timeout=30).json()["data"]
    assert {j["id"] for j in listed} == {"ftjob-alice0000000000000000", "ftjob-sharedoa0000000000000000"}
    for hidden in ("ftjob-bob00000000000000000000", "ftjob-sharedob0000000000000000",
                   "ftjob-openera0000000000000000"):
        page = alice.get(url + f"/ui/jobs/{hidden}", timeout=30)
        assert page.status_code == 404 and "No such job" in page.text, hidden
    assert alice.get(url + "/ui/jobs/ftjob-sharedoa0000000000000000", timeout=30).status_code == 200

    files = alice.get(url + "/ui/files", timeout=30).text
    assert "file-sharedoa" in files
    for hidden in ("file-sharedob", "file-openera", "file-result"):
        assert hidden not in files, hidden
        assert alice.get(url + f"/ui/files/{hidden}", timeout=30).status_code == 404, hidden
    assert alice.get(url + "/ui/files/file-sharedoa", timeout=30).status_code == 200

    # The header-key JSON for the CLI follows the same rule; Bob sees his connection's objects.
    bob = requests.get(url + "/ui/api/jobs", headers={"Authorization": f"Bearer {two.bob}"}, timeout=30).json()
    assert {j["id"] for j in bob["data"]} == {"ftjob-bob00000000000000000000", "ftjob-sharedob0000000000000000",
                                              "mistral-job-of-ob"}


def test_an_open_gateway_shows_everything(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d") as gw:
        gw.with_store(lambda store: store.record("job", "ftjob-open", "openai", None, None, "running",
                                                 {"id": "ftjob-open", "status": "running"}, claim=False))
        assert "ftjob-open" in requests.get(gw.url + "/ui/jobs", timeout=30).text


# ---- headers -------------------------------------------------------------------------------------


def assert_secured(r: requests.Response, what: str, *, cacheable: bool = False) -> None:
    csp = r.headers.get("Content-Security-Policy", "")
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, what
    for name, value in HEADERS.items():
        assert r.headers.get(name) == value, (what, name, r.headers.get(name))
    if not cacheable:
        assert r.headers.get("Cache-Control") == "no-store", what


def test_every_ui_answer_carries_the_security_headers(two: Two) -> None:
    url = two.gateway.url
    alice = session(two.gateway, two.alice)
    anonymous = requests  # no session: nothing is kept between these
    answers: dict[str, requests.Response] = {
        "page": alice.get(url + "/ui/jobs", timeout=30),
        "missing": alice.get(url + "/ui/jobs/ftjob-nothere", timeout=30),
        "login form": anonymous.get(url + "/ui/login", timeout=30),
        "login redirect": anonymous.get(url + "/ui/jobs", allow_redirects=False, timeout=30),
        "home redirect": alice.get(url + "/ui/", allow_redirects=False, timeout=30),
        "after login": anonymous.post(url + "/ui/login", data={"key": two.alice}, allow_redirects=False,
                                      timeout=30),
        "unknown route": alice.get(url + "/ui/nothing-here", timeout=30),
        "wrong method": alice.delete(url + "/ui/jobs", timeout=30),
        "api 401": anonymous.get(url + "/ui/api/jobs", timeout=30),
        "api json": alice.get(url + "/ui/api/jobs", timeout=30),
        "chat 415": alice.post(url + "/ui/api/chat/completions", data="x", headers={"Content-Type": "text/plain"},
                               timeout=30),
        "chat 403": alice.post(url + "/ui/api/chat/completions", json={}, headers={"Sec-Fetch-Site": "cross-site"},
                               timeout=30),
        "static missing": alice.get(url + "/ui/static/nope.js", timeout=30),
    }
    assert answers["unknown route"].status_code == 404
    assert answers["wrong method"].status_code == 405
    for what, r in answers.items():
        assert_secured(r, what, cacheable=what.startswith("static"))
    # API-style errors keep their shape under the headers.
    for what in ("unknown route", "wrong method", "api 401", "chat 415", "chat 403", "static missing"):
        body = answers[what].json()
        assert set(body["error"]) == {"message", "type", "param", "code"}, what
    assert "Allow" in answers["wrong method"].headers
    for name in ("chart.js", "playground.js", "style.css"):
        r = alice.get(url + f"/ui/static/{name}", timeout=30)
        assert r.status_code == 200
        assert_secured(r, name, cacheable=True)
        assert "no-store" not in r.headers.get("Cache-Control", ""), name  # the scripts and styles may be cached


def test_the_dashboards_slash_redirects_carry_the_security_headers(tmp_path: Path) -> None:
    """``/ui`` without its slash (Starlette's redirect to ``/ui/``, made by the app's router, outside the
    dashboard's own) and the redirects inside the dashboard: each is a 307 with the headers, to the
    right place, the query string kept."""
    with Gateway(tmp_path / "data") as gw:
        url = gw.url
        cases = {
            ("GET", "/ui"): "/ui/",
            ("HEAD", "/ui"): "/ui/",
            ("POST", "/ui"): "/ui/",
            ("GET", "/ui?next=%2Fui%2Fjobs"): "/ui/?next=%2Fui%2Fjobs",
            ("GET", "/ui/jobs/"): "/ui/jobs",
            ("GET", "/ui/static"): "/ui/static/",
        }
        for (method, path), target in cases.items():
            r = requests.request(method, url + path, allow_redirects=False, timeout=30)
            what = f"{method} {path}"
            assert r.status_code == 307, (what, r.status_code)
            assert r.headers["location"] in (target, url + target), (what, r.headers["location"])
            assert_secured(r, what)
        # Followed, GET /ui lands on the dashboard (the login form of an open gateway's home, here).
        r = requests.get(url + "/ui", timeout=30)
        assert r.status_code == 200 and r.url.startswith(url + "/ui/"), (r.status_code, r.url)
        assert_secured(r, "after the redirect")
        # Nothing else changed: a path merely starting with the prefix is no dashboard's.
        r = requests.get(url + "/uix", allow_redirects=False, timeout=30)
        assert r.status_code == 404 and "X-Frame-Options" not in r.headers, r.headers


# ---- cross-site requests -------------------------------------------------------------------------


def test_a_cross_site_link_cannot_rewrite_a_files_validation_report(tmp_path: Path) -> None:
    standin = MetricsStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        async def setup(store: Any) -> str:
            await store.add_connection("oa", "openai", {"api_key": standin.api_key}, base_url=upstream.url)
            return str((await store.create_key("ci", ["*"]))[1])

        key = gw.with_store(setup)
        file_id = requests.post(gw.url + "/v1/files", files={"file": ("train.jsonl", EXAMPLES)},
                                data={"purpose": "fine-tune"}, timeout=30,
                                headers={"Authorization": f"Bearer {key}", "x-portkey-provider": "openai"}).json()["id"]
        # Reports made on demand are kept per process by file id, and the stand-in's ids repeat across
        # tests (the gateway runs in this process): start from none for this one.
        ui_data._REPORTS.pop(file_id, None)
        s = session(gw, key)
        page = f"{gw.url}/ui/files/{file_id}"
        # A link on another site (a top-level GET: SameSite=Lax sends the cookie) validates as "dpo".
        r = s.get(page + "?validate=1&method=dpo", headers={"Sec-Fetch-Site": "cross-site"}, timeout=30)
        assert r.status_code == 403 and "another site" in r.text
        assert "No report stored for this file" in s.get(page, timeout=30).text
        r = s.get(page + "?validate=1&method=dpo", headers={"Origin": "https://attacker.example"}, timeout=30)
        assert r.status_code == 403
        # The page's own button works (same-origin), and so does a link typed into the address bar.
        for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}):
            r = s.get(page + "?validate=1", headers=headers, timeout=30)
            assert r.status_code == 200 and 'id="report-summary"' in r.text, headers


# ---- escaping ------------------------------------------------------------------------------------


def test_client_and_provider_text_is_escaped_everywhere(two: Two) -> None:
    url = two.gateway.url
    job_id = "ftjob-evil00000000000000000000"
    snapshot = {"id": job_id, "object": "fine_tuning.job", "status": "succeeded", "model": EVIL,
                "fine_tuned_model": "ft:" + EVIL, "training_file": "file-" + EVIL, "suffix": EVIL,
                "metadata": {EVIL: EVIL}, "error": {"message": EVIL, "code": EVIL},
                "hyperparameters": {EVIL: EVIL}, "method": {"type": EVIL}, "created_at": 1_700_000_000}
    two.gateway.with_store(lambda store: store.record("job", job_id, "openai", "oa", two.alice_id, "succeeded",
                                                      snapshot, claim=True))
    two.gateway.with_store(lambda store: store.record("file", "file-evil", "openai", "oa", two.alice_id,
                                                      "processed", {"id": "file-evil", "filename": EVIL,
                                                                    "purpose": EVIL}, claim=True))
    alice = session(two.gateway, two.alice)
    for path in ("/ui/jobs", f"/ui/jobs/{job_id}", "/ui/files", "/ui/files/file-evil",
                 "/ui/jobs/" + requests.utils.quote(EVIL.replace("/", ""), safe=""), "/ui/login?next=/ui/" + EVIL):
        r = alice.get(url + path, timeout=30)
        assert r.headers["content-type"].startswith("text/html"), path
        assert "<script>alert" not in r.text and "<img src=x" not in r.text, path
    assert "&lt;script&gt;" in alice.get(url + "/ui/jobs", timeout=30).text
    # An unknown route's error names the path, as JSON that no browser may sniff into HTML.
    r = alice.get(url + "/ui/" + requests.utils.quote(EVIL, safe="/"), timeout=30)
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_an_internal_error_is_the_apps_500_with_the_headers(two: Two, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunegate.ui import data

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret-detail /srv/tunegate/secret.py")

    monkeypatch.setattr(data, "list_jobs", broken)
    alice = session(two.gateway, two.alice)
    r = alice.get(two.gateway.url + "/ui/jobs", timeout=30)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert "secret-detail" not in r.text and "Traceback" not in r.text
    assert_secured(r, "500")
