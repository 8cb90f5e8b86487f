"""Ids are canonicalised before ownership is checked (docs/security.md, rule 3): a second spelling of
another key's object names nothing, and a malformed cursor is a 400, never a 500.

- Fireworks: a bare model id (`alice-ft`) is the caller's account's model, `accounts/{account}/models/alice-ft`;
  Bob's bare spelling of Alice's recorded model must not reach it (retrieve, delete, deploy, chat).
- Vertex AI: a job's resource name may carry the project id or the project number, and Vertex answers either with
  the number; Bob's project-id spelling of Alice's job (recorded under the number) must not reach it (retrieve,
  events, checkpoints, cancel).
- Together and local: event and checkpoint cursors carry a number; a Unicode digit (`²`) or one past what SQLite
  holds is a 400 naming `after`.

Alice and Bob are two tunegate keys on one team connection, through the real gateway over sockets against the
provider stand-ins.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gateway import Gateway
from tests.standins.fireworks import FireworksStandIn, rfc3339
from tests.standins.openai_like import ServerThread
from tests.standins.together import TogetherStandIn
from tests.standins.vertex import PROJECT_NUMBER, VertexStandIn
from tunegate.providers import ids

MESSAGES = [{"role": "user", "content": "Hello"}]


def _keys(gw: Gateway, connection: str, provider: str, secrets: dict[str, str], base_url: str,
          options: dict[str, Any], record: list[tuple[str, str]]) -> dict[str, str]:
    """Alice and Bob on one connection; `record` (kind, id) objects are Alice's, as a create records them."""

    async def work(store: Any) -> dict[str, str]:
        await store.add_connection(connection, provider, secrets, base_url, options)
        alice_key, alice = await store.create_key("alice", [connection])
        _bob_key, bob = await store.create_key("bob", [connection])
        for kind, object_id in record:
            await store.record(kind, object_id, provider, connection, alice_key.id, "running", None)
        return {"alice": str(alice), "bob": str(bob)}

    return gw.with_store(work)


def _call(gw: Gateway, key: str, connection: str, method: str, path: str, **kw: Any) -> requests.Response:
    headers = {"x-portkey-api-key": key, "x-portkey-virtual-key": connection}
    return requests.request(method, gw.url + path, headers=headers, timeout=30, **kw)


def _is_404(r: requests.Response) -> bool:
    error = r.json().get("error") if r.headers.get("content-type", "").startswith("application/json") else None
    return r.status_code == 404 and isinstance(error, dict) and set(error) >= {"message", "type", "param", "code"}


# ---- Fireworks: `alice-ft` is `accounts/team/models/alice-ft` -------------------------------------------

FW_ACCOUNT = "team"
FW_MODEL = f"accounts/{FW_ACCOUNT}/models/alice-ft"


@pytest.fixture
def fireworks(tmp_path: Path) -> Iterator[tuple[FireworksStandIn, Gateway, dict[str, str]]]:
    standin = FireworksStandIn(account=FW_ACCOUNT, deployments={f"accounts/{FW_ACCOUNT}/deployments/base"})
    # Alice's tuned model: her job's output, deployed, so a chat naming it answers.
    standin.jobs["alice-ft"] = {"name": f"accounts/{FW_ACCOUNT}/supervisedFineTuningJobs/alice-ft",
                                "state": "JOB_STATE_COMPLETED", "outputModel": FW_MODEL,
                                "completedTime": rfc3339(time.time()),
                                "baseModel": "accounts/fireworks/models/llama-v3p1-8b-instruct"}
    standin.deployed[f"accounts/{FW_ACCOUNT}/deployedModels/alice"] = {
        "name": f"accounts/{FW_ACCOUNT}/deployedModels/alice", "model": FW_MODEL,
        "deployment": f"accounts/{FW_ACCOUNT}/deployments/base", "default": True, "state": "DEPLOYED"}
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        keys = _keys(gw, "team-fw", "fireworks-ai", {"api_key": standin.api_key}, upstream.url + "/v1",
                     {"fireworks_account_id": FW_ACCOUNT}, [("model", FW_MODEL)])
        yield standin, gw, keys


def _reached_alices_model(standin: FireworksStandIn) -> list[str]:
    """Upstream requests that named Alice's model (a control-plane path, or the model of a chat)."""
    return [f"{r.method} {r.path}" for r in standin.requests
            if r.path.endswith("/models/alice-ft") or r.path.endswith("/deployedModels")
            or (r.path.endswith("/chat/completions") and b"alice-ft" in r.body)]


