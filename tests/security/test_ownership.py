"""Issue 17, findings 6, 7, 8 and 12: who owns what, with two keys (Alice, Bob) on one team connection,
through the real gateway over sockets against the OpenAI stand-in. The rules are in docs/security.md."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, StandIn

TRAIN = b"".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                          {"role": "assistant", "content": f"a{i}"}]}).encode() + b"\n"
                 for i in range(12))


@pytest.fixture
def team(tmp_path: Path) -> Iterator[dict[str, Any]]:
    standin = StandIn()
    with ServerThread(standin.app()) as server, Gateway(tmp_path / "gw") as gw:
        yield {"gw": gw, "standin": standin, "url": server.url}


def _keys(gw: Gateway, url: str, byok: bool = False) -> dict[str, str]:
    async def work(store: Any) -> dict[str, str]:
        await store.add_connection("team", "openai", {"api_key": StandIn.api_key}, url, {})
        await store.add_connection("kept", "tunegate", {}, None, {})  # the gateway's own file store
        _a, alice = await store.create_key("alice", ["team", "kept"])
        _b, bob = await store.create_key("bob", ["team", "kept"], allow_provider_keys=byok)
        return {"alice": str(alice), "bob": str(bob)}

    return gw.with_store(work)


def call(gw: Gateway, key: str, method: str, path: str, **kw: Any) -> requests.Response:
    headers = {"x-portkey-api-key": key, "x-portkey-provider": "openai", **kw.pop("headers", {})}
    return requests.request(method, gw.url + path, headers=headers, timeout=20, **kw)


def _upload(gw: Gateway, key: str) -> str:
    r = call(gw, key, "POST", "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", io.BytesIO(TRAIN))})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def test_result_files_go_to_the_jobs_owner_even_when_bob_lists_first(team: dict[str, Any]) -> None:
    """Finding 6: the first key to list an unrecorded object does not become its owner; a job's result
    file is shown to nobody until its job has given it an owner, then only to that owner."""
    gw, standin = team["gw"], team["standin"]
    keys = _keys(gw, team["url"])
    job = call(gw, keys["alice"], "POST", "/v1/fine_tuning/jobs",
               json={"model": "gpt-4o-mini", "training_file": _upload(gw, keys["alice"])}).json()
    for _ in range(3):  # the stand-in moves a job on per retrieve; the gateway's answer is not needed
        standin.advance(standin.jobs[job["id"]])
    result = standin.jobs[job["id"]]["result_files"][0]
    listed = call(gw, keys["bob"], "GET", "/v1/files").json()["data"]
    assert result not in [f["id"] for f in listed]  # Bob listed first: not shown, not taken
    assert call(gw, keys["bob"], "GET", f"/v1/files/{result}").status_code == 404
    assert call(gw, keys["bob"], "GET", f"/v1/files/{result}/content").status_code == 404
    # Alice's retrieve ties the result file to her job, and so to her.
    assert call(gw, keys["alice"], "GET", f"/v1/fine_tuning/jobs/{job['id']}").json()["result_files"] == [result]
    assert call(gw, keys["alice"], "GET", f"/v1/files/{result}/content").content.startswith(b"step,")
    assert call(gw, keys["bob"], "GET", f"/v1/files/{result}/content").status_code == 404
    assert call(gw, keys["bob"], "DELETE", f"/v1/files/{result}").status_code == 404
    assert result in standin.files  # nothing was deleted upstream


def test_objects_made_elsewhere_stay_unowned(team: dict[str, Any]) -> None:
    """Finding 6 again: a job created outside tunegate and listed first by Bob stays reachable by Alice."""
    gw, standin = team["gw"], team["standin"]
    keys = _keys(gw, team["url"])
    outside = standin.next_id("ftjob")
    standin.jobs[outside] = {"object": "fine_tuning.job", "id": outside, "model": "gpt-4o-mini", "status": "running",
                             "created_at": 1, "training_file": "file-x", "organization_id": "org", "result_files": [],
                             "hyperparameters": {}, "seed": 1, "fine_tuned_model": None, "finished_at": None,
                             "validation_file": None, "trained_tokens": None, "error": None}
    assert outside in [j["id"] for j in call(gw, keys["bob"], "GET", "/v1/fine_tuning/jobs").json()["data"]]
    assert call(gw, keys["alice"], "GET", f"/v1/fine_tuning/jobs/{outside}").status_code == 200
    owners = gw.with_store(lambda store: store.owners("job", [outside]))
    assert owners == {outside: None}


def test_a_forged_answer_cannot_rewrite_another_keys_snapshot(team: dict[str, Any]) -> None:
    """Finding 7: Bob (allowed his own provider key) points the gateway at his own server, which answers a
    create with Alice's job id and a forged fine_tuned_model. Alice's record keeps her snapshot."""
    gw = team["gw"]
    keys = _keys(gw, team["url"], byok=True)
    job = call(gw, keys["alice"], "POST", "/v1/fine_tuning/jobs",
               json={"model": "gpt-4o-mini", "training_file": _upload(gw, keys["alice"])}).json()

    async def forged(request: web.Request) -> web.Response:
        return web.json_response({**job, "fine_tuned_model": "ft:evil", "status": "succeeded"})

    app = web.Application()
    app.router.add_post("/v1/fine_tuning/jobs", forged)
    with ServerThread(app) as evil:
        r = requests.post(gw.url + "/v1/fine_tuning/jobs", timeout=20, json={"model": "m", "training_file": "file-y"},
                          headers={"x-portkey-api-key": keys["bob"], "Authorization": "Bearer sk-bob-own",
                                   "x-portkey-provider": "openai", "x-portkey-custom-host": evil.url + "/v1"})
    assert r.status_code == 200  # Bob sees what his own server said …
    stored = gw.with_store(lambda store: store.lookup("job", job["id"]))
    assert stored.key_id is not None and stored.snapshot["fine_tuned_model"] is None  # … Alice's record is hers
    assert stored.status == job["status"]


def test_objects_from_the_open_era(team: dict[str, Any]) -> None:
    """Finding 8: a job made while the gateway was open, with a caller's own provider key and no
    connection, has no owner. Once keys exist it is reached only by a request that brings a provider key
    of its own (the provider then checks that key), never through the team connection's secret."""
    gw = team["gw"]
    open_headers = {"x-portkey-provider": "openai", "Authorization": f"Bearer {StandIn.api_key}",
                    "x-portkey-custom-host": team["url"]}
    uploaded = requests.post(gw.url + "/v1/files", headers=open_headers, data={"purpose": "fine-tune"},
                             files={"file": ("t.jsonl", io.BytesIO(TRAIN))}, timeout=20).json()
    made = requests.post(gw.url + "/v1/fine_tuning/jobs", headers=open_headers, timeout=20,
                         json={"model": "gpt-4o-mini", "training_file": uploaded["id"]}).json()
    keys = _keys(gw, team["url"], byok=True)
    assert call(gw, keys["alice"], "GET", f"/v1/fine_tuning/jobs/{made['id']}").status_code == 404
    own = call(gw, keys["bob"], "GET", f"/v1/fine_tuning/jobs/{made['id']}",
               headers={"Authorization": f"Bearer {StandIn.api_key}", "x-portkey-custom-host": team["url"]})
    assert own.status_code == 200 and own.json()["id"] == made["id"]


def test_managed_file_copies_are_not_shared_between_keys(team: dict[str, Any]) -> None:
    """Finding 12: the same bytes uploaded to the gateway's own store by two keys are pushed to the
    provider once per key: Bob's job never names Alice's remote copy."""
    gw, standin = team["gw"], team["standin"]
    keys = _keys(gw, team["url"])

    def managed(key: str) -> str:
        r = requests.post(gw.url + "/v1/files", headers={"x-portkey-api-key": key, "x-portkey-provider": "tunegate"},
                          data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", io.BytesIO(TRAIN))}, timeout=20)
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    jobs = {}
    for who in ("alice", "bob"):
        r = call(gw, keys[who], "POST", "/v1/fine_tuning/jobs", json={"model": "gpt-4o-mini",
                                                                      "training_file": managed(keys[who])})
        assert r.status_code == 200, r.text
        jobs[who] = r.json()["training_file"]
    assert jobs["alice"] != jobs["bob"]
    assert len([f for f in standin.files.values() if f["purpose"] == "fine-tune"]) == 2
