"""A key cannot tell an id that exists under another key from one that exists nowhere: the provider's
own "not found" for an id the registry does not know reads exactly as the gateway's refusal of another
key's object (docs/security.md, ownership). A key's own object keeps the provider's words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread
from tunegate.store import Store

ALICE_JOB = "ftjob-AliceJob0001"
GONE_JOB = "ftjob-AliceGone0002"  # Alice's, recorded, since removed at the provider
OTHER_CONNECTIONS_JOB = "ftjob-SeenOnB0004"  # unowned, seen through a connection Bob is not granted
UNKNOWN_JOB = "ftjob-NoSuchJob0003"
ALICE_UPLOAD = "upload_AliceUpload0001"
UNKNOWN_UPLOAD = "upload_NoSuchUpload0002"
ALICE_MODEL = "ft:gpt-4o-mini-2024-07-18:team::AliceMdl1"
UNKNOWN_MODEL = "ft:gpt-4o-mini-2024-07-18:team::NoSuchMdl2"
# Not OpenAI's exact wording (unverified without a live account); any provider wording will do here.
PROVIDER_404 = {"error": {"message": "Could not find fine-tune job.", "type": "invalid_request_error",
                          "param": "fine_tuning_job_id", "code": "fine_tuning_job_not_found"}}


@pytest.fixture
def team(tmp_path: Path) -> Iterator[tuple[Gateway, dict[str, str]]]:
    async def any_call(request: web.Request) -> web.Response:
        job_id = request.path.split("/")[4] if request.path.startswith("/v1/fine_tuning/jobs/") else ""
        if job_id == ALICE_JOB:
            if request.path.endswith("/events"):
                return web.json_response({"object": "list", "data": [], "has_more": False})
            return web.json_response({"id": job_id, "object": "fine_tuning.job", "status": "running",
                                      "model": "gpt-4o-mini-2024-07-18", "created_at": 1})
        return web.json_response(PROVIDER_404, status=404, headers={"x-request-id": "req_upstream"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_call)
    with ServerThread(app) as up, Gateway(tmp_path / "data") as gw:
        async def setup(store: Store) -> dict[str, str]:
            await store.add_connection("team-oa", "openai", {"api_key": "sk-team-secret"}, up.url + "/v1", {})
            await store.add_connection("team-b", "openai", {"api_key": "sk-b-secret"}, up.url + "/v1", {})
            await store.record("job", OTHER_CONNECTIONS_JOB, "openai", "team-b", None, "running", claim=False)
            alice, alice_secret = await store.create_key("alice", ["team-oa"])
            _, bob_secret = await store.create_key("bob", ["team-oa"])
            _, dave_secret = await store.create_key("dave", [])  # granted no connection at all
            for job in (ALICE_JOB, GONE_JOB):
                await store.record("job", job, "openai", "team-oa", alice.id, "running", claim=True)
            await store.record("upload", ALICE_UPLOAD, "openai", "team-oa", alice.id, "pending", claim=True)
            await store.record("model", ALICE_MODEL, "openai", "team-oa", alice.id, None, claim=True)
            return {"alice": alice_secret, "bob": bob_secret, "dave": dave_secret}

        yield gw, gw.with_store(setup)


def _call(gw: Gateway, key: str, method: str, path: str, provider: str = "openai") -> requests.Response:
    return requests.request(method, gw.url + path, timeout=20,
                            headers={"x-portkey-api-key": key, "x-portkey-provider": provider})


def _shape(r: requests.Response, job_id: str) -> tuple[int, str, list[str]]:
    """Status, body with the id taken out, and the header names (values such as the trace id differ)."""
    names = sorted(n.lower() for n in r.headers if n.lower() not in ("date", "content-length", "x-portkey-trace-id"))
    return r.status_code, r.text.replace(job_id, "<id>"), names


@pytest.mark.parametrize("method,suffix", [("GET", ""), ("POST", "/cancel"), ("GET", "/events")])
def test_another_keys_job_and_no_job_at_all_answer_alike(team: tuple[Gateway, dict[str, str]], method: str,
                                                          suffix: str) -> None:
    gw, keys = team
    theirs = _call(gw, keys["bob"], method, f"/v1/fine_tuning/jobs/{ALICE_JOB}{suffix}")
    nowhere = _call(gw, keys["bob"], method, f"/v1/fine_tuning/jobs/{UNKNOWN_JOB}{suffix}")
    assert theirs.status_code == 404, theirs.text
    assert _shape(theirs, ALICE_JOB) == _shape(nowhere, "ftjob-NoSuchJob0003")
    assert nowhere.json()["error"] == {"message": "No such job: 'ftjob-NoSuchJob0003'.",
                                       "type": "invalid_request_error", "param": None, "code": "not_found"}


def test_a_keys_own_object_keeps_the_providers_words(team: tuple[Gateway, dict[str, str]]) -> None:
    gw, keys = team
    assert _call(gw, keys["alice"], "GET", f"/v1/fine_tuning/jobs/{ALICE_JOB}").status_code == 200
    gone = _call(gw, keys["alice"], "GET", f"/v1/fine_tuning/jobs/{GONE_JOB}")
    assert gone.status_code == 404 and gone.json()["error"]["message"] == "Could not find fine-tune job.", gone.text


def test_an_unowned_job_of_a_connection_the_key_is_not_granted_is_the_same_404(
        team: tuple[Gateway, dict[str, str]]) -> None:
    """It was a 403 naming the connection, so a key could learn that the id exists, and where."""
    gw, keys = team
    seen = _call(gw, keys["bob"], "GET", f"/v1/fine_tuning/jobs/{OTHER_CONNECTIONS_JOB}")
    nowhere = _call(gw, keys["bob"], "GET", f"/v1/fine_tuning/jobs/{UNKNOWN_JOB}")
    assert _shape(seen, OTHER_CONNECTIONS_JOB) == _shape(nowhere, UNKNOWN_JOB) and seen.status_code == 404, seen.text


@pytest.mark.parametrize("key,provider", [("bob", "nosuch"), ("dave", "openai")])  # unknown provider; no connection
def test_the_refusal_comes_after_every_check_an_unknown_id_goes_through(team: tuple[Gateway, dict[str, str]],
                                                                         key: str, provider: str) -> None:
    """Until the refusal, another key's id and an unknown one take the same path: an earlier 400 or 403
    for one of them only would tell them apart."""
    gw, keys = team
    theirs = _call(gw, keys[key], "GET", f"/v1/fine_tuning/jobs/{ALICE_JOB}", provider)
    nowhere = _call(gw, keys[key], "GET", f"/v1/fine_tuning/jobs/{UNKNOWN_JOB}", provider)
    assert theirs.status_code in (400, 403), theirs.text
    assert _shape(theirs, ALICE_JOB) == _shape(nowhere, UNKNOWN_JOB)


def _send(gw: Gateway, key: str, method: str, path: str, kwargs: dict[str, Any]) -> requests.Response:
    headers = {"x-portkey-api-key": key, "x-portkey-provider": "openai", **kwargs.get("headers", {})}
    return requests.request(method, gw.url + path, timeout=20, headers=headers,
                            **{k: v for k, v in kwargs.items() if k != "headers"})


BAD_INPUT = [  # (method, path with {id}, what is wrong with the request, its expected param)
    ("GET", "/v1/fine_tuning/jobs/{job}/events?limit=x", {}, "limit"),
    ("GET", "/v1/fine_tuning/jobs/{job}/checkpoints?limit=-1", {}, "limit"),
    ("POST", "/v1/uploads/{upload}/complete", {"json": {"md5": "x"}}, "part_ids"),
    ("POST", "/v1/uploads/{upload}/complete", {"data": b"{not json", "headers": {"content-type": "application/json"}},
     None),
    ("POST", "/v1/uploads/{upload}/parts", {"files": {"note": (None, "no data part")}}, "data"),
    ("POST", "/v1/models/{model}/deploy", {"data": b"[1, 2]", "headers": {"content-type": "application/json"}}, None),
]


@pytest.mark.parametrize("method,path,kwargs,param", BAD_INPUT)
def test_a_bad_query_or_body_is_the_same_400_for_another_keys_object(
        team: tuple[Gateway, dict[str, str]], method: str, path: str, kwargs: dict[str, Any], param: str | None) -> None:
    """The route reads its query or body before another key's object is refused, where an unknown id's
    request reads them too: read after the refusal, the 400 for an unknown id and the 404 for another
    key's told the two apart."""
    gw, keys = team
    theirs = _send(gw, keys["bob"], method, path.format(job=ALICE_JOB, upload=ALICE_UPLOAD, model=ALICE_MODEL),
                   kwargs)
    nowhere = _send(gw, keys["bob"], method,
                    path.format(job=UNKNOWN_JOB, upload=UNKNOWN_UPLOAD, model=UNKNOWN_MODEL), kwargs)
    assert theirs.status_code == 400, theirs.text
    assert theirs.json()["error"]["param"] == param
    assert _shape(theirs, ALICE_JOB) == _shape(nowhere, UNKNOWN_JOB)
    # the control: Alice's own request with the same input hears the same 400 (it is the input, not the id)
    assert _send(gw, keys["alice"], method, path.format(job=ALICE_JOB, upload=ALICE_UPLOAD, model=ALICE_MODEL),
                 kwargs).status_code == 400


def test_a_part_for_another_keys_upload_is_read_as_an_unknown_ones(team: tuple[Gateway, dict[str, str]]) -> None:
    """Refused unread, the part left its connection closed (``Connection: close``) where an unknown
    upload's part, sent on to the provider, left it open."""
    gw, keys = team
    part = {"files": {"data": ("part.bin", b"x" * 200_000)}}
    theirs = _send(gw, keys["bob"], "POST", f"/v1/uploads/{ALICE_UPLOAD}/parts", part)
    nowhere = _send(gw, keys["bob"], "POST", f"/v1/uploads/{UNKNOWN_UPLOAD}/parts", part)
    assert theirs.status_code == 404, theirs.text
    assert _shape(theirs, ALICE_UPLOAD) == _shape(nowhere, UNKNOWN_UPLOAD)
    assert theirs.headers.get("connection", "").lower() != "close"
