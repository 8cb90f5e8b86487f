"""A stored secret goes only to its own host, and reaches only what the connection says (docs/security.md,
rule 2): options a request may not change with a stored connection's credential.

- **The role the stored AWS keys assume.** `x-portkey-aws-role-arn` (and `x-portkey-aws-external-id`) decide
  which identity the connection's keys become. With the connection's stored keys a header is honoured only
  when it names the connection's own value (an option, or a secret of that name) or the connection lists the
  option in `client_options`; otherwise it is a 403 `option_locked`, whether the connection keeps its role as
  a secret or sets none at all, and no AssumeRole goes out.
- **The prefix of a locked bucket.** A connection that fixes the bucket fixes the prefix with it (Bedrock's
  `aws_s3_bucket: "bucket/prefix"`, Vertex's `vertex_storage_bucket_name`): a prefix header naming another
  prefix than the connection's (or the default) is a 403 `option_locked`, so neither a listing nor a file id
  reaches another prefix of the bucket.

The controls: the connection's own value in the header passes; the same headers from a caller with its own
credentials (a key allowed to bring one, on no stored secret) are honoured.

Through the real gateway over sockets against moto (S3 and STS in server mode) and gcp-storage-emulator; every
request the gateway sends upstream is recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests

from tests.gateway import Gateway
from tests.standins.openai_like import free_port
from tunegate.providers import REGISTRY, ids
from tunegate.providers.bedrock import aws

SECRET = b'{"terraform": "state", "password": "hunter2"}'


def _error(r: requests.Response) -> dict[str, Any]:
    assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text)
    error = r.json().get("error")
    assert isinstance(error, dict) and set(error) >= {"message", "type", "param", "code"}, r.text
    return error


def _locked(r: requests.Response, header: str) -> dict[str, Any]:
    """A 403 option_locked on `header`, in OpenAI's error shape (the shape without its message)."""
    assert r.status_code == 403, (r.status_code, r.text)
    error = _error(r)
    assert error["code"] == "option_locked" and error["param"] == header, r.text
    return {k: v for k, v in error.items() if k != "message"}


# ---- Bedrock ---------------------------------------------------------------------------------------------

boto3 = pytest.importorskip("boto3")

BUCKET = "tunegate-train"
TEAM_ROLE = "arn:aws:iam::123456789012:role/team-bedrock"
OTHER_ROLE = "arn:aws:iam::123456789012:role/ops-admin"  # a role the team's keys can also assume
TEAM_KEY = "AKIATEAM0000000001"
BOB_KEY = "AKIABOBSOWN000000001"
STAMP = "9998230000000"  # an upload's key: {_STAMP_MAX - ms:013d}{8 hex}/{purpose}/{name}
REGION = {"aws_region": "us-east-1"}
TEAM_KEYS = {"aws_access_key_id": TEAM_KEY, "aws_secret_access_key": "team/secret"}


def _s3_fid(key: str) -> str:
    return ids.encode("file", f"s3://{BUCKET}/{key}")


TEAM_FILE = _s3_fid(f"team/files/{STAMP}aaaaaaaa/fine-tune/team.jsonl")  # under the connection's prefix
PRIVATE_FILE = _s3_fid(f"private/files/{STAMP}bbbbbbbb/fine-tune/hr.jsonl")  # another prefix of that bucket
DEFAULT_FILE = _s3_fid(f"tunegate/files/{STAMP}cccccccc/fine-tune/plain.jsonl")  # under the default prefix

# Connection name -> (secrets, options).
CONNECTIONS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    # The role and its external id kept as secrets.
    "role-secret": ({**TEAM_KEYS, "aws_role_arn": TEAM_ROLE, "aws_external_id": "team-ext"},
                    {**REGION, "aws_s3_bucket": f"{BUCKET}/team"}),
    # No role at all: the keys sign as themselves.
    "no-role": (TEAM_KEYS, {**REGION, "aws_s3_bucket": f"{BUCKET}/team"}),
    # The role as an option (locked before this rule too: the shape to match).
    "role-option": (TEAM_KEYS, {**REGION, "aws_role_arn": TEAM_ROLE, "aws_s3_bucket": f"{BUCKET}/team"}),
    # The operator lets callers choose the role.
    "role-open": ({**TEAM_KEYS, "aws_role_arn": TEAM_ROLE},
                  {**REGION, "aws_s3_bucket": f"{BUCKET}/team", "client_options": ["aws_role_arn"]}),
    # A bucket with no prefix in it: the prefix is the default, `tunegate`.
    "plain-bucket": (TEAM_KEYS, {**REGION, "aws_s3_bucket": BUCKET}),
    # No bucket: a request names its own (and its prefix).
    "no-bucket": (TEAM_KEYS, REGION),
}


