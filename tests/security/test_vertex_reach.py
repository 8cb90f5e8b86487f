"""Vertex AI: what a key on a shared connection reaches by naming it (docs/security.md, rules 3 and 4).

- Tuned-model endpoints. Vertex names an endpoint by the project number and also serves it by the project id
  (`projects/tg-project/…` is `projects/481516234200/…`). Alice's tuned model is recorded under the number (a
  job's `fine_tuned_model`, as Vertex answers it); Bob's project-id spelling must not reach it in chat (plain
  and streamed) or `GET /v1/models/{id}`, and no other spelling (case, a trailing slash, a full URL, a
  leading `/` or `v1/`) may either.
- Files by any bucket. A Vertex file id wraps `gs://{bucket}/{object}`, so a caller can forge one for any object
  the connection's service account can read. With a stored connection's credential a key reaches by id only
  what the request's own bucket and prefix hold (what `GET /v1/files` would list) or what the registry records
  as that key's: another bucket, or the connection's bucket outside its prefix, is the same 404 as a missing
  file, and nothing is read or deleted there.

Alice and Bob are two tunegate keys on one team connection, through the real gateway over sockets against the
Vertex stand-in and gcp-storage-emulator.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, free_port
from tests.standins.vertex import PROJECT_NUMBER
from tests.standins.vertex_chat import VertexChatStandIn
from tunegate.providers import ids

MESSAGES = [{"role": "user", "content": "Hello"}]
TOKEN = "ya29.team-token"
CONNECTION = "team-vx"


def _keys(gw: Gateway, secrets: dict[str, str], base_url: str | None, options: dict[str, Any],
          record: list[tuple[str, str]], *, provider_keys: bool = False) -> dict[str, str]:
    """Alice and Bob on one connection; `record` (kind, id) objects are Alice's, as a create records them."""

    async def work(store: Any) -> dict[str, str]:
        await store.add_connection(CONNECTION, "vertex-ai", secrets, base_url, options)
        alice_key, alice = await store.create_key("alice", [CONNECTION])
        _bob_key, bob = await store.create_key("bob", [CONNECTION], allow_provider_keys=provider_keys)
        for kind, object_id in record:
            await store.record(kind, object_id, "vertex-ai", CONNECTION, alice_key.id, "available", None)
        return {"alice": str(alice), "bob": str(bob)}

    return gw.with_store(work)


def _call(gw: Gateway, key: str, method: str, path: str, headers: dict[str, str] | None = None,
          **kw: Any) -> requests.Response:
    sent = {"x-portkey-api-key": key, "x-portkey-virtual-key": CONNECTION, **(headers or {})}
    return requests.request(method, gw.url + path, headers=sent, timeout=30, **kw)


def _is_404(r: requests.Response) -> bool:
    error = r.json().get("error") if r.headers.get("content-type", "").startswith("application/json") else None
    return r.status_code == 404 and isinstance(error, dict) and set(error) >= {"message", "type", "param", "code"}


def _is_error(r: requests.Response) -> bool:
    """A 4xx in OpenAI's error shape."""
    error = r.json().get("error") if r.headers.get("content-type", "").startswith("application/json") else None
    return 400 <= r.status_code < 500 and isinstance(error, dict) and set(error) >= {"message", "type", "param",
                                                                                      "code"}


# ---- tuned-model endpoints ------------------------------------------------------------------------------

ENDPOINT_ID = "1234567890123456789"
TAIL = f"locations/us-central1/endpoints/{ENDPOINT_ID}"
ENDPOINT = f"projects/{PROJECT_NUMBER}/{TAIL}"  # as Vertex names it, and as Alice's job recorded it
BY_PROJECT_ID = f"projects/tg-project/{TAIL}"  # the same endpoint, by project id
OTHER_SPELLINGS = [
    BY_PROJECT_ID + "/",
    f"Projects/tg-project/{TAIL}",
    f"projects/TG-PROJECT/{TAIL}",
    f"projects/{PROJECT_NUMBER}/locations/US-CENTRAL1/endpoints/{ENDPOINT_ID}",
    "/" + ENDPOINT,
    "v1/" + BY_PROJECT_ID,
    f"https://us-central1-aiplatform.googleapis.com/v1/{BY_PROJECT_ID}",
    f"//us-central1-aiplatform.googleapis.com/{ENDPOINT}",
    ENDPOINT + ":generateContent",
    BY_PROJECT_ID + "?x=1",
    BY_PROJECT_ID + "%2F",
    BY_PROJECT_ID.replace("/", "%2F"),
]


