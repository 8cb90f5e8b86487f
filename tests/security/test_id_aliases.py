"""Issue 17, finding 3: no spelling of key A's id is ever served to key B, on any provider.

Alice and Bob share one team connection per provider. Alice owns a job and a file (recorded as hers, as
a create through the gateway records them). Bob sends the gateway spellings of Alice's ids that hypothesis
generates — percent-encodings (single and double), case changes, junk characters, path and query
suffixes, and for the base64-wrapped ids (Bedrock, Vertex AI) padding, characters outside the alphabet
and other values of the unused low bits. Every upstream here is one catch-all server that records each
request; the property is that none of Bob's requests ever names Alice's object upstream (compared after
percent-decoding and case-folding, so an upstream that is lenient about either would not save us). A
control shows Alice's own request does name it, so the check can fail.
"""

from __future__ import annotations

import http.client
import os
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread
from tunegate.providers import ids

UUID = "3f2a9c1e-7b4d-4e8a-9c2f-1a2b3c4d5e6f"
ARN = "arn:aws:bedrock:us-east-1:123456789012:model-customization-job/amazon.nova-micro-v1:0:128k/a1b2c3d4e5f6"
VERTEX_JOB = "projects/123456789/locations/us-central1/tuningJobs/7000000000000000001"


@dataclass(frozen=True)
class Case:
    provider: str
    job: str  # Alice's public job id
    job_native: str  # what names it upstream
    file: str
    file_native: str
    secrets: dict[str, str]
    options: dict[str, Any]
    # OpenAI's ids are base62 (`ftjob-AbC…`): case tells objects apart there, so only that provider's
    # comparison keeps case. Everywhere else an upstream that ignores case is assumed.
    case_sensitive: bool = False


CASES = [
    Case("openai", "ftjob-AbC123xyz", "ftjob-AbC123xyz", "file-Q9w8E7r6", "file-Q9w8E7r6",
         {"api_key": "sk-team"}, {}, case_sensitive=True),
    Case("azure-openai", "ftjob-0123456789abcdef0123456789abcdef", "ftjob-0123456789abcdef0123456789abcdef",
         "file-fedcba9876543210fedcba9876543210", "file-fedcba9876543210fedcba9876543210",
         {"api_key": "az-team"}, {}),
    Case("together-ai", f"ft-{UUID}", f"ft-{UUID}", f"file-{UUID}", f"file-{UUID}", {"api_key": "tg-team"}, {}),
    Case("mistral-ai", UUID, UUID, "0c9b8a7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d", "0c9b8a7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d",
         {"api_key": "ms-team"}, {}),
    Case("fireworks-ai", "alice-tune-k3j4h5g6", "alice-tune-k3j4h5g6", "file-alice-k3j4h5g6",
         "file-alice-k3j4h5g6", {"api_key": "fw-team"}, {"fireworks_account_id": "team"}),
    Case("bedrock", ids.encode("ftjob", ARN), ARN, ids.encode("file", "s3://team-bucket/tunegate/files/alice.jsonl"),
         "team-bucket/tunegate/files/alice.jsonl", {"aws_access_key_id": "AKIATEAM", "aws_secret_access_key": "team-secret"},
         {"aws_region": "us-east-1"}),
    Case("vertex-ai", ids.encode("ftjob", VERTEX_JOB), VERTEX_JOB,
         ids.encode("file", "gs://team-bucket/tunegate/alice.jsonl"), "team-bucket/o/tunegate/alice.jsonl",
         {"api_key": "ya29.team"}, {"vertex_project_id": "team-proj", "vertex_region": "us-central1"}),
]


class CatchAll:
    """Any path, any method: recorded, answered with an empty JSON object."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.raw_path)
        return web.json_response({})


def names(paths: list[str], native: str, case_sensitive: bool = False) -> bool:
    """Whether any upstream request names ``native``: percent-decoded until stable, case-folded unless
    the provider's ids are case-sensitive."""
    fold = (lambda text: text) if case_sensitive else str.casefold
    # the native id as a whole: after '/' (or at the start), before the end, '/', '?', '#' or ':'
    pattern = re.compile(r"(^|/)" + re.escape(fold(native)) + r"($|[/?#:])")
    for raw in paths:
        seen = raw
        for _ in range(4):
            seen = unquote(seen)
        if pattern.search(fold(seen)):
            return True
    return False


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, CatchAll, str, str]]:
    upstream = CatchAll()
    patch = pytest.MonkeyPatch()
    with ServerThread(upstream.app()) as server, Gateway(tmp_path_factory.mktemp("aliases")) as gw:
        patch.setenv("AWS_ENDPOINT_URL_S3", server.url)  # Bedrock's files live in S3: the same catch-all
        patch.setenv("STORAGE_EMULATOR_HOST", server.url)  # and Vertex AI's in Cloud Storage

        async def setup(store: Any) -> tuple[str, str]:
            alice_key, alice = await store.create_key("alice", ["*"])
            alice_id = alice_key.id
            _bob_id, bob = await store.create_key("bob", ["*"])
            for case in CASES:
                name = f"team-{case.provider}"
                await store.add_connection(name, case.provider, case.secrets, server.url + "/v1", case.options)
                await store.record("job", case.job, case.provider, name, alice_id, "running", None)
                await store.record("file", case.file, case.provider, name, alice_id, "processed", None)
            return str(alice), str(bob)

        alice, bob = gw.with_store(setup)
        yield gw, upstream, alice, bob
    patch.undo()