@dataclass
class Aws:
    gw: Gateway
    keys: dict[str, str]
    sent: list[str] = field(default_factory=list)  # every upstream request: "METHOD url"
    assumed: list[dict[str, str]] = field(default_factory=list)  # each AssumeRole's parameters, and its signer

    def call(self, who: str, connection: str | None, method: str, path: str,
             headers: dict[str, str] | None = None) -> requests.Response:
        sent = {"x-portkey-api-key": self.keys[who], **(headers or {})}
        if connection is not None:
            sent["x-portkey-virtual-key"] = connection
        return requests.request(method, self.gw.url + path, headers=sent, timeout=30)

    def roles(self) -> list[str]:
        return [a["RoleArn"] for a in self.assumed]


def _record(gw: Gateway, rec: Aws) -> None:
    upstream = gw.services.resolver.upstream
    request, open_ = upstream.request, upstream.open

    def record(method: str, url: Any, kw: dict[str, Any]) -> None:
        rec.sent.append(f"{method} {url}")
        body = kw.get("data")
        if isinstance(body, bytes | bytearray) and b"Action=AssumeRole" in body:
            params = {k: v[0] for k, v in parse_qs(bytes(body).decode()).items()}
            auth = str((kw.get("headers") or {}).get("Authorization", ""))
            params["signer"] = auth.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in auth else ""
            rec.assumed.append(params)

    async def recorded_request(method: str, url: Any, *args: Any, **kw: Any) -> Any:
        record(method, url, kw)
        return await request(method, url, *args, **kw)

    async def recorded_open(method: str, url: Any, *args: Any, **kw: Any) -> Any:
        record(method, url, kw)
        return await open_(method, url, *args, **kw)

    upstream.request, upstream.open = recorded_request, recorded_open


@pytest.fixture
def bedrock(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    requests.post(moto_url + "/moto-api/reset", timeout=5)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_BEDROCK", "AWS_ENDPOINT_URL_STS"):
        monkeypatch.delenv(name, raising=False)
    # Fresh assumed-role sessions: one cached by an earlier test would hide the AssumeRole this one makes.
    monkeypatch.setattr(REGISTRY["bedrock"], "roles", aws.RoleSessions())
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="AKIAMOTO",
                      aws_secret_access_key="moto-secret")
    s3.create_bucket(Bucket=BUCKET)
    for file_id in (TEAM_FILE, PRIVATE_FILE, DEFAULT_FILE):
        s3.put_object(Bucket=BUCKET, Key=ids.decode("file", file_id).removeprefix(f"s3://{BUCKET}/"), Body=SECRET)

    with Gateway(tmp_path / "data") as gw:
        async def work(store: Any) -> dict[str, str]:
            for name, (secrets, options) in CONNECTIONS.items():
                await store.add_connection(name, "bedrock", secrets, None, options)
            _alice_key, alice = await store.create_key("alice", list(CONNECTIONS))
            _bob_key, bob = await store.create_key("bob", list(CONNECTIONS), allow_provider_keys=True)
            _carol_key, carol = await store.create_key("carol", [], allow_provider_keys=True)  # no connection
            return {"alice": str(alice), "bob": str(bob), "carol": str(carol)}

        rec = Aws(gw, gw.with_store(work))
        _record(gw, rec)
        yield rec


BOBS_OWN = {"Authorization": "Bearer bobs-own-bedrock-key", "x-portkey-aws-access-key-id": BOB_KEY,
            "x-portkey-aws-secret-access-key": "bobs/own/secret"}