@pytest.fixture
def vertex(tmp_path: Path) -> Iterator[tuple[VertexChatStandIn, Gateway, dict[str, str]]]:
    standin = VertexChatStandIn()
    standin.tokens[TOKEN] = ("team@tg-project.iam.gserviceaccount.com", time.time() + 3600)
    now = "2026-01-01T00:00:00.000000000Z"
    standin.endpoints[ENDPOINT] = {"name": ENDPOINT, "displayName": "alice-ft", "createTime": now, "updateTime": now,
                                   "deployedModels": [{"id": "1", "createTime": now, "model": (
                                       f"projects/{PROJECT_NUMBER}/locations/us-central1/models/77@1")}]}
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        keys = _keys(gw, {"api_key": TOKEN}, upstream.url + "/v1",
                     {"vertex_project_id": "tg-project", "vertex_region": "us-central1"}, [("model", ENDPOINT)])
        yield standin, gw, keys


def _reached(standin: VertexChatStandIn, endpoint_id: str = ENDPOINT_ID) -> list[str]:
    """Upstream requests that named the endpoint (endpoints.get, generateContent, streamGenerateContent)."""
    return [f"{r.method} {r.path}" for r in standin.requests if f"/endpoints/{endpoint_id}" in r.path]


def _generated(standin: VertexChatStandIn, endpoint_id: str = ENDPOINT_ID) -> list[str]:
    return [p for p in _reached(standin, endpoint_id) if "generateContent" in p or "GenerateContent" in p]


@pytest.mark.parametrize("stream", [False, True])
def test_bob_cannot_chat_with_alices_endpoint_by_project_id(
        vertex: tuple[VertexChatStandIn, Gateway, dict[str, str]], stream: bool) -> None:
    standin, gw, keys = vertex
    assert _is_404(_call(gw, keys["bob"], "POST", "/v1/chat/completions",
                         json={"model": ENDPOINT, "messages": MESSAGES, "stream": stream}))
    r = _call(gw, keys["bob"], "POST", "/v1/chat/completions",
              json={"model": BY_PROJECT_ID, "messages": MESSAGES, "stream": stream})
    assert _is_404(r), (r.status_code, r.text)
    assert ENDPOINT not in r.text  # the answer names only the spelling Bob sent
    assert _generated(standin) == []
    # The control: Alice's own project-id spelling is her endpoint, and is served.
    mine = _call(gw, keys["alice"], "POST", "/v1/chat/completions",
                 json={"model": BY_PROJECT_ID, "messages": MESSAGES, "stream": stream})
    assert mine.status_code == 200, mine.text
    assert _generated(standin)


def test_the_canonical_name_is_read_once_and_checked_every_time(
        vertex: tuple[VertexChatStandIn, Gateway, dict[str, str]]) -> None:
    """endpoints.get once per spelling and process; the ownership check on every chat (a kept name is no pass)."""
    standin, gw, keys = vertex
    for _ in range(3):
        assert _is_404(_call(gw, keys["bob"], "POST", "/v1/chat/completions",
                             json={"model": BY_PROJECT_ID, "messages": MESSAGES}))
    for _ in range(2):
        mine = _call(gw, keys["alice"], "POST", "/v1/chat/completions",
                     json={"model": BY_PROJECT_ID, "messages": MESSAGES})
        assert mine.status_code == 200, mine.text
    reads = [p for p in _reached(standin) if p.startswith("GET ")]
    assert len(reads) == 1, reads
    assert len(_generated(standin)) == 2


def test_bob_cannot_retrieve_alices_endpoint_by_project_id(
        vertex: tuple[VertexChatStandIn, Gateway, dict[str, str]]) -> None:
    _standin, gw, keys = vertex
    assert _is_404(_call(gw, keys["bob"], "GET", f"/v1/models/{ENDPOINT}"))
    r = _call(gw, keys["bob"], "GET", f"/v1/models/{BY_PROJECT_ID}")
    assert _is_404(r), (r.status_code, r.text)
    assert ENDPOINT not in r.text
    # The control: Alice retrieves it by either spelling, and hears the canonical name.
    for spelling in (ENDPOINT, BY_PROJECT_ID):
        mine = _call(gw, keys["alice"], "GET", f"/v1/models/{spelling}")
        assert mine.status_code == 200 and mine.json()["id"] == ENDPOINT, mine.text


