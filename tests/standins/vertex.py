"""A stateful stand-in for Vertex AI's tuning API (aiplatform v1) and Google's OAuth token endpoint.

Where each shape comes from:

- ``../shared/specs/vertex-aiplatform-v1-tuningjobs.json`` (Google discovery document, aiplatform v1, revision
  20261106): methods ``projects.locations.tuningJobs.{create,list,get,cancel}`` (paths ``v1/{+parent}/tuningJobs``,
  ``v1/{+name}``, ``v1/{+name}:cancel``; list parameters ``pageSize``/``pageToken``); schemas
  ``GoogleCloudAiplatformV1TuningJob`` (state enum ``JobState``, ``createTime``/``endTime`` RFC 3339,
  ``supervisedTuningSpec``/``preferenceOptimizationSpec``, ``tunedModel`` with ``checkpoints``,
  ``tuningDataStats``, ``error`` = ``GoogleRpcStatus``), ``GoogleCloudAiplatformV1ListTuningJobsResponse``
  (``tuningJobs``, ``nextPageToken``) and ``GoogleProtobufEmpty`` (the cancel answer). Create bodies are checked
  against the TuningJob schema (unknown fields are refused, as Google refuses "Unknown name" fields), and
  ``tests/providers/test_vertex_ai.py`` validates every kind of answer against these schemas.
- Errors: Google's JSON error envelope ``{"error": {"code", "message", "status"}}`` (AIP-193).
- The token endpoint: OAuth 2.0 JWT bearer grant (RFC 7523) as Google's ``token_uri`` implements it — form
  ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<RS256 JWT>``; claims ``iss`` (the service
  account e-mail), ``scope``, ``aud`` (always ``https://oauth2.googleapis.com/token``, whatever ``token_uri`` the
  JSON names — google-auth signs it so), ``iat``, ``exp`` (at most an hour later); answer
  ``{access_token, expires_in, token_type}``; refusals ``{"error": "invalid_grant", "error_description"}``. The
  signature is verified with the public key of the service account registered by the test.

State: jobs move one step per GET (QUEUED → PENDING → RUNNING → SUCCEEDED); a base model starting with "fail"
fails at RUNNING; a cancel puts the job in CANCELLING for ``cancel_polls`` GETs, then CANCELLED. ``faults`` scripts
error answers (path substring → statuses). Every request is recorded.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SPEC = Path(__file__).resolve().parents[2].parent / "shared" / "specs" / "vertex-aiplatform-v1-tuningjobs.json"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
IAM_SCOPE = "https://www.googleapis.com/auth/iam"  # what google-auth asks for a credential it impersonates from
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
PROJECT_NUMBER = "481516234200"
RPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
LIFECYCLE = ["JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
RFC3339 = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$"


# ---- the discovery document as JSON Schema ---------------------------------------------------------


def load_discovery(path: Path = SPEC) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def json_schema(discovery: dict[str, Any], name: str, *, strict: bool = True) -> dict[str, Any]:
    """A JSON Schema (draft 7) for one discovery schema. ``strict`` refuses properties the document does not
    name, so a stand-in answer cannot carry a field the real service would not have; int64 strings and
    google-datetime values get patterns."""

    def conv(s: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in s:
            return {"$ref": f"#/definitions/{s['$ref']}"}
        t = s.get("type")
        if t == "any" or t is None:
            return {}
        if t == "object":
            out: dict[str, Any] = {"type": "object"}
            if "properties" in s:
                out["properties"] = {k: conv(v) for k, v in s["properties"].items()}
            if "additionalProperties" in s:
                out["additionalProperties"] = conv(s["additionalProperties"])
            elif strict:
                out["additionalProperties"] = False
            return out
        if t == "array":
            return {"type": "array", "items": conv(s.get("items", {}))}
        if t == "string":
            out = {"type": "string"}
            if s.get("format") in ("int64", "uint64"):
                out["pattern"] = r"^-?\d+$"
            elif s.get("format") in ("google-datetime", "date-time"):
                out["pattern"] = RFC3339
            if "enum" in s:
                out["enum"] = s["enum"]
            return out
        return {"type": t}

    return {"$schema": "http://json-schema.org/draft-07/schema#", "$ref": f"#/definitions/{name}",
            "definitions": {n: conv(s) for n, s in discovery["schemas"].items()}}


def read_only_fields(discovery: dict[str, Any], name: str) -> set[str]:
    return {k for k, v in discovery["schemas"][name]["properties"].items() if v.get("readOnly")}


# ---- service accounts ----------------------------------------------------------------------------


def make_service_account(token_uri: str, project_id: str = "tg-project",
                         email: str | None = None) -> tuple[dict[str, Any], rsa.RSAPublicKey]:
    """A real service-account JSON (fresh RSA key) and its public key."""
    from cryptography.hazmat.primitives import serialization

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = email or f"tuner-{secrets.token_hex(3)}@{project_id}.iam.gserviceaccount.com"
    info = {"type": "service_account", "project_id": project_id, "private_key_id": secrets.token_hex(20),
            "private_key": pem, "client_email": email, "client_id": str(10**20 + secrets.randbelow(10**20)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/" + email,
            "universe_domain": "googleapis.com"}
    return info, key.public_key()


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def rfc3339(ts: float) -> str:
    """Google's timestamps: UTC, nanosecond precision, 'Z'."""
    dt = datetime.fromtimestamp(int(ts), UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{int((ts % 1) * 1e9):09d}Z"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class VertexStandIn:
    project: str = "tg-project"
    location: str = "us-central1"
    cancel_polls: int = 1  # GETs that still show CANCELLING after a cancel
    token_delay: float = 0.2  # the token endpoint is slow, so concurrent requests overlap
    token_lifetime: int = 3599
    default_page_size: int = 10
    max_page_size: int = 100  # larger pageSize values are lowered to this, as Google's list methods do
    requests: list[Recorded] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> TuningJob
    service_accounts: dict[str, tuple[str, rsa.RSAPublicKey]] = field(default_factory=dict)  # email -> (kid, key)
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # access token -> (email, expires at)
    mints: dict[str, int] = field(default_factory=dict)  # email -> tokens issued
    token_errors: list[str] = field(default_factory=list)
    faults: dict[str, list[int]] = field(default_factory=dict)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # "bucket/name" -> GCS Object resource
    subject_token: str = "eyJ.standin-oidc.subject"  # what credential_source.url serves (an OIDC token)
    subject_token_reads: int = 0
    audience: str = ("//iam.googleapis.com/projects/481516234200/locations/global/workloadIdentityPools/tg-pool/"
                     "providers/tg-oidc")
    sts_requests: list[dict[str, Any]] = field(default_factory=list)
    impersonable: set[str] = field(default_factory=set)  # service accounts generateAccessToken may act as
    impersonations: list[tuple[str, str]] = field(default_factory=list)  # (caller, account impersonated)
    url: str = ""  # set once the server runs (the service-account JSON's token_uri points here)
    _page_tokens: dict[str, tuple[tuple[str, str], int]] = field(default_factory=dict)  # → (request, offset)
    _cancel_left: dict[str, int] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _clock: itertools.count = field(default_factory=lambda: itertools.count(0))

    def __post_init__(self) -> None:
        self.discovery = load_discovery()

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    def register(self, info: dict[str, Any], public_key: rsa.RSAPublicKey) -> None:
        self.service_accounts[info["client_email"]] = (info["private_key_id"], public_key)

    def vertex_requests(self, method: str | None = None, contains: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith("/v1/") and (method is None or r.method == method)
                and contains in r.path]

    # ---- the app ----

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_post("/token", self.token)
        base = "/v1/projects/{project}/locations/{location}/tuningJobs"
        r.add_post(base, self.create)
        r.add_get(base, self.list)
        r.add_get(base + "/{job}", self.get)
        r.add_post(base + "/{job}", self.cancel)  # {job} is "<id>:cancel"
        r.add_get("/storage/v1/b/{bucket}/o/{object}", self.gcs_get)
        r.add_get("/subject-token", self.subject_token_endpoint)
        r.add_post("/sts/v1/token", self.sts_token)
        r.add_post("/iam/v1/projects/-/serviceAccounts/{account}", self.generate_access_token)
        return app

    # ---- keyless credentials -------------------------------------------------------------------
    # Shapes from google-auth 2.63.0 (googleapis/google-auth-library-python): the subject token is fetched with
    # a GET of credential_source.url, answered as text or JSON (identity_pool._UrlSupplier, format "text"/"json"
    # with subject_token_field_name); the exchange is an RFC 8693 form POST to token_url (oauth2/sts.py
    # exchange_token: grant_type urn:ietf:params:oauth:grant-type:token-exchange, audience, scope,
    # requested_token_type, subject_token, subject_token_type) answered {access_token, issued_token_type,
    # token_type, expires_in}; impersonation is IAM Credentials v1 generateAccessToken
    # (impersonated_credentials._make_iam_token_request: JSON {delegates, scope, lifetime} with the source
    # token as Bearer, answered {accessToken, expireTime: "%Y-%m-%dT%H:%M:%SZ"}).

    def issue(self, principal: str, prefix: str = "ya29.standin-") -> str:
        token = prefix + secrets.token_urlsafe(24)
        self.tokens[token] = (principal, time.time() + self.token_lifetime)
        self.mints[principal] = self.mints.get(principal, 0) + 1
        return token

    async def subject_token_endpoint(self, request: web.Request) -> web.Response:
        self.subject_token_reads += 1
        if request.query.get("format") == "json":
            return web.json_response({"id_token": self.subject_token})
        return web.Response(text=self.subject_token)

    async def sts_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.sts_requests.append(dict(form))
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if form.get("subject_token") != self.subject_token or form.get("audience") != self.audience:
            return web.json_response({"error": "invalid_grant", "error_description": "The subject token or "
                                      "audience is not valid for this workload identity pool."}, status=400)
        if not {CLOUD_PLATFORM, IAM_SCOPE} & set(str(form.get("scope", "")).split()):
            return web.json_response({"error": "invalid_scope"}, status=400)
        token = self.issue("federated:" + str(form.get("audience")), "ya29.federated-")
        return web.json_response({"access_token": token, "issued_token_type":
                                  "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer",
                                  "expires_in": self.token_lifetime})

    async def generate_access_token(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        if not account.endswith(":generateAccessToken"):
            return self.error(404, f"Method not found: {account}.")
        caller = self._token_of(request)
        if caller is None:
            return self.error(401, "Request had invalid authentication credentials.")
        email = account.removesuffix(":generateAccessToken")
        if email not in self.impersonable:
            return self.error(403, f"Permission 'iam.serviceAccounts.getAccessToken' denied on '{email}'.")
        body = await request.json()
        if CLOUD_PLATFORM not in (body.get("scope") or []):
            return self.error(400, "scope must include cloud-platform.")
        self.impersonations.append((self.tokens[caller][0], email))
        token = self.issue(email)
        expire = datetime.fromtimestamp(time.time() + self.token_lifetime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response({"accessToken": token, "expireTime": expire})

    def _token_of(self, request: web.Request) -> str | None:
        """The caller's access token when it is one this stand-in issued and it has not expired."""
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        known = self.tokens.get(token)
        return token if known is not None and known[1] >= time.time() else None

    # Cloud Storage objects.get (JSON API v1, ``vertex-gcs-storage-v1-objects.json``), only as far as the token
    # check goes: Cloud Storage answers an unknown or expired token with 401 in Google's error envelope, and
    # an object it does not hold with 404 "No such object: {bucket}/{object}".
    async def gcs_get(self, request: web.Request) -> web.Response:
        if self._token_of(request) is None:
            return self.error(401, "Invalid Credentials")
        bucket, name = request.match_info["bucket"], request.match_info["object"]
        obj = self.objects.get(f"{bucket}/{name}")
        if obj is None:
            return self.error(404, f"No such object: {bucket}/{name}")
        return web.json_response(obj)

    @staticmethod
    def error(status: int, message: str) -> web.Response:
        return web.json_response({"error": {"code": status, "message": message,
                                            "status": RPC_STATUS.get(status, "UNKNOWN")}}, status=status)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Recorded(request.method, request.path, dict(request.query), dict(request.headers), body))
        for needle, statuses in self.faults.items():
            if needle in request.path and statuses:
                status = statuses.pop(0)
                headers = {"Retry-After": "0"} if status == 429 else {}
                resp = self.error(status, f"scripted {status}")
                resp.headers.update(headers)
                return resp
        if request.path.startswith("/v1/"):
            auth = request.headers.get("Authorization", "")
            token = auth[7:] if auth.startswith("Bearer ") else ""
            known = self.tokens.get(token)
            if known is None or known[1] < time.time():
                return self.error(401, "Request had invalid authentication credentials. Expected OAuth 2 access "
                                       "token, login cookie or other valid authentication credential.")
            if request.match_info.get("project") not in (self.project, PROJECT_NUMBER):
                return self.error(403, f"Permission denied on resource project {request.match_info.get('project')}.")
        return await handler(request)  # type: ignore[no-any-return]

    # ---- OAuth ----

    def _refuse(self, description: str) -> web.Response:
        self.token_errors.append(description)
        return web.json_response({"error": "invalid_grant", "error_description": description}, status=400)

    async def token(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.token_delay)
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        parts = str(form.get("assertion", "")).split(".")
        if len(parts) != 3:
            return self._refuse("Invalid JWT: not three segments.")
        try:
            header, claims = json.loads(_b64url(parts[0])), json.loads(_b64url(parts[1]))
        except ValueError:
            return self._refuse("Invalid JWT: undecodable.")
        account = self.service_accounts.get(claims.get("iss", ""))
        if header.get("alg") != "RS256" or account is None:
            return self._refuse("Invalid JWT: unknown issuer or algorithm.")
        kid, public_key = account
        if header.get("kid") != kid:
            return self._refuse("Invalid JWT Signature.")
        try:
            public_key.verify(_b64url(parts[2]), f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(),
                              hashes.SHA256())
        except Exception:  # noqa: BLE001 - InvalidSignature and malformed signatures alike
            return self._refuse("Invalid JWT Signature.")
        now = time.time()
        if claims.get("aud") != GOOGLE_TOKEN_AUDIENCE:
            return self._refuse("Invalid JWT: wrong audience.")
        if not (claims.get("iat", 0) - 300 <= now <= claims.get("exp", 0)) or claims["exp"] - claims["iat"] > 3600:
            return self._refuse("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                                "timeframe.")
        if not {CLOUD_PLATFORM, IAM_SCOPE} & set(str(claims.get("scope", "")).split()):
            return self._refuse("Invalid OAuth scope or ID token audience provided.")
        token = "ya29.standin-" + secrets.token_urlsafe(24)
        self.tokens[token] = (claims["iss"], now + self.token_lifetime)
        self.mints[claims["iss"]] = self.mints.get(claims["iss"], 0) + 1
        return web.json_response({"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"})

    # ---- tuning jobs ----

    def _now(self) -> float:
        # A strictly increasing clock (1 s per event), so createTime orders jobs even when made in one second.
        return 1_767_225_600.123456789 + next(self._clock)

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return self.error(400, "Invalid JSON payload received.")
        if not isinstance(body, dict):
            return self.error(400, "Invalid JSON payload received. Expected an object.")
        if self.discovery is not None:
            import jsonschema

            schema = json_schema(self.discovery, "GoogleCloudAiplatformV1TuningJob")
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=str)
            if errors:
                return self.error(400, f"Invalid JSON payload received. {errors[0].message}")
            output_only = sorted(read_only_fields(self.discovery, "GoogleCloudAiplatformV1TuningJob") & body.keys())
            if output_only:
                return self.error(400, f"'{output_only[0]}' is output only.")
        specs = [k for k in ("supervisedTuningSpec", "preferenceOptimizationSpec") if k in body]
        if not body.get("baseModel") or len(specs) != 1:
            return self.error(400, "baseModel and exactly one tuning spec are required.")
        uri = body[specs[0]].get("trainingDatasetUri", "")
        if not uri.startswith("gs://"):
            return self.error(400, f"Training dataset uri must be a Cloud Storage uri, got: {uri!r}.")
        location = request.match_info["location"]
        name = f"projects/{PROJECT_NUMBER}/locations/{location}/tuningJobs/{7000000000000000000 + next(self._ids)}"
        now = self._now()
        job = {**body, "name": name, "state": LIFECYCLE[0], "createTime": rfc3339(now), "updateTime": rfc3339(now)}
        self.jobs[name] = job
        return web.json_response(job)

    def _find(self, request: web.Request, job: str) -> dict[str, Any] | None:
        return self.jobs.get(f"projects/{PROJECT_NUMBER}/locations/{request.match_info['location']}/tuningJobs/{job}")

    def _advance(self, job: dict[str, Any]) -> None:
        """One step of the lifecycle per GET."""
        state = job["state"]
        now = self._now()
        if state == "JOB_STATE_CANCELLING":
            left = self._cancel_left.get(job["name"], 0)
            if left > 0:
                self._cancel_left[job["name"]] = left - 1
                return
            job.update(state="JOB_STATE_CANCELLED", endTime=rfc3339(now), updateTime=rfc3339(now),
                       error={"code": 1, "message": "CANCELLED"})
            return
        if state not in LIFECYCLE[:-1]:
            return
        nxt = LIFECYCLE[LIFECYCLE.index(state) + 1]
        job["updateTime"] = rfc3339(now)
        if nxt == "JOB_STATE_RUNNING":
            job["startTime"] = rfc3339(now)
            if job["baseModel"].startswith("fail"):
                job.update(state="JOB_STATE_FAILED", endTime=rfc3339(now),
                           error={"code": 3, "message": "Dataset validation failed: line 3: 'contents' must end "
                                                        "with a model turn.", "details": []})
                return
        job["state"] = nxt
        if nxt == "JOB_STATE_SUCCEEDED":
            prefix = job["name"].split("/tuningJobs/")[0]
            number = job["name"].rsplit("/", 1)[1]
            job["endTime"] = rfc3339(now)
            job["tunedModel"] = {
                "model": f"{prefix}/models/{number[-6:]}@1",
                "endpoint": f"{prefix}/endpoints/{number[-8:]}",
                "checkpoints": [{"checkpointId": str(i), "epoch": str(i), "step": str(10 * i),
                                 "endpoint": f"{prefix}/endpoints/{number[-8:]}{i}"} for i in (1, 2)],
            }
            stats_key = ("preferenceOptimizationDataStats" if "preferenceOptimizationSpec" in job
                         else "supervisedTuningDataStats")
            job["tuningDataStats"] = {stats_key: {"tuningDatasetExampleCount": "12",
                                                  "totalBillableTokenCount": "4096", "tuningStepCount": "20"}}
            job["experiment"] = f"{prefix}/metadataStores/default/contexts/tuning-experiment-{number[-6:]}"

    async def get(self, request: web.Request) -> web.Response:
        job = self._find(request, request.match_info["job"])
        if job is None:
            return self.error(404, f"The TuningJob {request.match_info['job']} does not exist.")
        self._advance(job)
        return web.json_response(job)

    async def cancel(self, request: web.Request) -> web.Response:
        raw = request.match_info["job"]
        if not raw.endswith(":cancel"):
            return self.error(404, f"Method not found: {raw}.")
        job = self._find(request, raw.removesuffix(":cancel"))
        if job is None:
            return self.error(404, f"The TuningJob {raw.removesuffix(':cancel')} does not exist.")
        if job["state"] in TERMINAL or job["state"] == "JOB_STATE_CANCELLING":
            return web.json_response({"error": {"code": 400, "message": f"Cannot cancel a TuningJob in state "
                                                f"{job['state']}.", "status": "FAILED_PRECONDITION"}}, status=400)
        job.update(state="JOB_STATE_CANCELLING", updateTime=rfc3339(self._now()))
        self._cancel_left[job["name"]] = self.cancel_polls
        return web.json_response({})

    # tuningJobs.list paging, per google-cloud-aiplatform 1.165.1 (googleapis/python-aiplatform,
    # google/cloud/aiplatform_v1/types/genai_tuning_service.py: ListTuningJobsRequest filter, page_size,
    # page_token "Typically obtained via ListTuningJobsResponse.next_page_token"; ListTuningJobsResponse
    # tuning_jobs, next_page_token) and the discovery document (pageSize int32, pageToken, nextPageToken).
    # AIP-158, which Google's list methods follow: a changed pageSize with a token is honoured, any other
    # changed parameter is INVALID_ARGUMENT, as is a negative pageSize; an empty nextPageToken ends the list.
    # Assumed (documented nowhere for tuning jobs): the default (10) and largest (100) page sizes, tokens
    # that mark an offset, and no token with the last page.
    async def list(self, request: web.Request) -> web.Response:
        location = request.match_info["location"]
        jobs = sorted((j for j in self.jobs.values() if f"/locations/{location}/" in j["name"]),
                      key=lambda j: (j["createTime"], j["name"]), reverse=True)
        try:
            size = int(request.query.get("pageSize") or 0)
        except ValueError:
            return self.error(400, "Invalid value at 'page_size'.")
        if size < 0:
            return self.error(400, "page_size must not be negative.")
        size = min(size or self.default_page_size, self.max_page_size)
        bound = (request.path, request.query.get("filter", ""))
        start = 0
        if token := request.query.get("pageToken"):
            issued = self._page_tokens.get(token)
            if issued is None or issued[0] != bound:
                return self.error(400, "Invalid page token.")
            start = issued[1]
        page = jobs[start:start + size]
        out: dict[str, Any] = {}
        if page:  # proto3 JSON leaves empty repeated fields out
            out["tuningJobs"] = page
        if start + size < len(jobs):
            token = secrets.token_urlsafe(18)  # opaque, as Google's are
            self._page_tokens[token] = (bound, start + size)
            out["nextPageToken"] = token
        return web.json_response(out)