@pytest.mark.parametrize("connection", ["role-secret", "no-role"])
def test_a_role_header_does_not_make_the_stored_keys_assume_another_role(bedrock: Aws, connection: str) -> None:
    """The connection keeps its role as a secret, or sets none: either way the caller may not pick the role the
    connection's keys assume. The same 403 as a role the connection sets as an option, and nothing goes out."""
    r = bedrock.call("alice", connection, "GET", "/v1/files", {"x-portkey-aws-role-arn": OTHER_ROLE})
    shape = _locked(r, "x-portkey-aws-role-arn")
    assert OTHER_ROLE not in r.text and TEAM_ROLE not in r.text  # neither the role asked for, nor the stored one
    assert bedrock.sent == [] and bedrock.assumed == []
    as_option = bedrock.call("alice", "role-option", "GET", "/v1/files", {"x-portkey-aws-role-arn": OTHER_ROLE})
    assert _locked(as_option, "x-portkey-aws-role-arn") == shape
    assert bedrock.sent == []
    # Across every route that signs with the connection's keys.
    for method, path in (("GET", "/v1/fine_tuning/jobs"), ("GET", f"/v1/files/{TEAM_FILE}"),
                         ("GET", f"/v1/files/{TEAM_FILE}/content"), ("DELETE", f"/v1/files/{TEAM_FILE}")):
        _locked(bedrock.call("bob", connection, method, path, {"x-portkey-aws-role-arn": OTHER_ROLE}),
                "x-portkey-aws-role-arn")
    assert bedrock.sent == []


@pytest.mark.parametrize("connection", ["role-secret", "no-role"])
def test_an_external_id_header_is_locked_with_the_role(bedrock: Aws, connection: str) -> None:
    r = bedrock.call("alice", connection, "GET", "/v1/files", {"x-portkey-aws-external-id": "ops-ext"})
    _locked(r, "x-portkey-aws-external-id")
    assert "team-ext" not in r.text
    assert bedrock.sent == []


def test_a_callers_keys_do_not_mix_with_the_stored_role(bedrock: Aws) -> None:
    """AWS keys in headers would replace the connection's keys secret by secret and assume its role with its
    external id: a value the connection keeps as a secret is its own, like an option. A caller brings its keys
    as its own credential (the next test) instead."""
    r = bedrock.call("alice", "role-secret", "GET", "/v1/files", {k: v for k, v in BOBS_OWN.items()
                                                                   if k != "Authorization"})
    _locked(r, "x-portkey-aws-access-key-id")
    assert bedrock.sent == []
    same = bedrock.call("alice", "role-secret", "GET", "/v1/files", {"x-portkey-aws-access-key-id": TEAM_KEY})
    assert same.status_code == 200, same.text  # the connection's own key id, repeated: fine
    assert {a["signer"] for a in bedrock.assumed} == {TEAM_KEY}


def test_the_connections_own_role_is_used_and_may_be_named(bedrock: Aws) -> None:
    """The controls: with no header the stored role (and external id) is assumed; naming the connection's own
    secret role or external id in a header is fine."""
    for headers in ({}, {"x-portkey-aws-role-arn": TEAM_ROLE},
                    {"x-portkey-aws-role-arn": TEAM_ROLE, "x-portkey-aws-external-id": "team-ext"}):
        r = bedrock.call("alice", "role-secret", "GET", "/v1/files", headers)
        assert r.status_code == 200, (headers, r.text)
        assert TEAM_FILE in {f["id"] for f in r.json()["data"]}
    assert set(bedrock.roles()) == {TEAM_ROLE}
    assert {a["ExternalId"] for a in bedrock.assumed} == {"team-ext"}
    assert {a["signer"] for a in bedrock.assumed} == {TEAM_KEY}
    # A connection with no role: its keys sign as themselves, and no AssumeRole goes out.
    plain = bedrock.call("alice", "no-role", "GET", "/v1/files")
    assert plain.status_code == 200, plain.text
    assert set(bedrock.roles()) == {TEAM_ROLE}


def test_a_connection_may_let_callers_choose_the_role(bedrock: Aws) -> None:
    r = bedrock.call("alice", "role-open", "GET", "/v1/files", {"x-portkey-aws-role-arn": OTHER_ROLE})
    assert r.status_code == 200, r.text
    assert bedrock.roles() == [OTHER_ROLE] and bedrock.assumed[0]["signer"] == TEAM_KEY