def test_bob_does_not_see_alices_endpoint_in_the_model_list(
        vertex: tuple[VertexChatStandIn, Gateway, dict[str, str]]) -> None:
    """endpoints.list answers with project numbers, the spelling the registry holds: filtered as recorded."""
    standin, gw, keys = vertex
    bobs = standin.add_endpoint()
    seen = _call(gw, keys["bob"], "GET", "/v1/models")
    assert seen.status_code == 200, seen.text
    assert [m["id"] for m in seen.json()["data"]] == [bobs]
    alices = _call(gw, keys["alice"], "GET", "/v1/models")
    assert sorted(m["id"] for m in alices.json()["data"]) == sorted([ENDPOINT, bobs])


@pytest.mark.parametrize("spelling", OTHER_SPELLINGS)
def test_no_other_spelling_of_alices_endpoint_reaches_it_for_bob(
        vertex: tuple[VertexChatStandIn, Gateway, dict[str, str]], spelling: str) -> None:
    standin, gw, keys = vertex
    for stream in (False, True):
        r = _call(gw, keys["bob"], "POST", "/v1/chat/completions",
                  json={"model": spelling, "messages": MESSAGES, "stream": stream})
        assert _is_error(r), (spelling, r.status_code, r.text)
    r = _call(gw, keys["bob"], "GET", "/v1/models/" + quote(spelling, safe="/:%"))
    assert r.status_code >= 400, (spelling, r.status_code, r.text)
    assert "deployed_models" not in r.text  # (an error may echo the spelling sent, never the endpoint's object)
    assert _generated(standin) == []


def test_bobs_own_endpoint_is_served_by_project_id(
        vertex: tuple[VertexChatStandIn, Gateway, dict[str, str]]) -> None:
    """The control for the check: an endpoint nobody recorded stays an unowned object of the connection."""
    standin, gw, keys = vertex
    bobs = standin.add_endpoint()
    by_id = bobs.replace(f"projects/{PROJECT_NUMBER}/", "projects/tg-project/")
    for stream in (False, True):
        chat = _call(gw, keys["bob"], "POST", "/v1/chat/completions",
                     json={"model": by_id, "messages": MESSAGES, "stream": stream})
        assert chat.status_code == 200, chat.text
    got = _call(gw, keys["bob"], "GET", f"/v1/models/{by_id}")
    assert got.status_code == 200 and got.json()["id"] == bobs, got.text


# ---- files by any bucket -------------------------------------------------------------------------------------

BUCKET = "tg-training-data"  # the connection's bucket; the prefix is the default, tunegate/
SECRETS_BUCKET = "ops-secrets"  # another bucket the service account can read
SECRET = b'{"terraform": "state", "password": "hunter2"}'


def _fid(uri: str) -> str:
    return ids.encode("file", uri)


ALICE_FILE = _fid(f"gs://{BUCKET}/tunegate/0000000000001-aaaaaaaa/alice.jsonl")  # uploaded by Alice
ALICE_OLD = _fid(f"gs://{SECRETS_BUCKET}/old-prefix/alice-before.jsonl")  # Alice's, from before the bucket changed
SHARED = _fid(f"gs://{BUCKET}/tunegate/0000000000002-bbbbbbbb/shared.jsonl")  # in scope, made elsewhere
FORGED = {
    "another bucket": _fid(f"gs://{SECRETS_BUCKET}/terraform.tfstate"),
    "outside the prefix": _fid(f"gs://{BUCKET}/private/hr.csv"),
    "a prefix look-alike": _fid(f"gs://{BUCKET}/tunegate-private/hr.csv"),
    "a bucket look-alike": _fid(f"gs://{BUCKET}x/tunegate/0000000000002-bbbbbbbb/shared.jsonl"),
}


class Gcs:
    def __init__(self, url: str) -> None:
        self.url = url

    def bucket(self, name: str) -> None:
        requests.post(f"{self.url}/storage/v1/b", params={"project": "tg-project"}, json={"name": name},
                      timeout=10).raise_for_status()

    def put(self, file_id: str, data: bytes) -> None:
        bucket, name = _uri(file_id)
        requests.post(f"{self.url}/upload/storage/v1/b/{bucket}/o", params={"uploadType": "media", "name": name},
                      data=data, headers={"Content-Type": "application/octet-stream"}, timeout=10).raise_for_status()

    def read(self, file_id: str) -> bytes | None:
        bucket, name = _uri(file_id)
        r = requests.get(f"{self.url}/storage/v1/b/{bucket}/o/{quote(name, safe='')}", params={"alt": "media"},
                         timeout=10)
        return r.content if r.status_code == 200 else None


