"""A stateful stand-in for Fireworks AI's supervised fine-tuning jobs and datasets.

Shapes come from ``../shared/specs/fireworks-finetuning-contract.md`` (written from the official SDK,
``fireworks-ai==1.2.30``):
- Transport: ``/v1/accounts/{account_id}/...``, ``Authorization: Bearer``, camelCase JSON, ``:verb`` custom
  methods, list pagination by ``pageSize`` (default 50, max 200) / ``pageToken`` → ``nextPageToken``.
- ``SupervisedFineTuningJob`` (create body table + "Job object" table; ``state`` = JobState enum;
  ``status`` = Status {code, message}); create takes ``supervisedFineTuningJobId`` in the query string;
  ``:cancel`` / ``:resume`` take ``{}``; the list envelope is ``{supervisedFineTuningJobs, nextPageToken}``.
- ``Dataset`` (the Dataset table; ``state`` STATE_UNSPECIFIED/UPLOADING/READY; ``exampleCount`` as a
  string); create body ``{datasetId, dataset}``; ``:upload`` multipart field ``file`` answering
  ``DatasetUploadResponse`` (snake_case); the signed flow ``:getUploadEndpoint`` (``filenameToSize`` with
  sizes as strings) → PUT with ``Content-Type: application/octet-stream`` and
  ``X-Goog-Content-Length-Range: n,n`` and no credential → ``:validateUpload`` (refuses empty objects);
  ``:getDownloadEndpoint`` → ``filenameToSignedUrls``.
Not in the contract, hence assumed: error bodies in the gRPC-gateway shape
``{"code": <google.rpc.Code number>, "message": str, "details": []}`` (Fireworks's control plane is a
gRPC-gateway API: ``:verb`` methods, ``readMask``, ``nextPageToken``); the job lifecycle below; the
signed URLs point back at this server (``/signed/...``, plain http on loopback).

``tests/providers/test_fireworks.py`` validates the answers against schemas built from the contract's
tables, so this server cannot drift from it. Every request is recorded (method, path, query, headers,
body) so tests can assert what the gateway sent.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.standins.openai_like import ChatDialect, ChatScript, Recorded, chat_reply

# Chat: fireworks-ai (fw-ai-external/python-sdk@271c181) types/chat/chat_completion_chunk.py (usage on a chunk;
# the request has no stream_options, completion_create_params.py) — the usage rides on the finishing chunk
# (that only the last carries it is assumed, unverified). An undeployed model answers 404 with
# {"error": {"object": "error", "type": "invalid_request_error", "message": "Model not found, inaccessible,
# and/or not deployed"}} (the message Fireworks is publicly seen to send; the body shape is assumed).
FIREWORKS_CHAT = ChatDialect(openai_usage=False)
NOT_DEPLOYED = "Model not found, inaccessible, and/or not deployed"

GRPC = {"INVALID_ARGUMENT": 3, "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7,
        "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "INTERNAL": 13, "UNAVAILABLE": 14,
        "UNAUTHENTICATED": 16}
STATUS_GRPC = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
               409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# One state per GET: CREATING → VALIDATING → PENDING → RUNNING → WRITING_RESULTS → COMPLETED.
LIFECYCLE = ["JOB_STATE_CREATING", "JOB_STATE_VALIDATING", "JOB_STATE_PENDING", "JOB_STATE_RUNNING",
             "JOB_STATE_WRITING_RESULTS", "JOB_STATE_COMPLETED"]
TERMINAL = {"JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED",
            "JOB_STATE_EARLY_STOPPED"}
JOB_FIELDS = {"dataset", "baseModel", "warmStartFrom", "outputModel", "displayName", "epochs", "learningRate",
              "learningRateWarmupSteps", "loraRank", "maxContextLength", "batchSize", "batchSizeSamples",
              "gradientAccumulationSteps", "optimizerWeightDecay", "earlyStop", "evaluationDataset",
              "evalAutoCarveout", "isTurbo", "jinjaTemplate", "nodes", "region", "wandbConfig"}
# WandbConfig, request form (fireworks-ai 1.2.30 fireworks/types/shared_params/wandb_config.py; the same in
# fw-ai-external/python-sdk@8399c12 src/fireworks/types/shared_params/wandb_config.py). The answer's form
# (types/shared/wandb_config.py) adds `url` and may echo `apiKey`, which this stand-in does.
WANDB_FIELDS = {"apiKey", "enabled", "entity", "project", "runId"}


def _invalid(message: str) -> web.HTTPBadRequest:
    """gRPC-gateway's INVALID_ARGUMENT answer, raised from inside a handler."""
    return web.HTTPBadRequest(text=json.dumps({"code": GRPC["INVALID_ARGUMENT"], "message": message, "details": []}),
                              content_type="application/json")


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class FireworksStandIn:
    api_key: str = "fw-standin-secret-0001"
    account: str = "acme-ai"
    requests: list[Recorded] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    contents: dict[str, dict[str, bytes]] = field(default_factory=dict)  # dataset id → filename → bytes
    signed: dict[str, dict[str, Any]] = field(default_factory=dict)  # token → {dataset, filename, size, verb}
    expected: dict[str, list[str]] = field(default_factory=dict)  # dataset id → files registered for upload
    # scripted faults: path-substring → statuses to answer (in order) before behaving normally
    faults: dict[str, list[int]] = field(default_factory=dict)
    url: str = ""
    lose_create_answers: int = 0  # create the job, then answer 503 (an answer lost on the way back)
    # Set on every new dataset when not empty: what an account that requires customer-managed keys would
    # answer (the field is undeclared; fireworks-ai 1.2.30 lib/dataset_upload.py reads it).
    encryption_state: str = ""
    page_tokens: dict[str, tuple[Any, int]] = field(default_factory=dict)  # token → (bound request, offset)
    # chat and models: serverless base models anyone may call; deployments of base models a LoRA addon can
    # be loaded onto; deployedModels (name → DeployedModel) and models deleted
    chat: ChatScript = field(default_factory=lambda: ChatScript())
    serverless: tuple[str, ...] = ("accounts/fireworks/models/llama-v3p1-8b-instruct",)
    deployments: set[str] = field(default_factory=lambda: {"accounts/acme-ai/deployments/base-llama"})
    deployed: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted_models: set[str] = field(default_factory=set)
    _clock: itertools.count = field(default_factory=lambda: itertools.count(1))

    # ---- helpers ----
    def now(self) -> str:
        # strictly increasing, so createTime orders objects as created
        return rfc3339(time.time() + next(self._clock) / 1000)

    @staticmethod
    def error(status: int, message: str) -> web.Response:
        name = STATUS_GRPC.get(status, "UNKNOWN")
        return web.json_response({"code": GRPC.get(name, 2), "message": message, "details": []}, status=status)

    def job_name(self, job_id: str) -> str:
        return f"accounts/{self.account}/supervisedFineTuningJobs/{job_id}"

    def dataset_name(self, dataset_id: str) -> str:
        return f"accounts/{self.account}/datasets/{dataset_id}"

    def advance(self, job: dict[str, Any]) -> None:
        state = job["state"]
        if state == "JOB_STATE_CANCELLING":
            job.update(state="JOB_STATE_CANCELLED", completedTime=self.now(),
                       status={"code": "CANCELLED", "message": "Cancelled by the user."})
        elif state in LIFECYCLE[:-1]:
            if job.get("baseModel", "").rsplit("/", 1)[-1].startswith("fail") and state == "JOB_STATE_VALIDATING":
                job.update(state="JOB_STATE_FAILED", completedTime=self.now(),
                           status={"code": "INVALID_ARGUMENT",
                                   "message": "Dataset row 3: assistant message is missing."})
            else:
                job["state"] = LIFECYCLE[LIFECYCLE.index(state) + 1]
                if job["state"] == "JOB_STATE_RUNNING":
                    job["jobProgress"] = {"percent": 50, "epoch": 1}
                if job["state"] == "JOB_STATE_COMPLETED":
                    job.update(completedTime=self.now(), status={"code": "OK", "message": ""},
                               jobProgress={"percent": 100, "epoch": job.get("epochs", 1), "inputTokens": 4096})
        job["updateTime"] = self.now()

    # ---- the app ----
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1024**3)
        r = app.router
        base = "/v1/accounts/{account}"
        r.add_post(f"{base}/supervisedFineTuningJobs", self.create_job)
        r.add_get(f"{base}/supervisedFineTuningJobs", self.list_jobs)
        r.add_get(f"{base}/supervisedFineTuningJobs/{{id}}", self.get_job)
        r.add_delete(f"{base}/supervisedFineTuningJobs/{{id}}", self.delete_job)
        r.add_post(f"{base}/supervisedFineTuningJobs/{{id}}", self.job_verb)
        r.add_post(f"{base}/datasets", self.create_dataset)
        r.add_get(f"{base}/datasets", self.list_datasets)
        r.add_get(f"{base}/datasets/{{id}}", self.dataset_get_or_verb)
        r.add_delete(f"{base}/datasets/{{id}}", self.delete_dataset)
        r.add_post(f"{base}/datasets/{{id}}", self.dataset_verb)
        r.add_get(f"{base}/models", self.list_models)
        r.add_get(f"{base}/models/{{id}}", self.get_model)
        r.add_delete(f"{base}/models/{{id}}", self.delete_model)
        r.add_post(f"{base}/deployedModels", self.load_lora)
        r.add_post("/inference/v1/chat/completions", self.chat_completions)
        r.add_put("/signed/{token}", self.signed_put)
        r.add_get("/signed/{token}", self.signed_get)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        streamed = request.path.endswith(":upload") or request.path.startswith("/signed/")
        body = b"" if streamed else await request.read()
        self.requests.append(Recorded(request.method, request.path, dict(request.query), dict(request.headers),
                                      body))
        for needle, statuses in self.faults.items():
            if needle in request.path and statuses:
                status = statuses.pop(0)
                headers = {"Retry-After": "0"} if status == 429 else {}
                resp = self.error(status, f"scripted {status}")
                resp.headers.update(headers)
                return resp
        if request.path.startswith("/signed/"):
            return await handler(request)  # type: ignore[no-any-return]  # signed: no credential
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self.error(401, "unauthenticated: invalid API key")
        if request.match_info.get("account") != self.account and not request.path.startswith("/inference/"):
            return self.error(403, f"permission denied on account '{request.match_info.get('account')}'")
        return await handler(request)  # type: ignore[no-any-return]

    # ---- pagination ----
    # fireworks-ai 1.2.3 (fw-ai-external/python-sdk @ 8399c12, src/fireworks/types/
    # supervised_fine_tuning_job_list_params.py and dataset_list_params.py): pageSize "The maximum page_size
    # is 200, values above 200 will be coerced to 200. If unspecified, the default is 50"; pageToken "When
    # paginating, all other parameters … must match the call that provided the page token"; orderBy "If not
    # specified, the default order is by name". src/fireworks/pagination.py: the next page is asked for while
    # nextPageToken is non-empty. AIP-158 (which these follow): a new pageSize with a token is honoured, other
    # changed parameters are INVALID_ARGUMENT, a negative pageSize too. Assumed (not in the SDK): tokens
    # are opaque and mark an offset, and a full page always carries one (the next page may be empty).
    def _page(self, items: list[dict[str, Any]], request: web.Request) -> tuple[list[dict[str, Any]], str]:
        order = request.query.get("orderBy", "")
        if order not in ("", "createTime", "createTime desc"):
            raise web.HTTPBadRequest(text="unsupported orderBy")
        items = sorted(items, key=lambda o: (o["createTime"], o["name"]) if order else o["name"],
                       reverse=order.endswith("desc"))
        size = int(request.query.get("pageSize") or 0)
        if size < 0:
            raise _invalid("page_size must not be negative")
        size = min(size, 200) or 50
        bound = (request.path, tuple(sorted((k, v) for k, v in request.query.items()
                                            if k not in ("pageSize", "pageToken"))))
        token = request.query.get("pageToken")
        start = 0
        if token:
            issued = self.page_tokens.get(token)
            if issued is None or issued[0] != bound:
                raise _invalid("invalid page token")
            start = issued[1]
        page = items[start:start + size]
        next_token = ""
        if len(page) == size:
            next_token = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            self.page_tokens[next_token] = (bound, start + size)
        return page, next_token

    # ---- jobs ----
    async def create_job(self, request: web.Request) -> web.Response:
        body = await request.json()
        unknown = sorted(set(body) - JOB_FIELDS)
        if unknown:
            return self.error(400, f"unknown field '{unknown[0]}'")
        job_id = request.query.get("supervisedFineTuningJobId") or str(uuid.uuid4())  # SDK: random UUID
        if "supervisedFineTuningJobId" in request.query and not ID_RE.match(job_id):
            return self.error(400, f"invalid supervisedFineTuningJobId '{job_id}'")
        if job_id in self.jobs:
            return self.error(409, f"supervised fine-tuning job '{job_id}' already exists")
        if bool(body.get("baseModel")) == bool(body.get("warmStartFrom")):
            return self.error(400, "exactly one of baseModel or warmStartFrom must be set")
        wandb = body.get("wandbConfig")
        if wandb is not None and (not isinstance(wandb, dict) or set(wandb) - WANDB_FIELDS):
            return self.error(400, "invalid wandbConfig")
        for key in ("dataset", "evaluationDataset"):
            if key in body:
                ds = self.datasets.get(body[key].rsplit("/", 1)[-1])
                if ds is None or ds["name"] != body[key]:
                    return self.error(400, f"{key} '{body[key]}' not found")
                if ds["state"] != "READY":
                    return self.error(400, f"{key} '{body[key]}' is not READY")
        now = self.now()
        job = {**body, "name": self.job_name(job_id), "state": "JOB_STATE_CREATING",
               "status": {"code": "OK", "message": ""}, "createTime": now, "updateTime": now,
               "createdBy": "dev@acme.example", "outputModel": f"accounts/{self.account}/models/"
               f"{body.get('outputModel') or job_id}"}
        if wandb is not None:
            job["wandbConfig"] = {**wandb, "url": f"https://wandb.ai/{wandb.get('project')}/runs/{job_id}"}
        self.jobs[job_id] = job
        if self.lose_create_answers > 0:
            self.lose_create_answers -= 1
            return self.error(503, "the answer was lost")
        return web.json_response(job)

    async def list_jobs(self, request: web.Request) -> web.Response:
        page, token = self._page(list(self.jobs.values()), request)
        out: dict[str, Any] = {"supervisedFineTuningJobs": page}
        if token:
            out["nextPageToken"] = token
        return web.json_response(out)

    async def get_job(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self.error(404, f"supervised fine-tuning job '{request.match_info['id']}' not found")
        self.advance(job)
        return web.json_response(job)

    async def delete_job(self, request: web.Request) -> web.Response:
        if self.jobs.pop(request.match_info["id"], None) is None:
            return self.error(404, "not found")
        return web.json_response({})

    async def job_verb(self, request: web.Request) -> web.Response:
        job_id, _, verb = request.match_info["id"].partition(":")
        job = self.jobs.get(job_id)
        if verb not in ("cancel", "resume"):
            return self.error(404, f"unknown method ':{verb}'")
        if job is None:
            return self.error(404, f"supervised fine-tuning job '{job_id}' not found")
        if not isinstance(await request.json(), dict):
            return self.error(400, "body must be an object")
        if verb == "cancel":
            if job["state"] in TERMINAL or job["state"] == "JOB_STATE_CANCELLING":
                return self.error(400, f"job is {job['state']} and cannot be cancelled")
            job.update(state="JOB_STATE_CANCELLING", updateTime=self.now())
            return web.json_response({})
        if job["state"] not in ("JOB_STATE_CANCELLED", "JOB_STATE_FAILED", "JOB_STATE_PAUSED"):
            return self.error(400, f"job is {job['state']} and cannot be resumed")
        job.update(state="JOB_STATE_PENDING", updateTime=self.now(), status={"code": "OK", "message": ""})
        job.pop("completedTime", None)
        return web.json_response(job)

    # ---- datasets ----
    async def create_dataset(self, request: web.Request) -> web.Response:
        body = await request.json()
        dataset_id = body.get("datasetId")
        if not isinstance(dataset_id, str) or not ID_RE.match(dataset_id) or not isinstance(body.get("dataset"), dict):
            return self.error(400, "datasetId and dataset are required; datasetId must be a valid id")
        if dataset_id in self.datasets:
            return self.error(409, f"dataset '{dataset_id}' already exists")
        now = self.now()
        ds = {**body["dataset"], "name": self.dataset_name(dataset_id), "state": "UPLOADING",
              "status": {"code": "OK", "message": ""}, "createTime": now, "updateTime": now,
              "createdBy": "dev@acme.example"}
        if self.encryption_state:
            ds["encryptionState"] = self.encryption_state
        self.datasets[dataset_id] = ds
        self.contents[dataset_id] = {}
        return web.json_response(ds)

    async def list_datasets(self, request: web.Request) -> web.Response:
        page, token = self._page(list(self.datasets.values()), request)
        out: dict[str, Any] = {"datasets": page}
        if token:
            out["nextPageToken"] = token
        return web.json_response(out)

    async def dataset_get_or_verb(self, request: web.Request) -> web.Response:
        dataset_id, _, verb = request.match_info["id"].partition(":")
        ds = self.datasets.get(dataset_id)
        if ds is None:
            return self.error(404, f"dataset '{dataset_id}' not found")
        if not verb:
            return web.json_response(ds)
        if verb != "getDownloadEndpoint":
            return self.error(404, f"unknown method ':{verb}'")
        urls = {}
        for filename in self.contents[dataset_id]:
            token = uuid.uuid4().hex
            self.signed[token] = {"dataset": dataset_id, "filename": filename, "verb": "GET"}
            urls[filename] = f"{self.url}/signed/{token}"
        return web.json_response({"filenameToSignedUrls": urls})

    async def delete_dataset(self, request: web.Request) -> web.Response:
        dataset_id = request.match_info["id"]
        if self.datasets.pop(dataset_id, None) is None:
            return self.error(404, f"dataset '{dataset_id}' not found")
        self.contents.pop(dataset_id, None)
        return web.json_response({})

    async def dataset_verb(self, request: web.Request) -> web.Response:
        dataset_id, _, verb = request.match_info["id"].partition(":")
        ds = self.datasets.get(dataset_id)
        if ds is None:
            return self.error(404, f"dataset '{dataset_id}' not found")
        if verb == "upload":
            reader = await request.multipart()
            filename, data = "", b""
            async for part in reader:
                if getattr(part, "name", None) == "file":
                    filename = part.filename or "data.jsonl"  # type: ignore[union-attr]
                    data = bytes(await part.read())  # type: ignore[union-attr]
            if not data:
                return self.error(400, "multipart field 'file' is missing or empty")
            self.contents[dataset_id] = {filename: data}
            ds.update(state="READY", updateTime=self.now())
            return web.json_response({"id": dataset_id, "bytes": len(data), "created_at": int(time.time()),
                                      "filename": filename, "object": "file", "purpose": "fine-tune"})
        body = await request.json()
        if verb == "getUploadEndpoint":
            sizes = body.get("filenameToSize")
            if not isinstance(sizes, dict) or not sizes or not all(isinstance(v, str) for v in sizes.values()):
                return self.error(400, "filenameToSize must map file names to sizes given as strings")
            self.contents[dataset_id] = {}
            urls = {}
            for filename, size in sizes.items():
                token = uuid.uuid4().hex
                self.signed[token] = {"dataset": dataset_id, "filename": filename, "size": int(size), "verb": "PUT"}
                urls[filename] = f"{self.url}/signed/{token}"
            self.expected[dataset_id] = sorted(sizes)
            return web.json_response({"filenameToSignedUrls": urls})
        if verb == "validateUpload":
            got = self.contents.get(dataset_id) or {}
            expected = self.expected.get(dataset_id) or []
            if not expected or sorted(got) != expected or not all(got.values()):
                return self.error(400, "upload is incomplete or empty")
            ds.update(state="READY", updateTime=self.now())
            return web.json_response({})
        return self.error(404, f"unknown method ':{verb}'")

    async def signed_put(self, request: web.Request) -> web.Response:
        grant = self.signed.get(request.match_info["token"])
        if grant is None or grant["verb"] != "PUT":
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>")
        size = grant["size"]
        if (request.headers.get("Content-Type") != "application/octet-stream"
                or request.headers.get("X-Goog-Content-Length-Range") != f"{size},{size}"
                or "Authorization" in request.headers):
            return web.Response(status=403, text="<Error><Code>SignatureDoesNotMatch</Code></Error>")
        data = await request.read()
        if len(data) != size:
            return web.Response(status=400, text="<Error><Code>EntityTooLarge</Code></Error>")
        self.contents.setdefault(grant["dataset"], {})[grant["filename"]] = data
        return web.Response(status=200)

    async def signed_get(self, request: web.Request) -> web.StreamResponse:
        grant = self.signed.get(request.match_info["token"])
        if grant is None or grant["verb"] != "GET" or "Authorization" in request.headers:
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>")
        data = (self.contents.get(grant["dataset"]) or {}).get(grant["filename"])
        if data is None:
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")
        return web.Response(body=data, content_type="application/octet-stream")

    # ---- chat and models ----
    # Model (python-sdk@3b8eb54 types/model.py): name, kind (HF_PEFT_ADDON for a tuned LoRA), state (READY),
    # peftDetails.baseModel, fineTuningJob, createTime, deployedModelRefs [{name, deployment, state, default}]
    # ("populated from GetModel only"); the list is {models, nextPageToken, totalSize} (AIP-158). DeployedModel
    # (types/deployed_model.py): name, model, deployment, default, state DEPLOYING → DEPLOYED (here: one step per
    # GET of the model), status. The SDK's lora.load posts {model, deployment, default, …} to deployedModels.
    def tuned_models(self) -> dict[str, dict[str, Any]]:
        return {j["outputModel"]: j for j in self.jobs.values()
                if j["state"] == "JOB_STATE_COMPLETED" and j["outputModel"] not in self.deleted_models}

    def model_out(self, name: str, job: dict[str, Any], *, detailed: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "kind": "HF_PEFT_ADDON", "state": "READY", "displayName": name.rsplit("/")[-1],
                               "createTime": job["completedTime"], "fineTuningJob": job["name"],
                               "peftDetails": {"baseModel": job.get("baseModel") or job.get("warmStartFrom"), "r": 8,
                                               "targetModules": ["q_proj", "v_proj"]}}
        if detailed:
            out["deployedModelRefs"] = [{"name": d["name"], "deployment": d["deployment"], "state": d["state"],
                                         "default": d["default"]} for d in self.deployed.values() if d["model"] == name]
        return out

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model")
        live = any(d["model"] == model and d["state"] == "DEPLOYED" for d in self.deployed.values())
        if model not in self.serverless and not live:
            return web.json_response({"error": {"object": "error", "type": "invalid_request_error",
                                                "message": NOT_DEPLOYED}}, status=404)
        return await chat_reply(request, FIREWORKS_CHAT, self.chat, str(model))

    async def list_models(self, request: web.Request) -> web.Response:
        models = [self.model_out(n, j, detailed=False) for n, j in self.tuned_models().items()]
        return web.json_response({"models": models, "nextPageToken": "", "totalSize": len(models)})

    def _model_name(self, request: web.Request) -> str:
        return f"accounts/{self.account}/models/{request.match_info['id']}"

    async def get_model(self, request: web.Request) -> web.Response:
        name = self._model_name(request)
        job = self.tuned_models().get(name)
        if job is None:
            return self.error(404, f"model '{name}' not found")
        out = self.model_out(name, job, detailed=True)
        for d in self.deployed.values():  # a deployment comes up one step per look
            if d["model"] == name and d["state"] == "DEPLOYING":
                d["state"] = "DEPLOYED"
        return web.json_response(out)

    async def delete_model(self, request: web.Request) -> web.Response:
        name = self._model_name(request)
        if name not in self.tuned_models():
            return self.error(404, f"model '{name}' not found")
        self.deleted_models.add(name)
        return web.json_response({})

    async def load_lora(self, request: web.Request) -> web.Response:
        body = await request.json()
        unknown = sorted(set(body) - {"model", "deployment", "default", "description", "displayName", "public",
                                      "serverless"})
        if unknown:
            return self.error(400, f"unknown field '{unknown[0]}'")
        if body.get("model") not in self.tuned_models():
            return self.error(404, f"model '{body.get('model')}' not found")
        if body.get("deployment") not in self.deployments:
            return self.error(404, f"deployment '{body.get('deployment')}' not found")
        name = f"accounts/{self.account}/deployedModels/{uuid.uuid4().hex[:12]}"
        deployed = {"name": name, "model": body["model"], "deployment": body["deployment"],
                    "default": bool(body.get("default")), "state": "DEPLOYING", "createTime": self.now(),
                    "status": {"code": "OK", "message": ""}}
        self.deployed[name] = deployed
        return web.json_response(deployed)
