"""Objects a request names outside its path are held to the ownership rule too (docs/security.md):
a job's training_file and base model, and the checkpoint whose permissions a caller reads or changes. And a body
that nests deeper than the gateway writes, or an upstream answer whose status the registry cannot
keep, is a clear answer, not a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from aiohttp import web

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread
from tunegate.store import Store

ALICE_FILE = "file-AliceSecretData1"
ALICE_MODEL = "ft:gpt-4o-mini-2024-07-18:team:alice:AbC123"


@pytest.fixture
def team(tmp_path: Path) -> Iterator[tuple[Gateway, dict[str, str], list[tuple[str, str]]]]:
    """One connection, two keys on it; Alice owns a file and a tuned model. The upstream logs calls."""
    calls: list[tuple[str, str]] = []

    async def any_call(request: web.Request) -> web.Response:
        calls.append((request.method, request.path))
        if request.path.endswith("/fine_tuning/jobs") and request.method == "POST":
            return web.json_response({"id": "ftjob-new", "object": "fine_tuning.job", "status": "queued",
                                      "model": "gpt-4o-mini-2024-07-18", "created_at": 1})
        if request.path.startswith("/v1/fine_tuning/jobs/"):
            return web.json_response({"id": request.path.rsplit("/", 1)[1], "object": "fine_tuning.job",
                                      "status": {"odd": 1}, "model": "gpt-4o-mini-2024-07-18", "created_at": 1})
        return web.json_response({"object": "list", "data": [], "has_more": False})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_call)
    with ServerThread(app) as up, Gateway(tmp_path / "data") as gw:
        async def setup(store: Store) -> dict[str, str]:
            await store.add_connection("team-oa", "openai", {"api_key": "sk-team-secret"}, up.url + "/v1", {})
            alice, alice_secret = await store.create_key("alice", ["team-oa"])
            _, bob_secret = await store.create_key("bob", ["team-oa"])
            await store.record("file", ALICE_FILE, "openai", "team-oa", alice.id, "processed")
            await store.record("model", ALICE_MODEL, "openai", "team-oa", alice.id)
            return {"alice": alice_secret, "bob": bob_secret}

        yield gw, gw.with_store(setup), calls


def _call(gw: Gateway, key: str, method: str, path: str, body: object = None) -> requests.Response:
    return requests.request(method, gw.url + path, json=body, timeout=20,
                            headers={"x-portkey-api-key": key, "x-portkey-provider": "openai"})


def test_a_job_cannot_train_on_another_keys_file(team: tuple[Gateway, dict[str, str], list]) -> None:
    gw, keys, calls = team
    for field in ("training_file", "validation_file"):
        body = {"model": "gpt-4o-mini-2024-07-18", "training_file": "file-bobs", field: ALICE_FILE}
        r = _call(gw, keys["bob"], "POST", "/v1/fine_tuning/jobs", body)
        assert r.status_code == 404 and r.json()["error"]["param"] == field, r.text
    assert ("POST", "/v1/fine_tuning/jobs") not in calls
    r = _call(gw, keys["alice"], "POST", "/v1/fine_tuning/jobs",
              {"model": "gpt-4o-mini-2024-07-18", "training_file": ALICE_FILE})
    assert r.status_code == 200, r.text


def test_a_job_cannot_train_on_from_another_keys_tuned_model(team: tuple[Gateway, dict[str, str], list]) -> None:
    """A create's base `model` is held to the rule too, on any provider (the adapters check other spellings)."""
    gw, keys, calls = team
    r = _call(gw, keys["bob"], "POST", "/v1/fine_tuning/jobs", {"model": ALICE_MODEL, "training_file": "file-bobs"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model", r.text
    assert ("POST", "/v1/fine_tuning/jobs") not in calls
    r = _call(gw, keys["alice"], "POST", "/v1/fine_tuning/jobs", {"model": ALICE_MODEL, "training_file": ALICE_FILE})
    assert r.status_code == 200, r.text


def test_another_keys_checkpoint_permissions_are_a_404(team: tuple[Gateway, dict[str, str], list]) -> None:
    gw, keys, calls = team
    path = f"/v1/fine_tuning/checkpoints/{ALICE_MODEL}:ckpt-step-10/permissions"
    for method, body in (("GET", None), ("POST", {"project_ids": ["proj-bob"]})):
        r = _call(gw, keys["bob"], method, path, body)
        assert r.status_code == 404, r.text
    assert calls == []
    assert _call(gw, keys["alice"], "GET", path).status_code == 200


def test_a_body_nested_past_what_the_gateway_writes_is_a_400(team: tuple[Gateway, dict[str, str], list]) -> None:
    gw, keys, calls = team
    deep = "[" * 300 + "]" * 300
    raw = '{"model": "gpt-4o-mini-2024-07-18", "training_file": "file-x", "hyperparameters": {"x": ' + deep + "}}"
    r = requests.post(gw.url + "/v1/fine_tuning/jobs", data=raw, timeout=20, headers={
        "x-portkey-api-key": keys["bob"], "x-portkey-provider": "openai", "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text
    assert calls == []
    shallow = {"model": "gpt-4o-mini-2024-07-18", "training_file": "file-x", "metadata": {"a": "b"},
               "hyperparameters": {"x": json.loads("[" * 40 + "]" * 40)}}
    assert _call(gw, keys["bob"], "POST", "/v1/fine_tuning/jobs", shallow).status_code == 200


def test_a_retrieved_status_the_registry_cannot_keep_is_relayed(team: tuple[Gateway, dict[str, str], list]) -> None:
    gw, keys, _ = team
    r = _call(gw, keys["bob"], "GET", "/v1/fine_tuning/jobs/ftjob-elsewhere")
    assert r.status_code == 200 and r.json()["status"] == {"odd": 1}, r.text


@pytest.mark.parametrize("field", ["model", "training_file", "validation_file"])
@pytest.mark.parametrize("bad", ["file-a\x00b", "file-a\nb", "file-\u2028x"])
def test_a_name_with_a_control_character_is_a_400(team: tuple[Gateway, dict[str, str], list], field: str,
                                                 bad: str) -> None:
    """No id or model name holds one, and PostgreSQL refuses a NUL in any text it is sent (a 500 there)."""
    gw, keys, calls = team
    body = {"model": "gpt-4o-mini-2024-07-18", "training_file": "file-ok", field: bad}
    r = _call(gw, keys["bob"], "POST", "/v1/fine_tuning/jobs", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field and r.json()["error"]["code"] == "invalid_value"
    assert ("POST", "/v1/fine_tuning/jobs") not in calls


@pytest.mark.parametrize("query", ["after=ftjob-a%00b", "after=%0A", "metadata[team]=a%00", "metadata[a%01]=x"])
def test_a_listing_cursor_or_filter_with_a_control_character_is_a_400(
        team: tuple[Gateway, dict[str, str], list], query: str) -> None:
    gw, keys, calls = team
    r = _call(gw, keys["bob"], "GET", "/v1/fine_tuning/jobs?" + query)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert calls == []
