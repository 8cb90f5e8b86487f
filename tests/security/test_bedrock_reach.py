"""Bedrock: a file id names any S3 object, so a key on a shared connection reaches by id only what it may
(docs/security.md, rule 4, "A file id that wraps a storage URI").

A Bedrock file id wraps `s3://{bucket}/{key}`, so a caller can forge one for any object the connection's AWS
keys (or the role they assume) can read or delete. With a stored connection's credential a key reaches by id
only what `GET /v1/files` lists for the request (the connection's bucket, under `{prefix}/files/`, in the form
an upload names keys) or what the registry records as that key's own: another bucket, the connection's
bucket outside the prefix or its `files/`, or a key with dot segments is the same 404 as a missing file for
retrieve, download and delete, and no request at all goes out. A caller's own credential is limited by S3
alone.

Alice and Bob are two tunegate keys on one team connection, through the real gateway over sockets against moto
(S3 in server mode); every request the gateway sends upstream is recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gateway import Gateway
from tunegate.providers import ids

boto3 = pytest.importorskip("boto3")

CONNECTION = "team-br"
BUCKET = "tunegate-train"  # the connection's bucket, prefix "team": files under team/files/
SECRETS_BUCKET = "ops-secrets"  # another bucket the connection's keys can read
SECRET = b'{"terraform": "state", "password": "hunter2"}'
STAMP = "9998230000000"  # an upload's key: {_STAMP_MAX - ms:013d}{8 hex}/{purpose}/{name}


def _fid(bucket: str, key: str) -> str:
    return ids.encode("file", f"s3://{bucket}/{key}")


ALICE_FILE = _fid(BUCKET, f"team/files/{STAMP}aaaaaaaa/fine-tune/alice.jsonl")  # uploaded by Alice
# Alice's, uploaded while the connection named another bucket: hers, wherever it lies.
ALICE_OLD = _fid(SECRETS_BUCKET, f"old/files/{STAMP}cccccccc/fine-tune/alice-before.jsonl")
SHARED = _fid(BUCKET, f"team/files/{STAMP}bbbbbbbb/fine-tune/shared.jsonl")  # in scope, made elsewhere
FORGED = {
    "another bucket": _fid(SECRETS_BUCKET, "terraform.tfstate"),
    "another bucket, shaped as a file": _fid(SECRETS_BUCKET, f"team/files/{STAMP}dddddddd/fine-tune/x.jsonl"),
    "a bucket look-alike": _fid(BUCKET + "x", f"team/files/{STAMP}bbbbbbbb/fine-tune/shared.jsonl"),
    "outside the prefix": _fid(BUCKET, "private/hr.csv"),
    "another prefix's files": _fid(BUCKET, f"private/files/{STAMP}eeeeeeee/fine-tune/hr.jsonl"),
    "a prefix look-alike": _fid(BUCKET, f"team-private/files/{STAMP}eeeeeeee/fine-tune/hr.jsonl"),
    "the prefix, outside files/": _fid(BUCKET, f"team/outputs/job-1/files/{STAMP}ffffffff/fine-tune/out.jsonl"),
    "files/, not an upload's key": _fid(BUCKET, "team/files/hr.csv"),
    "dot segments": _fid(BUCKET, f"team/files/{STAMP}bbbbbbbb/../../../private/files/{STAMP}eeeeeeee/x/y"),
}
ROUTES = (("GET", "/v1/files/{}"), ("GET", "/v1/files/{}/content"), ("DELETE", "/v1/files/{}"))


@dataclass
class Team:
    gw: Gateway
    keys: dict[str, str]
    s3: Any
    sent: list[str] = field(default_factory=list)  # every upstream request: "METHOD url"
    signers: list[str] = field(default_factory=list)  # the access key id each SigV4 request was signed with

    def call(self, who: str, method: str, path: str, headers: dict[str, str] | None = None) -> requests.Response:
        sent = {"x-portkey-api-key": self.keys[who], "x-portkey-virtual-key": CONNECTION, **(headers or {})}
        return requests.request(method, self.gw.url + path, headers=sent, timeout=30)

    def stored(self, file_id: str) -> bytes | None:
        bucket, _, key = ids.decode("file", file_id).removeprefix("s3://").partition("/")
        try:
            return bytes(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except self.s3.exceptions.NoSuchKey:
            return None


def _record_upstream(gw: Gateway, team: Team) -> None:
    """Record every request the gateway sends (S3 calls and downloads alike), then send it."""
    upstream = gw.services.resolver.upstream
    request, open_ = upstream.request, upstream.open

    def record(method: str, url: Any, headers: Any) -> None:
        team.sent.append(f"{method} {url}")
        auth = str((headers or {}).get("Authorization", ""))
        if "Credential=" in auth:
            team.signers.append(auth.split("Credential=", 1)[1].split("/", 1)[0])

    async def recorded_request(method: str, url: Any, *args: Any, **kw: Any) -> Any:
        record(method, url, kw.get("headers"))
        return await request(method, url, *args, **kw)

    async def recorded_open(method: str, url: Any, *args: Any, **kw: Any) -> Any:
        record(method, url, kw.get("headers"))
        return await open_(method, url, *args, **kw)

    upstream.request, upstream.open = recorded_request, recorded_open


@pytest.fixture
def team(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Team]:
    requests.post(moto_url + "/moto-api/reset", timeout=5)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_BEDROCK", "AWS_ENDPOINT_URL_STS"):
        monkeypatch.delenv(name, raising=False)
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="AKIAMOTO",
                      aws_secret_access_key="moto-secret")
    for bucket in (BUCKET, SECRETS_BUCKET, BUCKET + "x"):
        s3.create_bucket(Bucket=bucket)
    for file_id in (ALICE_FILE, ALICE_OLD, SHARED, *FORGED.values()):
        bucket, _, key = ids.decode("file", file_id).removeprefix("s3://").partition("/")
        s3.put_object(Bucket=bucket, Key=key, Body=SECRET)

    with Gateway(tmp_path / "data") as gw:
        async def work(store: Any) -> dict[str, str]:
            await store.add_connection(CONNECTION, "bedrock", {"aws_access_key_id": "AKIATEAM0000000001",
                                                               "aws_secret_access_key": "team/secret"},
                                       None, {"aws_region": "us-east-1", "aws_s3_bucket": f"{BUCKET}/team"})
            alice_key, alice = await store.create_key("alice", [CONNECTION])
            _bob_key, bob = await store.create_key("bob", [CONNECTION], allow_provider_keys=True)
            for file_id in (ALICE_FILE, ALICE_OLD):  # as Alice's uploads through the gateway recorded them
                await store.record("file", file_id, "bedrock", CONNECTION, alice_key.id, "processed", None)
            return {"alice": str(alice), "bob": str(bob)}

        team = Team(gw, gw.with_store(work), s3)
        _record_upstream(gw, team)
        yield team


def _is_404(r: requests.Response) -> bool:
    error = r.json().get("error") if r.headers.get("content-type", "").startswith("application/json") else None
    return r.status_code == 404 and isinstance(error, dict) and set(error) >= {"message", "type", "param", "code"}


@pytest.mark.parametrize("where", list(FORGED))
def test_a_forged_file_id_outside_the_connections_bucket_and_prefix_is_a_404_and_sends_nothing(
        team: Team, where: str) -> None:
    forged = FORGED[where]
    for who in ("bob", "alice"):  # neither recorded it: neither reaches it through the connection's keys
        for method, path in ROUTES:
            r = team.call(who, method, path.format(forged))
            assert _is_404(r), (who, method, path, r.status_code, r.text)
            assert b"hunter2" not in r.content
            assert r.json()["error"]["message"] == f"No such file: '{forged}'.", r.text  # as a missing file's
    assert team.sent == []  # no HEAD, GET or DELETE went out
    assert team.stored(forged) == SECRET  # nothing was deleted
    listed = team.call("bob", "GET", "/v1/files")
    assert listed.status_code == 200, listed.text
    assert forged not in {f["id"] for f in listed.json()["data"]}


def test_files_in_the_connections_bucket_and_prefix_stay_reachable(team: Team) -> None:
    """The controls: an unrecorded file the connection's listing holds is an unowned object of the connection
    (any granted key reaches it); a recorded one is its owner's, wherever it lies."""
    got = team.call("bob", "GET", f"/v1/files/{SHARED}")
    assert got.status_code == 200 and got.json()["id"] == SHARED, got.text
    assert SHARED in {f["id"] for f in team.call("bob", "GET", "/v1/files").json()["data"]}
    content = team.call("bob", "GET", f"/v1/files/{SHARED}/content")
    assert content.status_code == 200 and content.content == SECRET, content.text
    for file_id in (ALICE_FILE, ALICE_OLD):
        for method, path in ROUTES:
            assert _is_404(team.call("bob", method, path.format(file_id)))  # Alice's, not Bob's
        mine = team.call("alice", "GET", f"/v1/files/{file_id}")
        assert mine.status_code == 200 and mine.json()["id"] == file_id, mine.text
        mine = team.call("alice", "GET", f"/v1/files/{file_id}/content")
        assert mine.status_code == 200 and mine.content == SECRET, mine.text
    assert ids.decode("file", ALICE_OLD).removeprefix("s3:/") in " ".join(team.sent)  # read where it lies
    assert set(team.signers) == {"AKIATEAM0000000001"}  # with the connection's keys
    assert team.call("alice", "DELETE", f"/v1/files/{ALICE_OLD}").json()["deleted"] is True
    assert team.stored(ALICE_OLD) is None
    assert team.call("bob", "DELETE", f"/v1/files/{SHARED}").json()["deleted"] is True
    assert team.stored(SHARED) is None