@pytest.mark.parametrize("who, connection", [("bob", "role-secret"), ("bob", "no-role"), ("carol", None)])
def test_a_callers_own_keys_assume_the_role_it_names(bedrock: Aws, who: str, connection: str | None) -> None:
    """With a credential of its own (which replaces the stored secrets entirely) the caller names its role: STS
    decides, as on an open gateway, and the stored keys sign nothing."""
    headers = {**BOBS_OWN, "x-portkey-aws-role-arn": OTHER_ROLE, "x-portkey-aws-external-id": "ops-ext"}
    if connection is None:
        headers.update({"x-portkey-provider": "bedrock", "x-portkey-aws-s3-bucket": f"{BUCKET}/team",
                        "x-portkey-aws-region": "us-east-1"})
    r = bedrock.call(who, connection, "GET", "/v1/files", headers)
    assert r.status_code == 200, r.text
    assert bedrock.roles() == [OTHER_ROLE]
    assert bedrock.assumed[0]["ExternalId"] == "ops-ext" and bedrock.assumed[0]["signer"] == BOB_KEY


def test_a_prefix_header_does_not_widen_a_locked_bucket(bedrock: Aws) -> None:
    """The connection sets `bucket/prefix`: another prefix of that bucket is as out of reach as another bucket,
    for a listing and for a file id."""
    private = {"x-portkey-aws-s3-prefix": "private"}
    for method, path in (("GET", "/v1/files"), ("GET", f"/v1/files/{PRIVATE_FILE}"),
                         ("GET", f"/v1/files/{PRIVATE_FILE}/content"), ("DELETE", f"/v1/files/{PRIVATE_FILE}")):
        r = bedrock.call("bob", "no-role", method, path, private)
        shape = _locked(r, "x-portkey-aws-s3-prefix")
        assert b"hunter2" not in r.content
    as_bucket = bedrock.call("bob", "no-role", "GET", "/v1/files", {"x-portkey-aws-s3-bucket": f"{BUCKET}/private"})
    assert _locked(as_bucket, "x-portkey-aws-s3-bucket") == {**shape, "param": "x-portkey-aws-s3-bucket"}
    # A bucket set without a prefix fixes the default one.
    for prefix in ("private", "team", "tunegate/sub", "tunegate/.."):
        r = bedrock.call("bob", "plain-bucket", "GET", "/v1/files", {"x-portkey-aws-s3-prefix": prefix})
        _locked(r, "x-portkey-aws-s3-prefix")
    assert bedrock.sent == []


def test_the_connections_own_prefix_may_be_named(bedrock: Aws) -> None:
    for connection, prefix, file_id in (("no-role", "team", TEAM_FILE), ("no-role", "/team/", TEAM_FILE),
                                        ("plain-bucket", "tunegate", DEFAULT_FILE)):
        r = bedrock.call("bob", connection, "GET", "/v1/files", {"x-portkey-aws-s3-prefix": prefix})
        assert r.status_code == 200, (connection, prefix, r.text)
        assert [f["id"] for f in r.json()["data"]] == [file_id]
        got = bedrock.call("bob", connection, "GET", f"/v1/files/{file_id}/content", {"x-portkey-aws-s3-prefix": prefix})
        assert got.status_code == 200 and got.content == SECRET, got.text


@pytest.mark.parametrize("who, connection, own", [("bob", "no-bucket", {}), ("carol", None, BOBS_OWN)])
def test_a_prefix_header_is_honoured_where_no_connection_fixes_the_bucket(
        bedrock: Aws, who: str, connection: str | None, own: dict[str, str]) -> None:
    """The controls: a connection that names no bucket, and a caller on its own credential, choose bucket and
    prefix."""
    headers = {**own, "x-portkey-aws-s3-bucket": BUCKET, "x-portkey-aws-s3-prefix": "private"}
    if connection is None:
        headers.update({"x-portkey-provider": "bedrock", "x-portkey-aws-region": "us-east-1"})
    r = bedrock.call(who, connection, "GET", "/v1/files", headers)
    assert r.status_code == 200, r.text
    assert [f["id"] for f in r.json()["data"]] == [PRIVATE_FILE]
    got = bedrock.call(who, connection, "GET", f"/v1/files/{PRIVATE_FILE}/content", headers)
    assert got.status_code == 200 and got.content == SECRET, got.text


# ---- Vertex AI -------------------------------------------------------------------------------------------

GCS_BUCKET = "tg-training-data"  # the connection's bucket; the prefix is the default, tunegate/
TOKEN = "ya29.team-token"
VX = "team-vx"


def _gs_fid(name: str) -> str:
    return ids.encode("file", f"gs://{GCS_BUCKET}/{name}")


