"""A stateful stand-in for the Amazon Bedrock control plane's model-customization operations, following
the real service where moto does not (see tunegate/providers/bedrock/MAPPING.md).

Shapes: ``../shared/specs/bedrock-model-customization.json`` (botocore ``bedrock`` 2023-04-20):
CreateModelCustomizationJob (POST /model-customization-jobs → 201 CreateModelCustomizationJobResponse),
GetModelCustomizationJob (GET …/{jobIdentifier} → GetModelCustomizationJobResponse, identifier = job ARN
or name), ListModelCustomizationJobs (GET, querystring members of ListModelCustomizationJobsRequest →
ListModelCustomizationJobsResponse with ModelCustomizationJobSummary items, opaque nextToken),
StopModelCustomizationJob (POST …/{jobIdentifier}/stop → {}); errors are the spec's exception shapes
(``{"message"}`` with the HTTP status in their ``error.httpStatusCode`` and the ``x-amzn-ErrorType``
header). Job ARNs follow ModelCustomizationJobArn (``…:model-customization-job/{model}/{12 chars}``),
timestamps are ISO 8601 with milliseconds and ``Z``.

Behaviour: every GET of a job advances it one step — validating, then training, then Completed (or
Failed when its customModelName starts with "fail"); a stop makes it Stopping, then Stopped. Requests
are recorded (method, raw path, query, headers, body) and every SigV4 signature is verified with
botocore against ``keys`` (``SECRET``, and credentials the STS stand-in issued, whose session token must
come along): a request whose signed URL differs from the one sent is refused (403).
``fail_next(status, type)`` scripts error answers.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web

ACCESS_KEY = "AKIASTANDIN000000001"
SECRET = "standin/secret/key/0000000000000000000000"
BEARER = "bedrock-api-key-standin-0001"
ACCOUNT = "123456789012"
REGION = "us-east-1"


def check_signature(request: web.Request, body: bytes, keys: dict[str, tuple[str, str | None]],
                    service: str) -> str | None:
    """Verify a SigV4 request with botocore against ``keys``; None when it holds, else the AWS error type."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    auth = request.headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "UnrecognizedClientException"
    fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    access, _date, region, signed_service, _ = fields["Credential"].split("/")
    secret, token = keys.get(access, (None, None))
    if secret is None or signed_service != service or token != request.headers.get("X-Amz-Security-Token"):
        return "UnrecognizedClientException"
    signed = fields["SignedHeaders"].split(";")
    headers = {name: request.headers[name] for name in signed if name in request.headers}
    url = f"http://{request.headers['Host']}{request.raw_path}"
    replay = AWSRequest(method=request.method, url=url, data=body, headers=headers)
    replay.context["timestamp"] = request.headers["X-Amz-Date"]
    signer = SigV4Auth(Credentials(access, secret, token), service, region)
    canonical = signer.canonical_request(replay)
    if signer.signature(signer.string_to_sign(replay, canonical), replay) != fields["Signature"]:
        return "InvalidSignatureException"
    return None