def _uri(file_id: str) -> tuple[str, str]:
    bucket, _, name = ids.decode("file", file_id, "file").removeprefix("gs://").partition("/")
    return bucket, name


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Gcs, Gateway, dict[str, str]]]:
    emulator = pytest.importorskip("gcp_storage_emulator.server")  # only the file tests need it
    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        gcs = Gcs(f"http://127.0.0.1:{port}")
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        for bucket in (SECRETS_BUCKET, BUCKET + "x"):
            gcs.bucket(bucket)
        for file_id in (ALICE_FILE, ALICE_OLD, SHARED, *FORGED.values()):
            gcs.put(file_id, SECRET)
        with Gateway(tmp_path / "data") as gw:
            keys = _keys(gw, {"api_key": TOKEN}, None, {"vertex_project_id": "tg-project",
                                                        "vertex_storage_bucket_name": BUCKET},
                         [("file", ALICE_FILE), ("file", ALICE_OLD)], provider_keys=True)
            yield gcs, gw, keys
    finally:
        server.stop()


@pytest.mark.parametrize("where", list(FORGED))
def test_a_forged_file_id_outside_the_connections_bucket_and_prefix_is_a_404(
        files: tuple[Gcs, Gateway, dict[str, str]], where: str) -> None:
    gcs, gw, keys = files
    forged = FORGED[where]
    for who in ("bob", "alice"):  # neither recorded it: neither reaches it through the connection's credential
        for method, path in (("GET", f"/v1/files/{forged}"), ("GET", f"/v1/files/{forged}/content"),
                             ("DELETE", f"/v1/files/{forged}")):
            r = _call(gw, keys[who], method, path)
            assert _is_404(r), (who, method, path, r.status_code, r.text)
            assert b"hunter2" not in r.content
    assert gcs.read(forged) == SECRET  # nothing was deleted
    listed = _call(gw, keys["bob"], "GET", "/v1/files")
    assert forged not in {f["id"] for f in listed.json()["data"]}


def test_files_in_the_connections_bucket_and_prefix_stay_reachable(
        files: tuple[Gcs, Gateway, dict[str, str]]) -> None:
    """The controls: an unrecorded file in the connection's own bucket and prefix is an unowned object of the
    connection (any granted key reaches it); a recorded one is its owner's, wherever it lies."""
    gcs, gw, keys = files
    got = _call(gw, keys["bob"], "GET", f"/v1/files/{SHARED}")
    assert got.status_code == 200 and got.json()["id"] == SHARED, got.text
    assert _call(gw, keys["bob"], "GET", f"/v1/files/{SHARED}/content").content == SECRET
    for file_id in (ALICE_FILE, ALICE_OLD):
        assert _is_404(_call(gw, keys["bob"], "GET", f"/v1/files/{file_id}"))
        mine = _call(gw, keys["alice"], "GET", f"/v1/files/{file_id}/content")
        assert mine.status_code == 200 and mine.content == SECRET, mine.text
    assert _call(gw, keys["alice"], "DELETE", f"/v1/files/{ALICE_OLD}").json()["deleted"] is True
    assert gcs.read(ALICE_OLD) is None


def test_a_locked_bucket_cannot_be_widened_by_a_header(files: tuple[Gcs, Gateway, dict[str, str]]) -> None:
    """The connection sets the bucket: the header that would change it is a 403 option_locked, so the scope a
    file id is held to cannot be moved either."""
    _gcs, gw, keys = files
    forged = FORGED["another bucket"]
    r = _call(gw, keys["bob"], "GET", f"/v1/files/{forged}",
              headers={"x-portkey-vertex-storage-bucket-name": SECRETS_BUCKET})
    assert r.status_code == 403 and r.json()["error"]["code"] == "option_locked", r.text


def test_a_callers_own_provider_key_is_not_held_to_the_connections_bucket(
        files: tuple[Gcs, Gateway, dict[str, str]]) -> None:
    """With its own credential (a key allowed to bring one) the caller reaches what that credential reaches:
    Cloud Storage decides, as on an open gateway."""
    _gcs, gw, keys = files
    forged = FORGED["another bucket"]
    r = _call(gw, keys["bob"], "GET", f"/v1/files/{forged}/content", headers={"Authorization": "Bearer ya29.bobs-own"})
    assert r.status_code == 200 and r.content == SECRET, r.text