def test_fireworks_bob_cannot_retrieve_alices_model_by_its_bare_id(
        fireworks: tuple[FireworksStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, keys = fireworks
    assert _is_404(_call(gw, keys["bob"], "team-fw", "GET", f"/v1/models/{FW_MODEL}"))
    r = _call(gw, keys["bob"], "team-fw", "GET", "/v1/models/alice-ft")
    assert _is_404(r), (r.status_code, r.text)
    assert _reached_alices_model(standin) == []
    # The control: the bare id is still the caller's account's model, for its owner …
    got = _call(gw, keys["alice"], "team-fw", "GET", "/v1/models/alice-ft")
    assert got.status_code == 200 and got.json()["id"] == FW_MODEL, got.text
    # … and for Bob, a bare id of a model nobody recorded goes on to Fireworks (which has none here).
    standin.requests.clear()
    assert _call(gw, keys["bob"], "team-fw", "GET", "/v1/models/bob-ft").status_code == 404
    assert [q.path for q in standin.requests] == [f"/v1/accounts/{FW_ACCOUNT}/models/bob-ft"]


def test_fireworks_bob_cannot_delete_alices_model_by_its_bare_id(
        fireworks: tuple[FireworksStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, keys = fireworks
    r = _call(gw, keys["bob"], "team-fw", "DELETE", "/v1/models/alice-ft")
    assert _is_404(r), (r.status_code, r.text)
    assert standin.deleted_models == set() and _reached_alices_model(standin) == []
    owners = gw.with_store(lambda store: store.owners("model", [FW_MODEL]))
    assert owners[FW_MODEL] is not None  # Alice's record is untouched


def test_fireworks_bob_cannot_deploy_alices_model_by_its_bare_id(
        fireworks: tuple[FireworksStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, keys = fireworks
    r = _call(gw, keys["bob"], "team-fw", "POST", "/v1/models/alice-ft/deploy", json={"deployment": "base"})
    assert _is_404(r), (r.status_code, r.text)
    assert _reached_alices_model(standin) == []


@pytest.mark.parametrize("stream", [False, True])
def test_fireworks_bob_cannot_chat_with_alices_model_by_its_bare_id(
        fireworks: tuple[FireworksStandIn, Gateway, dict[str, str]], stream: bool) -> None:
    standin, gw, keys = fireworks
    r = _call(gw, keys["bob"], "team-fw", "POST", "/v1/chat/completions",
              json={"model": "alice-ft", "messages": MESSAGES, "stream": stream})
    assert _is_404(r), (r.status_code, r.text)
    assert _reached_alices_model(standin) == []
    # The control: Alice's own bare id reaches her model.
    chat = _call(gw, keys["alice"], "team-fw", "POST", "/v1/chat/completions",
                 json={"model": "alice-ft", "messages": MESSAGES, "stream": stream})
    assert chat.status_code == 200, chat.text
    assert _reached_alices_model(standin)


# ---- Vertex AI: `projects/tg-project/…` is `projects/481516234200/…` --------------------------------------

VX_TOKEN = "ya29.team-token"
VX_TAIL = "locations/us-central1/tuningJobs/7000000000000000001"
VX_NAME = f"projects/{PROJECT_NUMBER}/{VX_TAIL}"  # as Vertex names it, and as it was recorded
VX_JOB = ids.encode("ftjob", VX_NAME)
VX_ALIAS = ids.encode("ftjob", f"projects/tg-project/{VX_TAIL}")  # the same job, by project id


@pytest.fixture
def vertex(tmp_path: Path) -> Iterator[tuple[VertexStandIn, Gateway, dict[str, str]]]:
    standin = VertexStandIn()
    standin.tokens[VX_TOKEN] = ("team@tg-project.iam.gserviceaccount.com", time.time() + 3600)
    standin.jobs[VX_NAME] = {"name": VX_NAME, "state": "JOB_STATE_QUEUED", "baseModel": "gemini-2.5-flash",
                             "createTime": "2026-01-01T00:00:00.000000000Z",
                             "updateTime": "2026-01-01T00:00:00.000000000Z",
                             "supervisedTuningSpec": {"trainingDatasetUri": "gs://team/alice.jsonl"}}
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        keys = _keys(gw, "team-vx", "vertex-ai", {"api_key": VX_TOKEN}, upstream.url + "/v1",
                     {"vertex_project_id": "tg-project", "vertex_region": "us-central1"}, [("job", VX_JOB)])
        yield standin, gw, keys


@pytest.mark.parametrize("suffix", ["", "/events", "/checkpoints"])
def test_vertex_bob_cannot_read_alices_job_by_project_id(
        vertex: tuple[VertexStandIn, Gateway, dict[str, str]], suffix: str) -> None:
    _standin, gw, keys = vertex
    assert _is_404(_call(gw, keys["bob"], "team-vx", "GET", f"/v1/fine_tuning/jobs/{VX_JOB}{suffix}"))
    r = _call(gw, keys["bob"], "team-vx", "GET", f"/v1/fine_tuning/jobs/{VX_ALIAS}{suffix}")
    assert _is_404(r), (r.status_code, r.text)
    # The control: the name Vertex answers with is Alice's own, so her project-id spelling is served.
    mine = _call(gw, keys["alice"], "team-vx", "GET", f"/v1/fine_tuning/jobs/{VX_ALIAS}{suffix}")
    assert mine.status_code == 200, mine.text


def test_vertex_bob_cannot_cancel_alices_job_by_project_id(
        vertex: tuple[VertexStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, keys = vertex
    r = _call(gw, keys["bob"], "team-vx", "POST", f"/v1/fine_tuning/jobs/{VX_ALIAS}/cancel")
    assert _is_404(r), (r.status_code, r.text)
    assert [q.path for q in standin.requests if q.method == "POST"] == []  # no :cancel went out
    assert standin.jobs[VX_NAME]["state"] != "JOB_STATE_CANCELLING"
    # The control: Alice cancels her own job by the same spelling.
    mine = _call(gw, keys["alice"], "team-vx", "POST", f"/v1/fine_tuning/jobs/{VX_ALIAS}/cancel")
    assert mine.status_code == 200 and mine.json()["id"] == VX_JOB, mine.text
    assert standin.jobs[VX_NAME]["state"] in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED")


# ---- Together and local: cursors with Unicode digits or huge numbers ------------------------------------------

TG_JOB = "ft-3f2a9c1e-7b4d-4e8a-9c2f-1a2b3c4d5e6f"


@pytest.fixture
def together(tmp_path: Path) -> Iterator[tuple[Gateway, dict[str, str]]]:
    standin = TogetherStandIn()
    # A running job: one event and one checkpoint (a cursor is only read against a list that has items).
    standin.jobs[TG_JOB] = {"id": TG_JOB, "status": "running", "_events": []}
    standin._event(standin.jobs[TG_JOB], "JOB_PENDING", "Fine tune request created")
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        yield gw, {"x-portkey-provider": "together", "x-portkey-custom-host": upstream.url + "/v1",
                   "Authorization": f"Bearer {standin.api_key}"}


def _bad_cursor(r: requests.Response) -> bool:
    error = r.json().get("error") if r.headers.get("content-type", "").startswith("application/json") else None
    return (r.status_code == 400 and isinstance(error, dict) and error.get("param") == "after"
            and set(error) >= {"message", "type", "param", "code"})


@pytest.mark.parametrize("path, after", [
    ("events", f"ftevent-{TG_JOB}-\u00b2"),
    ("events", f"ftevent-{TG_JOB}-\u0663"),  # ARABIC-INDIC DIGIT THREE: int() reads it, the id grammar does not
    ("checkpoints", f"ftckpt-{TG_JOB}-\u00b2"),
    ("checkpoints", f"ftckpt-{TG_JOB}-\u00b2-final"),
])
def test_together_cursor_with_unicode_digits_is_a_400(together: tuple[Gateway, dict[str, str]], path: str,
                                                      after: str) -> None:
    gw, headers = together
    r = requests.get(f"{gw.url}/v1/fine_tuning/jobs/{TG_JOB}/{path}", params={"after": after}, headers=headers,
                     timeout=30)
    assert _bad_cursor(r), (r.status_code, r.text)


LOCAL_JOB = "ftjob-00000000000000000000000000"


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[Gateway, dict[str, str]]]:
    from tunegate.localjobs import JobDB

    with Gateway(tmp_path / "data") as gw:
        row = dict(id=LOCAL_JOB, key_id=None, status="failed", model="tiny", training_file="file-x",
                   validation_file=None, method={"type": "supervised", "supervised": {"hyperparameters": {}}},
                   hyperparameters={}, seed=1, suffix=None, metadata=None, fine_tuned_model=None, trained_tokens=None,
                   error=None, result_files=[], created_at=1, started_at=None, finished_at=2, estimated_finish=None,
                   claimed_by=None, heartbeat_at=None, pid=None, attempts=0, resume_from=None, output_dir=None,
                   cancel_requested=False, pause_requested=False, paused=False)

        async def insert(store: Any) -> None:
            db = JobDB(store.engine)
            await db.insert_job(row)
            await db.add_events(LOCAL_JOB, [{"message": "Created"}, {"message": "Failed"}])

        gw.with_store(insert)
        yield gw, {"x-portkey-provider": "local"}


@pytest.mark.parametrize("path, after", [
    ("events", "ftevent-\u00b2"),
    ("events", "ftevent-99999999999999999999"),  # past SQLite's 64-bit integers
    ("events", "ftevent-1234567890123456789"),  # 19 digits: longer than any sequence number
    ("checkpoints", "ftckpt-00000000000000000000000000-\u00b2"),
    ("checkpoints", "ftckpt-00000000000000000000000000-99999999999999999999"),
])
def test_local_cursor_with_unicode_digits_or_huge_numbers_is_a_400(local: tuple[Gateway, dict[str, str]], path: str,
                                                                   after: str) -> None:
    gw, headers = local
    r = requests.get(f"{gw.url}/v1/fine_tuning/jobs/{LOCAL_JOB}/{path}", params={"after": after}, headers=headers,
                     timeout=30)
    assert _bad_cursor(r), (r.status_code, r.text)
    # The control: an id from the list still pages on.
    rest = requests.get(f"{gw.url}/v1/fine_tuning/jobs/{LOCAL_JOB}/events", params={"after": "ftevent-2"},
                        headers=headers, timeout=30)
    assert rest.status_code == 200 and [e["message"] for e in rest.json()["data"]] == ["Created"], rest.text