@dataclass
class Recorded:
    method: str
    path: str  # raw, percent-encoded as sent
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class BedrockStandIn:
    requests: list[Recorded] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by ARN, in creation order
    tokens: dict[str, str] = field(default_factory=dict)  # clientRequestToken → ARN
    page_tokens: dict[str, tuple[tuple[tuple[str, str], ...], int]] = field(default_factory=dict)  # → (query, offset)
    faults: list[tuple[int, str]] = field(default_factory=list)
    # access key -> (secret, session token or None): the long-term keys, plus any STS issued
    keys: dict[str, tuple[str, str | None]] = field(default_factory=lambda: {ACCESS_KEY: (SECRET, None)})
    clock: datetime = field(default_factory=lambda: datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC))
    _ticks: itertools.count = field(default_factory=itertools.count)

    def fail_next(self, status: int, error_type: str, times: int = 1) -> None:
        self.faults.extend([(status, error_type)] * times)

    def now(self) -> str:
        # Each job a second apart, so ordering by creation time is well defined.
        moment = self.clock + timedelta(seconds=next(self._ticks))
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

    @staticmethod
    def error(status: int, error_type: str, message: str) -> web.Response:
        return web.json_response({"message": message}, status=status, headers={
            "x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"})

    # ---- auth --------------------------------------------------------------------------------

    def verify(self, request: web.Request, body: bytes) -> web.Response | None:
        if request.headers.get("Authorization", "") == f"Bearer {BEARER}":
            return None
        problem = check_signature(request, body, self.keys, "bedrock")
        if problem is None:
            return None
        return self.error(403, problem, "The security token included in the request is invalid."
                          if problem == "UnrecognizedClientException" else
                          "The request signature we calculated does not match the signature you provided.")

    # ---- the API -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.Response:
        body = await request.read()
        raw_path, _, raw_query = request.raw_path.partition("?")
        self.requests.append(Recorded(request.method, raw_path, dict(parse_qsl(raw_query)),
                                      dict(request.headers), body))
        if self.faults:
            status, error_type = self.faults.pop(0)
            return self.error(status, error_type, f"Scripted {error_type}.")
        refused = self.verify(request, body)
        if refused is not None:
            return refused
        parts = raw_path.strip("/").split("/")
        if parts[0] != "model-customization-jobs":
            return self.error(404, "UnknownOperationException", "Unknown operation.")
        if len(parts) == 1 and request.method == "POST":
            return self.create(json.loads(body))
        if len(parts) == 1 and request.method == "GET":
            return self.list(dict(parse_qsl(raw_query)))
        job = self.find(unquote(parts[1]))
        if job is None:
            return self.error(404, "ResourceNotFoundException", f"Job {unquote(parts[1])} not found.")
        if len(parts) == 2 and request.method == "GET":
            self.advance(job)
            return web.json_response(self.view(job))
        if len(parts) == 3 and parts[2] == "stop" and request.method == "POST":
            if job["status"] not in ("InProgress",):
                return self.error(400, "ValidationException", f"Job in status {job['status']} cannot be stopped.")
            job["status"] = "Stopping"
            job["_stopping"] = 0
            job["lastModifiedTime"] = self.now()
            return web.json_response({})
        return self.error(404, "UnknownOperationException", "Unknown operation.")

    def find(self, identifier: str) -> dict[str, Any] | None:
        if identifier in self.jobs:
            return self.jobs[identifier]
        return next((j for j in self.jobs.values() if j["jobName"] == identifier), None)

    def create(self, req: dict[str, Any]) -> web.Response:
        token = req.get("clientRequestToken")
        if token and token in self.tokens:  # idempotent replay: the same job
            return web.json_response({"jobArn": self.tokens[token]}, status=201)
        if any(j["jobName"] == req["jobName"] for j in self.jobs.values()):
            return self.error(400, "ValidationException", "A job with this name already exists.")
        model = req["baseModelIdentifier"]
        arn = (f"arn:aws:bedrock:{REGION}:{ACCOUNT}:model-customization-job/{model}/"
               + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12)))
        now = self.now()
        self.jobs[arn] = {
            "jobArn": arn, "jobName": req["jobName"], "outputModelName": req["customModelName"],
            "clientRequestToken": token, "roleArn": req["roleArn"], "status": "InProgress",
            "creationTime": now, "lastModifiedTime": now,
            "baseModelArn": f"arn:aws:bedrock:{REGION}::foundation-model/{model}",
            "hyperParameters": req.get("hyperParameters", {}), "trainingDataConfig": req["trainingDataConfig"],
            "validationDataConfig": req.get("validationDataConfig", {"validators": []}),
            "outputDataConfig": req["outputDataConfig"], "customizationType": req.get("customizationType",
                                                                                          "FINE_TUNING"),
            "_step": 0,
        }
        if token:
            self.tokens[token] = arn
        return web.json_response({"jobArn": arn}, status=201)

    def advance(self, job: dict[str, Any]) -> None:
        if job["status"] == "Stopping" and job["_stopping"] < 1:
            job["_stopping"] += 1  # the stop takes one more poll to land
        elif job["status"] == "Stopping":
            job["status"] = "Stopped"
            job["endTime"] = job["lastModifiedTime"] = self.now()
        elif job["status"] == "InProgress":
            job["_step"] += 1
            if job["_step"] >= 3:
                failing = job["outputModelName"].startswith("fail")
                job["status"] = "Failed" if failing else "Completed"
                job["endTime"] = job["lastModifiedTime"] = self.now()
                if failing:
                    job["failureMessage"] = "The training data has an invalid format on line 3."
                else:
                    model = job["baseModelArn"].split("foundation-model/")[1]
                    job["outputModelArn"] = (f"arn:aws:bedrock:{REGION}:{ACCOUNT}:custom-model/{model}/"
                                             + job["jobArn"][-12:])
                    job["trainingMetrics"] = {"trainingLoss": 0.25}

    def details(self, job: dict[str, Any]) -> dict[str, Any]:
        step, status = job["_step"], job["status"]
        done = "Completed" if status == "Completed" else status if status in ("Failed", "Stopped") else None
        phase = {"validationDetails": "InProgress" if step == 0 else "Completed",
                 "dataProcessingDetails": "NotStarted" if step == 0 else "Completed",
                 "trainingDetails": "NotStarted" if step < 2 else "InProgress"}
        if step == 1:
            phase["trainingDetails"] = "NotStarted"
        if done:
            phase["trainingDetails"] = done
        stamp = job["lastModifiedTime"]
        return {k: {"status": v, "creationTime": job["creationTime"], "lastModifiedTime": stamp}
                for k, v in phase.items()}

    def view(self, job: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in job.items() if not k.startswith("_") and v is not None}
        out["statusDetails"] = self.details(job)
        return out

    def summary(self, job: dict[str, Any]) -> dict[str, Any]:
        out = {k: job[k] for k in ("jobArn", "baseModelArn", "jobName", "status", "creationTime",
                                   "lastModifiedTime", "customizationType") if job.get(k) is not None}
        out["customModelName"] = job["outputModelName"]
        out["statusDetails"] = self.details(job)
        if job.get("endTime"):
            out["endTime"] = job["endTime"]
        if job.get("outputModelArn"):
            out["customModelArn"] = job["outputModelArn"]
        return out

    # ListModelCustomizationJobs paging, per botocore 1.44.8 (boto/botocore, botocore/data/bedrock/2023-04-20/
    # service-2.json: ListModelCustomizationJobsRequest.maxResults = MaxResults, integer 1–1000;
    # nextToken = PaginationToken, string 1–2048 matching \S*, "If the total number of results is greater
    # than the maxResults value … use the token returned in the nextToken field"; paginators-1.json:
    # input_token/output_token nextToken, limit_key maxResults, result_key modelCustomizationJobSummaries).
    # Not in the model, hence assumed: the default page size (100), a token is opaque, tied to the other
    # query parameters (a token with other filters, or an unknown one, is a ValidationException) and marks
    # an offset, and none is returned with the last page.
    def list(self, query: dict[str, str]) -> web.Response:
        items = list(self.jobs.values())
        if "creationTimeBefore" in query:
            before = query["creationTimeBefore"].replace("Z", "+00:00")
            items = [j for j in items if datetime.fromisoformat(j["creationTime"].replace("Z", "+00:00"))
                     < datetime.fromisoformat(before)]
        if "creationTimeAfter" in query:
            after = query["creationTimeAfter"].replace("Z", "+00:00")
            items = [j for j in items if datetime.fromisoformat(j["creationTime"].replace("Z", "+00:00"))
                     > datetime.fromisoformat(after)]
        if "statusEquals" in query:
            items = [j for j in items if j["status"] == query["statusEquals"]]
        if "nameContains" in query:
            items = [j for j in items if query["nameContains"] in j["jobName"]]
        items.sort(key=lambda j: j["creationTime"], reverse=query.get("sortOrder", "Descending") == "Descending")
        size = int(query.get("maxResults", "100"))
        if not 1 <= size <= 1000:
            return self.error(400, "ValidationException", "1 validation error detected: Value at 'maxResults' "
                              "failed to satisfy constraint: Member must have value less than or equal to 1000")
        bound = tuple(sorted((k, v) for k, v in query.items() if k not in ("maxResults", "nextToken")))
        start = 0
        if "nextToken" in query:
            issued = self.page_tokens.get(query["nextToken"])
            if issued is None or issued[0] != bound:
                return self.error(400, "ValidationException", "The provided pagination token is invalid.")
            start = issued[1]
        chunk = items[start:start + size]
        answer: dict[str, Any] = {"modelCustomizationJobSummaries": [self.summary(j) for j in chunk]}
        if start + size < len(items):
            token = base64.b64encode(secrets.token_bytes(48)).decode()
            self.page_tokens[token] = (bound, start + size)
            answer["nextToken"] = token
        return web.json_response(answer)