def send(gw: Gateway, key: str, provider: str, method: str, path: str) -> int:
    """A request with the path exactly as written (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (("x-portkey-api-key", key), ("x-portkey-virtual-key", f"team-{provider}"),
                            ("content-length", "0")):
            conn.putheader(name, value)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


_JUNK = "?#%/.\\@:;=+~!$&'(),* \t" + string.ascii_letters[:4]


@st.composite
def spellings(draw: st.DrawFn, canonical: str) -> str:
    chars = list(canonical)
    for _ in range(draw(st.integers(1, 3))):
        move = draw(st.sampled_from(["encode", "double", "case", "junk", "suffix", "b64pad", "b64bits"]))
        i = draw(st.integers(0, len(chars) - 1))
        if move == "encode":
            chars[i] = "".join(f"%{b:02{draw(st.sampled_from('xX'))}}" for b in chars[i].encode())
        elif move == "double":
            chars[i] = "".join(f"%25{b:02X}" for b in chars[i].encode())
        elif move == "case":
            chars[i] = chars[i].swapcase()
        elif move == "junk":
            junk = draw(st.sampled_from(_JUNK))
            forms = [quote(junk, safe=""), quote(quote(junk, safe=""), safe="")]
            chars.insert(i, draw(st.sampled_from(forms if junk.isspace() else [junk, *forms])))  # no raw space on the wire
        elif move == "suffix":
            chars.append(draw(st.sampled_from(["%3F", "%3Fx=1", "%23", "%23frag", "%2F..", "%2F%2E%2E", "/..",
                                               "%2500", "%00", ".", "%2e", "%20", "%0A"])))
        elif move == "b64pad":
            chars.append(draw(st.sampled_from(["=", "==", "%3D", "."])))
        elif move == "b64bits" and "-" in canonical:
            alphabet = string.ascii_letters + string.digits + "-_"
            chars[-1] = draw(st.sampled_from(alphabet))
    spelled = "".join(chars)
    return spelled


def test_a_bare_answer_is_a_502_not_a_500(lab: tuple[Gateway, CatchAll, str, str]) -> None:
    """The catch-all answers `{}`: an adapter that cannot read it says so (502), it does not crash."""
    gw, _upstream, alice, _bob = lab
    crashed = [case.provider for case in CASES
               if send(gw, alice, case.provider, "GET", f"/v1/fine_tuning/jobs/{case.job}") == 500]
    assert crashed == []


@pytest.mark.parametrize("case", CASES, ids=[c.provider for c in CASES])
def test_alice_reaches_her_own_objects(lab: tuple[Gateway, CatchAll, str, str], case: Case) -> None:
    """The control: with the canonical id, Alice's requests do name her objects upstream."""
    gw, upstream, alice, _bob = lab
    upstream.paths.clear()
    send(gw, alice, case.provider, "GET", f"/v1/fine_tuning/jobs/{case.job}")
    assert names(upstream.paths, case.job_native), upstream.paths
    upstream.paths.clear()
    # (not a DELETE: that would end Alice's ownership record along with the file)
    send(gw, alice, case.provider, "GET", f"/v1/files/{case.file}/content")
    assert names(upstream.paths, case.file_native), upstream.paths


@pytest.mark.parametrize("case", CASES, ids=[c.provider for c in CASES])
def test_no_spelling_of_alices_ids_reaches_them_for_bob(lab: tuple[Gateway, CatchAll, str, str], case: Case) -> None:
    gw, upstream, _alice, bob = lab

    @settings(max_examples=int(os.environ.get("TUNEGATE_ALIAS_EXAMPLES", "60")), deadline=None,
              suppress_health_check=list(HealthCheck), derandomize="TUNEGATE_ALIAS_EXAMPLES" not in os.environ)
    @given(job=spellings(case.job), file=spellings(case.file),
           op=st.sampled_from(["get", "cancel", "events", "content", "delete"]))
    def check(job: str, file: str, op: str) -> None:
        upstream.paths.clear()
        method, path = {"get": ("GET", f"/v1/fine_tuning/jobs/{job}"),
                        "cancel": ("POST", f"/v1/fine_tuning/jobs/{job}/cancel"),
                        "events": ("GET", f"/v1/fine_tuning/jobs/{job}/events"),
                        "content": ("GET", f"/v1/files/{file}/content"),
                        "delete": ("DELETE", f"/v1/files/{file}")}[op]
        status = send(gw, bob, case.provider, method, path)
        native = case.job_native if op in ("get", "cancel", "events") else case.file_native
        assert not names(upstream.paths, native, case.case_sensitive), (path, status, upstream.paths)

    check()