GS_TEAM = _gs_fid("tunegate/0000000000002-bbbbbbbb/shared.jsonl")  # under the default prefix
GS_PRIVATE = _gs_fid("private/hr.csv")  # another prefix of the connection's bucket
GS_LOOKALIKE = _gs_fid("tunegate-private/hr.csv")  # a prefix that only starts like the default one


@dataclass
class Vertex:
    gw: Gateway
    keys: dict[str, str]

    def call(self, who: str, method: str, path: str, headers: dict[str, str] | None = None,
             connection: str | None = VX) -> requests.Response:
        sent = {"x-portkey-api-key": self.keys[who], **(headers or {})}
        if connection is not None:
            sent["x-portkey-virtual-key"] = connection
        return requests.request(method, self.gw.url + path, headers=sent, timeout=30)


@pytest.fixture
def vertex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Vertex]:
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=GCS_BUCKET)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        for file_id in (GS_TEAM, GS_PRIVATE, GS_LOOKALIKE):
            name = ids.decode("file", file_id, "file").removeprefix(f"gs://{GCS_BUCKET}/")
            requests.post(f"{url}/upload/storage/v1/b/{GCS_BUCKET}/o", params={"uploadType": "media", "name": name},
                          data=SECRET, headers={"Content-Type": "application/octet-stream"},
                          timeout=10).raise_for_status()
        with Gateway(tmp_path / "data") as gw:
            async def work(store: Any) -> dict[str, str]:
                await store.add_connection(VX, "vertex-ai", {"api_key": TOKEN}, None,
                                           {"vertex_project_id": "tg-project", "vertex_storage_bucket_name": GCS_BUCKET})
                _bob_key, bob = await store.create_key("bob", [VX], allow_provider_keys=True)
                _carol_key, carol = await store.create_key("carol", [], allow_provider_keys=True)
                return {"bob": str(bob), "carol": str(carol)}

            yield Vertex(gw, gw.with_store(work))
    finally:
        server.stop()


@pytest.mark.parametrize("prefix, file_id", [("private/", GS_PRIVATE), ("private", GS_PRIVATE),
                                             ("tunegate-private", GS_LOOKALIKE), ("t", GS_LOOKALIKE)])
def test_a_storage_prefix_header_does_not_widen_a_locked_bucket(vertex: Vertex, prefix: str, file_id: str) -> None:
    headers = {"x-portkey-vertex-storage-prefix": prefix}
    for method, path in (("GET", "/v1/files"), ("GET", f"/v1/files/{file_id}"),
                         ("GET", f"/v1/files/{file_id}/content"), ("DELETE", f"/v1/files/{file_id}")):
        r = vertex.call("bob", method, path, headers)
        _locked(r, "x-portkey-vertex-storage-prefix")
        assert b"hunter2" not in r.content
    # Without the header the file is out of reach as before (rule 4), and still there.
    assert vertex.call("bob", "GET", f"/v1/files/{file_id}/content").status_code == 404


def test_the_default_storage_prefix_may_be_named(vertex: Vertex) -> None:
    for prefix in ("tunegate/", "tunegate", ""):
        r = vertex.call("bob", "GET", "/v1/files", {"x-portkey-vertex-storage-prefix": prefix})
        assert r.status_code == 200, (prefix, r.text)
        assert [f["id"] for f in r.json()["data"]] == [GS_TEAM]
        got = vertex.call("bob", "GET", f"/v1/files/{GS_TEAM}/content", {"x-portkey-vertex-storage-prefix": prefix})
        assert got.status_code == 200 and got.content == SECRET, got.text


def test_a_storage_prefix_header_is_honoured_on_a_callers_own_credential(vertex: Vertex) -> None:
    """The control: a caller with a token of its own and no connection chooses bucket and prefix."""
    headers = {"Authorization": "Bearer ya29.carols-own", "x-portkey-provider": "vertex-ai",
               "x-portkey-vertex-project-id": "tg-project", "x-portkey-vertex-storage-bucket-name": GCS_BUCKET,
               "x-portkey-vertex-storage-prefix": "private/"}
    r = vertex.call("carol", "GET", "/v1/files", headers, connection=None)
    assert r.status_code == 200, r.text
    assert [f["id"] for f in r.json()["data"]] == [GS_PRIVATE]
    got = vertex.call("carol", "GET", f"/v1/files/{GS_PRIVATE}/content", headers, connection=None)
    assert got.status_code == 200 and got.content == SECRET, got.text