def test_an_upload_through_the_connection_stays_reachable_by_its_id(team: Team) -> None:
    r = requests.post(team.gw.url + "/v1/files", headers={"x-portkey-api-key": team.keys["bob"],
                                                           "x-portkey-virtual-key": CONNECTION,
                                                           "x-portkey-bedrock-data-format": "none"},
                      files={"file": ("mine.jsonl", b'{"prompt": "a", "completion": "b"}\n')},
                      data={"purpose": "fine-tune"}, timeout=30)
    assert r.status_code == 200, r.text
    uploaded = r.json()["id"]
    assert ids.decode("file", uploaded).startswith(f"s3://{BUCKET}/team/files/")
    for method, path in ROUTES:
        assert team.call("bob", method, path.format(uploaded)).status_code == 200


def test_a_locked_bucket_cannot_be_widened_by_a_header(team: Team) -> None:
    """The connection sets the bucket: the header that would change it is a 403 option_locked, so the scope a
    file id is held to cannot be moved to another bucket either."""
    forged = FORGED["another bucket, shaped as a file"]
    r = team.call("bob", "GET", f"/v1/files/{forged}", headers={"x-portkey-aws-s3-bucket": f"{SECRETS_BUCKET}/team"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "option_locked", r.text
    assert team.sent == []


def test_a_callers_own_credential_is_not_held_to_the_connections_bucket(team: Team) -> None:
    """With a credential of its own (a key allowed to bring one, which then replaces the stored secrets) the
    caller reaches what its AWS keys reach: S3 decides, as on an open gateway."""
    forged = FORGED["another bucket, shaped as a file"]
    own = {"Authorization": "Bearer bobs-own-bedrock-key", "x-portkey-aws-access-key-id": "AKIABOBSOWN000000001",
           "x-portkey-aws-secret-access-key": "bobs/own/secret"}
    got = team.call("bob", "GET", f"/v1/files/{forged}/content", headers=own)
    assert got.status_code == 200 and got.content == SECRET, got.text
    assert team.sent and all(ids.decode("file", forged).removeprefix("s3:/") in s for s in team.sent)
    assert set(team.signers) == {"AKIABOBSOWN000000001"}  # Bob's keys, never the connection's
    assert team.call("bob", "DELETE", f"/v1/files/{forged}", headers=own).json()["deleted"] is True
    assert team.stored(forged) is None
