"""A batch of bad inputs that reached a 500, a misleading answer or the upstream: each is now a clean
OpenAI-shaped answer. Driven through the in-process gateway on real sockets, with a small recording
upstream where one is needed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from aiohttp import web

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread
from tests.test_errors import TRAINING
from tunegate.webhooks.registry import Endpoints

SECRET = "sk-caller-secret-123456"
HTML_TRACE = ("<html><head><title>500 Internal Server Error</title></head><body><h1>Oops</h1><pre>\n"
              "Traceback (most recent call last):\n  File \"/srv/app/views.py\", line 42, in jobs\n"
              f"    db.connect(password='hunter2', key='{SECRET}')\nRuntimeError: boom\n</pre></body></html>\n")


@dataclass
class Upstream:
    """Answers malformed listings and an HTML error page; records every request it gets."""

    url: str = ""
    seen: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        malformed = [{"id": "ftjob-ok", "object": "fine_tuning.job", "status": {"x": 1}},
                     {"id": "ftjob-long", "object": "fine_tuning.job", "status": "s" * 5000},
                     {"id": {"nested": True}, "object": "fine_tuning.job", "status": "running"},
                     {"id": 12345, "object": "file", "status": "processed"},
                     {"id": "file-odd-purpose", "object": "file", "status": "processed", "purpose": []},
                     {"id": "x" * 5000, "object": "file", "status": "processed"},
                     {"id": "file-ok", "object": "file", "status": ["processed"], "purpose": "fine-tune"}]

        async def listing(request: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": malformed, "has_more": False})

        async def html_error(request: web.Request) -> web.Response:
            return web.Response(status=500, text=HTML_TRACE, content_type="text/html")

        async def text_error(request: web.Request) -> web.Response:
            return web.Response(status=503, text="upstream busy \x1b[31m" + "y" * 5000 + "\nsecond line",
                                content_type="text/plain")

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.seen.append(f"{request.method} {request.path}")
            return await handler(request)  # type: ignore[no-any-return]

        app = web.Application(middlewares=[record])
        app.router.add_get("/v1/fine_tuning/jobs", listing)
        app.router.add_get("/v1/files", listing)
        app.router.add_get("/v1/fine_tuning/jobs/ftjob-html", html_error)
        app.router.add_get("/v1/fine_tuning/jobs/ftjob-text", text_error)
        return app


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    with ServerThread(up.app()) as server:
        up.url = server.url
        yield up


def _openai(upstream: Upstream) -> dict[str, str]:
    return {"x-portkey-provider": "openai", "Authorization": f"Bearer {SECRET}",
            "x-portkey-custom-host": upstream.url + "/v1", "x-portkey-config": json.dumps({"retry": {"attempts": 0}})}


def _error(r: requests.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


MANAGED = {"x-portkey-provider": "tunegate"}


# ---- A: a multipart boundary beyond RFC 2046's 70 characters --------------------------------------


@pytest.mark.parametrize("boundary", ["b" * 5000, "b" * 71, '""'])
def test_a_multipart_boundary_out_of_bounds_is_a_400(gateway: Gateway, boundary: str) -> None:
    r = requests.post(gateway.url + "/v1/files", headers={**MANAGED,
                      "Content-Type": f"multipart/form-data; boundary={boundary}"}, data=b"x" * 10, timeout=20)
    err = _error(r, 400)
    assert err["code"] == "invalid_content_type" and "b" * 71 not in err["message"]


def test_a_boundary_of_70_characters_still_works(gateway: Gateway) -> None:
    boundary = "q" * 70
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n").encode() + TRAINING + f"\r\n--{boundary}--\r\n".encode()
    r = requests.post(gateway.url + "/v1/files", data=body, timeout=20, headers={
        **MANAGED, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 200 and r.json()["bytes"] == len(TRAINING), r.text


# ---- B: a dashboard date past what a timestamp holds ----------------------------------------------


@pytest.mark.parametrize("path", ["/ui/api/jobs", "/ui/jobs"])
@pytest.mark.parametrize("query", ["until=9999-12-31", "since=9999-12-31", "until=0001-01-01"])
def test_b_dashboard_dates_at_the_calendar_edge_are_ignored(gateway: Gateway, path: str, query: str) -> None:
    r = requests.get(f"{gateway.url}{path}?{query}", timeout=20)
    assert r.status_code == 200, r.text[:500]


# ---- C: a webhook test that reached nobody ---------------------------------------------------------


def test_c_webhook_test_to_a_dead_port_is_not_a_success(gateway: Gateway) -> None:
    created = requests.post(gateway.url + "/v1/webhooks", json={"url": "http://127.0.0.1:1/h"}, timeout=20)
    assert created.status_code == 200, created.text
    r = requests.post(f"{gateway.url}/v1/webhooks/{created.json()['id']}/test", json={}, timeout=30)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["success"] is False and result["status_code"] is None
    assert result["error"] == "upstream_unreachable"
    assert created.json()["signing_secret"] not in r.text


def test_c_webhook_test_answered_500_is_not_a_success(gateway: Gateway) -> None:
    app = web.Application()

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text="no")

    app.router.add_post("/h", fail)
    with ServerThread(app) as server:
        created = requests.post(gateway.url + "/v1/webhooks", json={"url": server.url + "/h"}, timeout=20).json()
        result = requests.post(f"{gateway.url}/v1/webhooks/{created['id']}/test", json={}, timeout=30).json()
    assert result["success"] is False and result["status_code"] == 500 and result["error"] == "HTTP 500"


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/h", "http://[::1/h", "notaurl"])
def test_c_a_stored_url_that_cannot_be_requested_is_a_failed_attempt(gateway: Gateway, url: str) -> None:
    """Stored before URLs were checked at registration: the attempt fails, the gateway does not."""

    async def add(store: Any) -> str:
        endpoint, _secret = await Endpoints(store).create(None, "old", url, ["fine_tuning.job.succeeded"])
        return endpoint.id

    endpoint_id = gateway.with_store(add)
    r = requests.post(f"{gateway.url}/v1/webhooks/{endpoint_id}/test", json={}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["success"] is False and r.json()["status_code"] is None and r.json()["error"]


# ---- D: 405's Allow names every method of the path -------------------------------------------------


@pytest.mark.parametrize("path,methods", [
    ("/v1/fine_tuning/jobs", {"GET", "HEAD", "POST"}),
    ("/v1/files", {"GET", "HEAD", "POST"}),
    ("/v1/files/file-x", {"GET", "HEAD", "DELETE"}),
    ("/v1/models/ft:gpt-4o:x", {"GET", "HEAD", "DELETE"}),
    ("/v1/webhooks", {"GET", "HEAD", "POST"}),
    ("/v1/webhook_endpoints/whep_x", {"GET", "HEAD", "DELETE"}),
    ("/ui/login", {"GET", "HEAD", "POST"}),
])
def test_d_405_allow_lists_every_route_of_the_path(gateway: Gateway, path: str, methods: set[str]) -> None:
    r = requests.request("PUT", gateway.url + path, timeout=20)
    assert _error(r, 405)["code"] == "method_not_allowed"
    assert {m.strip() for m in r.headers["Allow"].split(",")} == methods


# ---- E: /v1/uploads' fields are typed and bounded ---------------------------------------------------

UPLOAD = {"filename": "t.jsonl", "purpose": "fine-tune", "bytes": 10, "mime_type": "application/jsonl"}


@pytest.mark.parametrize("change,param", [
    ({"filename": 1}, "filename"),
    ({"filename": "f" * 513}, "filename"),
    ({"filename": ""}, "filename"),
    ({"purpose": []}, "purpose"),
    ({"purpose": "nope"}, "purpose"),
    ({"mime_type": {}}, "mime_type"),
    ({"mime_type": "m" * 256}, "mime_type"),
    ({"bytes": True}, "bytes"),
    ({"bytes": -1}, "bytes"),
    ({"bytes": "10"}, "bytes"),
])
def test_e_upload_fields_are_checked_before_the_upstream(gateway: Gateway, upstream: Upstream,
                                                         change: dict[str, Any], param: str) -> None:
    r = requests.post(gateway.url + "/v1/uploads", json={**UPLOAD, **change}, headers=_openai(upstream), timeout=20)
    err = _error(r, 400)
    assert err["param"] == param and len(r.content) < 1000
    assert upstream.seen == []


# ---- F: the gateway's own file store checks purpose and expires_after -------------------------------


def _managed_upload(gw: Gateway, purpose: bytes, extra: dict[str, str] | None = None) -> requests.Response:
    boundary = "tgtestboundary"
    head = f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n".encode() + purpose + b"\r\n"
    for name, value in (extra or {}).items():
        head += f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode()
    body = head + (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n"
                   "Content-Type: application/jsonl\r\n\r\n").encode() + TRAINING + f"\r\n--{boundary}--\r\n".encode()
    return requests.post(gw.url + "/v1/files", data=body, timeout=20, headers={
        **MANAGED, "Content-Type": f"multipart/form-data; boundary={boundary}"})


@pytest.mark.parametrize("purpose,extra,param", [
    (b"nope", {}, "purpose"),
    (b"fine-tune\xff\xfe", {}, "purpose"),
    (b"\xff", {}, "purpose"),
    (b"batch", {"expires_after[anchor]": "updated_at", "expires_after[seconds]": "3600"}, "expires_after[anchor]"),
    (b"batch", {"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"}, "expires_after[seconds]"),
    (b"batch", {"expires_after[anchor]": "created_at", "expires_after[seconds]": "\u00b3"},
     "expires_after[seconds]"),
    (b"batch", {"expires_after[anchor]": "created_at", "expires_after[seconds]": "59"}, "expires_after[seconds]"),
    (b"batch", {"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"},
     "expires_after[seconds]"),
    (b"batch", {"expires_after[anchor]": "created_at"}, "expires_after[seconds]"),
    (b"batch", {"expires_after[seconds]": "3600"}, "expires_after[anchor]"),
])
def test_f_managed_files_check_purpose_and_expiry(gateway: Gateway, purpose: bytes, extra: dict[str, str],
                                                  param: str) -> None:
    err = _error(_managed_upload(gateway, purpose, extra), 400)
    assert err["param"] == param
    assert list((gateway.settings.data_dir / "files" / "objects").glob("*")) == []


def test_f_managed_files_keep_a_valid_expiry(gateway: Gateway) -> None:
    r = _managed_upload(gateway, b"batch", {"expires_after[anchor]": "created_at",
                                            "expires_after[seconds]": "2592000"})
    assert r.status_code == 200, r.text
    assert r.json()["purpose"] == "batch" and r.json()["expires_at"] == r.json()["created_at"] + 2592000


# ---- G: a malformed upstream listing ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/fine_tuning/jobs", "/v1/files"])
def test_g_a_malformed_listing_is_relayed_not_a_500(gateway: Gateway, upstream: Upstream, path: str) -> None:
    r = requests.get(gateway.url + path, headers=_openai(upstream), timeout=20)
    assert r.status_code == 200, r.text
    kinds = {"/v1/fine_tuning/jobs": "job", "/v1/files": "file"}

    async def recorded(store: Any) -> dict[str, Any]:
        import sqlalchemy as sa

        from tunegate.store.schema import objects
        async with store.engine.connect() as conn:
            rows = await conn.execute(sa.select(objects.c.id, objects.c.status).where(
                objects.c.kind == kinds[path]))
            return {row[0]: row[1] for row in rows}

    assert gateway.with_store(recorded) == {"ftjob-ok": None, "ftjob-long": None, "file-ok": None,
                                             "file-odd-purpose": "processed"}


# ---- H: ids are bounded before anything echoes them ------------------------------------------------


@pytest.mark.parametrize("name", ["model", "training_file", "validation_file"])
def test_h_a_huge_id_is_a_short_400(gateway: Gateway, upstream: Upstream, name: str) -> None:
    body = {"model": "gpt-4o-mini-2024-07-18", "training_file": "file-abc", name: "m" * 100_000}
    r = requests.post(gateway.url + "/v1/fine_tuning/jobs", json=body, headers=_openai(upstream), timeout=20)
    err = _error(r, 400)
    assert err["param"] == name and len(r.content) < 1000
    assert upstream.seen == []


# ---- I: an upstream's HTML error page is not relayed ------------------------------------------------


def test_i_an_html_error_page_becomes_one_short_line(gateway: Gateway, upstream: Upstream) -> None:
    r = requests.get(gateway.url + "/v1/fine_tuning/jobs/ftjob-html", headers=_openai(upstream), timeout=20)
    err = _error(r, 500)
    message = err["message"]
    assert message.startswith("The provider answered with HTTP 500.")
    for leaked in ("<", "Traceback", "hunter2", SECRET, "views.py", "\n"):
        assert leaked not in message, message
    assert len(message) <= 260


def test_i_a_plain_text_error_keeps_its_first_line_only(gateway: Gateway, upstream: Upstream) -> None:
    r = requests.get(gateway.url + "/v1/fine_tuning/jobs/ftjob-text", headers=_openai(upstream), timeout=20)
    message = _error(r, 503)["message"]
    assert message.startswith("The provider answered with HTTP 503. upstream busy")
    assert "second line" not in message and "\x1b" not in message and len(message) <= 260

