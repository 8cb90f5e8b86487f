"""A stateful stand-in for OpenAI's fine-tuning, files and uploads API — and, in Azure mode, for
Azure OpenAI's GA data plane (``/openai/...?api-version=2024-10-21``, ``api-key`` header, Azure's
statuses and ``organisation_id``), a dated preview of it (``azure-preview``, ``api_version``), or its
``/openai/v1`` surface.

Azure authoring modes follow Azure/azure-rest-api-specs
``specification/cognitiveservices/data-plane/AzureOpenAI/authoring/stable/2024-10-21/azureopenai.json``
(commit 3ecc2097, ../shared/specs) and ``.../preview/2025-04-01-preview/azureopenai.json`` (commit 57b4285a)
with their ``examples/``: create answers 201 with ``"hyperparameters": {"n_epochs": -1}`` when the service
chose; hyperparameters are int32/double (a string such as "auto" is refused); ``suffix`` up to 40 characters;
``Files_List`` takes only ``purpose`` before 2025-04-01-preview and answers ``{"object", "data"}`` without
``has_more``; ``FineTuning_Delete`` answers 204 with no body; pause/resume only from 2025-04-01-preview;
``trainingType`` (Azure's fine-tuning how-to, MicrosoftDocs/azure-ai-docs fine-tuning-rest.md) from
2025-04-01-preview. What Azure answers for a field its schema lacks is unverified: the stand-in answers 400.

Shapes follow ``../shared/specs/openai-openapi.yaml`` (FineTuningJob, OpenAIFile, Upload, list
envelopes, ErrorResponse) and ``azure-openai-authoring-2024-10-21.json`` (FineTuningJob with
FineTuningState, File with FileState); ``tests/test_standins.py`` validates its answers against those
schemas so it cannot drift. It records every request (method, path, query, headers, body) so tests can
assert exactly what the gateway sent.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

AZURE_STATUS = {"validating_files": "pending", "queued": "pending", "running": "running",
                "succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled"}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class StandIn:
    mode: str = "openai"  # openai | azure-ga | azure-preview | azure-v1
    api_key: str = "sk-standin-secret-0001"
    api_version: str = "2025-04-01-preview"  # azure-preview mode only
    # Azure modes: Entra ID access tokens accepted as `Authorization: Bearer` instead of the api-key.
    bearer_tokens: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    parts: dict[str, bytes] = field(default_factory=dict)
    # scripted faults: path-substring -> list of statuses to answer before behaving normally
    faults: dict[str, list[int]] = field(default_factory=dict)
    # chat: what the model says; Azure deployments (name -> model); base models every key may call
    chat: ChatScript = field(default_factory=lambda: ChatScript())
    deployments: dict[str, str] = field(default_factory=dict)
    base_models: tuple[str, ...] = ("gpt-4o-mini-2024-07-18",)
    deleted_models: set[str] = field(default_factory=set)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    # ---- helpers ----
    def next_id(self, prefix: str) -> str:
        return f"{prefix}-standin{next(self._ids):06d}"

    @property
    def prefix(self) -> str:
        return {"openai": "", "azure-ga": "/openai", "azure-preview": "/openai", "azure-v1": "/openai/v1"}[self.mode]

    @property
    def authoring(self) -> bool:
        """Azure's dated (authoring) surface: GA or a dated preview."""
        return self.mode in ("azure-ga", "azure-preview")

    def since(self, date: str) -> bool:
        """Whether this Azure preview has a feature first specified in the `date` preview."""
        return self.mode == "azure-v1" or self.mode == "azure-preview" and self.api_version[:10] >= date

    def error(self, status: int, message: str, code: str | None = None, param: str | None = None) -> web.Response:
        return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                            "code": code}}, status=status)

    def out_job(self, job: dict[str, Any]) -> dict[str, Any]:
        if not self.authoring:
            return job
        dropped = ("organization_id", "metadata", "integrations") + (("method",) if self.mode == "azure-ga" else ())
        azure = {k: v for k, v in job.items() if k not in dropped}
        azure["organisation_id"] = job["organization_id"]
        azure["status"] = AZURE_STATUS[job["status"]]
        # The examples' FineTuningJob: numbers only, -1 where the service chose (post_finetuning_job.json).
        azure["hyperparameters"] = {k: -1 if v == "auto" else v for k, v in job["hyperparameters"].items()
                                    if k == "n_epochs" or v != "auto"}
        return azure

    def out_file(self, f: dict[str, Any]) -> dict[str, Any]:
        if not self.authoring:
            return f
        return {**f, "status": "processed" if f["status"] == "processed" else "pending"}

    def advance(self, job: dict[str, Any]) -> None:
        """Jobs move on one step per retrieve, so a poll loop sees a real lifecycle."""
        order = ["validating_files", "queued", "running", "succeeded"]
        if job["status"] in order[:-1]:
            if job["model"].startswith("fail"):
                job["status"] = "failed"
                job["error"] = {"code": "invalid_training_file", "message": "Training file has bad lines.",
                                "param": "training_file"}
                job["finished_at"] = int(time.time())
                return
            job["status"] = order[order.index(job["status"]) + 1]
            if job["status"] == "succeeded":
                job["finished_at"] = int(time.time())
                job["fine_tuned_model"] = f"ft:{job['model']}:org:{job.get('_suffix') or 'x'}:{job['id'][-6:]}"
                job["trained_tokens"] = 12345
                result_id = self.next_id("file")
                csv = b"step,train_loss\n1,1.5\n2,0.9\n"
                self.files[result_id] = {"object": "file", "id": result_id, "bytes": len(csv),
                                         "created_at": int(time.time()), "filename": "step_metrics.csv",
                                         "purpose": "fine-tune-results", "status": "processed"}
                self.contents[result_id] = csv
                job["result_files"] = [result_id]

    # ---- the app ----
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1024**3)
        p = self.prefix
        r = app.router
        r.add_post(f"{p}/fine_tuning/jobs", self.create_job)
        r.add_get(f"{p}/fine_tuning/jobs", self.list_jobs)
        r.add_get(f"{p}/fine_tuning/jobs/{{id}}", self.get_job)
        r.add_post(f"{p}/fine_tuning/jobs/{{id}}/cancel", self.cancel_job)
        if self.authoring:
            r.add_delete(f"{p}/fine_tuning/jobs/{{id}}", self.delete_job)
        if not self.authoring or self.since("2025-04-01"):
            r.add_post(f"{p}/fine_tuning/jobs/{{id}}/pause", self.pause_job)
            r.add_post(f"{p}/fine_tuning/jobs/{{id}}/resume", self.resume_job)
        if not self.authoring:
            r.add_route("*", f"{p}/fine_tuning/checkpoints/{{ckpt}}/permissions", self.permissions)
            r.add_route("*", f"{p}/fine_tuning/checkpoints/{{ckpt}}/permissions/{{pid}}", self.permissions)
            r.add_post(f"{p}/fine_tuning/alpha/graders/{{op}}", self.graders)
        r.add_get(f"{p}/fine_tuning/jobs/{{id}}/events", self.events)
        r.add_get(f"{p}/fine_tuning/jobs/{{id}}/checkpoints", self.checkpoints)
        r.add_post(f"{p}/files", self.upload)
        r.add_get(f"{p}/files", self.list_files)
        r.add_get(f"{p}/files/{{id}}", self.get_file)
        r.add_delete(f"{p}/files/{{id}}", self.delete_file)
        r.add_get(f"{p}/files/{{id}}/content", self.content)
        r.add_post(f"{p}/uploads", self.create_upload)
        r.add_post(f"{p}/uploads/{{id}}/parts", self.add_part)
        r.add_post(f"{p}/uploads/{{id}}/complete", self.complete_upload)
        r.add_post(f"{p}/uploads/{{id}}/cancel", self.cancel_upload)
        if self.mode == "azure-ga":
            r.add_post(f"{p}/deployments/{{deployment}}/chat/completions", self.chat_completions)
        else:
            r.add_post(f"{p}/chat/completions", self.chat_completions)
        r.add_get(f"{p}/models", self.list_models)
        r.add_get(f"{p}/models/{{model}}", self.get_model)
        if self.mode == "openai":
            r.add_delete(f"{p}/models/{{model}}", self.delete_model)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        is_upload = request.path.endswith("/files") and request.method == "POST" or request.path.endswith("/parts")
        body = b"" if is_upload else await request.read()
        self.requests.append(Recorded(request.method, request.path, dict(request.query), dict(request.headers),
                                      body))
        for needle, statuses in self.faults.items():
            if needle in request.path and statuses:
                status = statuses.pop(0)
                headers = {"Retry-After": "0"} if status == 429 else {}
                return web.json_response({"error": {"message": f"scripted {status}", "type": "server_error",
                                                    "param": None, "code": None}}, status=status, headers=headers)
        if self.mode.startswith("azure"):
            wanted = {"azure-ga": "2024-10-21", "azure-preview": self.api_version}.get(self.mode)
            if wanted and request.query.get("api-version") != wanted:
                return self.error(400, "api-version is missing or unsupported", "invalid_api_version")
            bearer = request.headers.get("Authorization", "")
            if request.headers.get("api-key") != self.api_key and bearer[7:] not in self.bearer_tokens:
                return self.error(401, "Access denied due to invalid subscription key.", "401")
        elif request.headers.get("Authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("Authorization", "")[7:]
            return self.error(401, f"Incorrect API key provided: {given[:3]}***{given[-4:]}.", "invalid_api_key")
        return await handler(request)  # type: ignore[no-any-return]

    def azure_refusal(self, body: dict[str, Any]) -> web.Response | None:
        """What the authoring specs' FineTuningJobCreation does not take (answer unverified: a 400)."""
        fields = {"model", "training_file", "validation_file", "hyperparameters", "suffix", "seed"}
        if self.since("2025-02-01"):
            fields |= {"method", "integrations"}
        if self.since("2025-04-01"):
            fields.add("trainingType")
        for name in body:
            if name not in fields:
                return self.error(400, f"The property '{name}' is not supported.", "invalidPayload", name)
        for holder in [body.get("hyperparameters") or {}, *((v or {}).get("hyperparameters") or {}
                                                            for k, v in (body.get("method") or {}).items()
                                                            if k != "type" and isinstance(v, dict))]:
            for name, value in holder.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    return self.error(400, f"hyperparameters.{name} must be a number.", "invalidPayload", name)
        if len(body.get("suffix") or "") > 40:
            return self.error(400, "suffix can contain up to 40 characters.", "invalidPayload", "suffix")
        return None

    async def create_job(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.authoring and (refused := self.azure_refusal(body)) is not None:
            return refused
        if body.get("training_file") not in self.files:
            return self.error(400, f"invalid training_file: {body.get('training_file')}", "invalid_file",
                              "training_file")
        job_id = self.next_id("ftjob")
        hp = body.get("hyperparameters") or ((body.get("method") or {}).get("supervised") or {}).get(
            "hyperparameters") or {}
        job = {"object": "fine_tuning.job", "id": job_id, "model": body["model"], "created_at": int(time.time()),
               "finished_at": None, "fine_tuned_model": None, "organization_id": "org-standin",
               "result_files": [], "status": "validating_files", "validation_file": body.get("validation_file"),
               "training_file": body["training_file"],
               "hyperparameters": {"batch_size": hp.get("batch_size", "auto"),
                                   "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto"),
                                   "n_epochs": hp.get("n_epochs", "auto")},
               "trained_tokens": None, "error": None, "seed": body.get("seed") or 42, "estimated_finish": None,
               "integrations": None, "metadata": body.get("metadata"),
               "method": body.get("method") or {"type": "supervised", "supervised": {"hyperparameters": hp}}}
        self.jobs[job_id] = job
        job["_suffix"] = body.get("suffix")
        job["_training_type"] = body.get("trainingType")
        return web.json_response(self._public(self.out_job(job)), status=201 if self.authoring else 200)

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def _page(self, items: list[dict[str, Any]], request: web.Request, default: int) -> tuple[list[Any], bool]:
        limit = int(request.query.get("limit", default))
        after = request.query.get("after")
        if after:
            ids = [i["id"] for i in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        return items[:limit], len(items) > limit

    async def list_jobs(self, request: web.Request) -> web.Response:
        jobs = sorted(self.jobs.values(), key=lambda j: j["id"], reverse=True)
        meta = {k[9:-1]: v for k, v in request.query.items() if k.startswith("metadata[")}
        if meta:
            jobs = [j for j in jobs if all((j.get("metadata") or {}).get(k) == v for k, v in meta.items())]
        page, more = self._page(jobs, request, 20)
        return web.json_response({"object": "list", "data": [self._public(self.out_job(j)) for j in page],
                                  "has_more": more})

    def _job(self, request: web.Request) -> dict[str, Any] | None:
        return self.jobs.get(request.match_info["id"])

    async def get_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self.error(404, f"No such fine-tuning job: {request.match_info['id']}", "fine_tune_not_found")
        self.advance(job)
        return web.json_response(self._public(self.out_job(job)))

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self.error(404, "No such job", "fine_tune_not_found")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return self.error(400, f"Job {job['id']} has already {job['status']}.", "invalid_state")
        job["status"] = "cancelled"
        job["finished_at"] = int(time.time())
        return web.json_response(self._public(self.out_job(job)))

    async def delete_job(self, request: web.Request) -> web.Response:
        if self.jobs.pop(request.match_info["id"], None) is None:
            return self.error(404, "No such job", "fine_tune_not_found")
        return web.Response(status=204)  # FineTuning_Delete: "204: The fine tune was successfully deleted."

    async def pause_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self.error(404, "No such job", "fine_tune_not_found")
        job["status"] = "queued"
        return web.json_response(self._public(self.out_job(job)))

    resume_job = pause_job

    async def events(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self.error(404, "No such job", "fine_tune_not_found")
        events = [{"object": "fine_tuning.job.event", "id": f"ftevent-{job['id'][-6:]}-{n}",
                   "created_at": job["created_at"] + n, "level": "info", "message": msg, "type": "message"}
                  for n, msg in enumerate(["Validating training file", "Fine-tuning job started"])]
        page, more = self._page(events, request, 20)
        return web.json_response({"object": "list", "data": page, "has_more": more})

    async def checkpoints(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self.error(404, "No such job", "fine_tune_not_found")
        data = [{"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{job['id'][-6:]}",
                 "created_at": job["created_at"], "fine_tuned_model_checkpoint": f"ft:{job['model']}:ckpt-step-10",
                 "fine_tuning_job_id": job["id"], "step_number": 10,
                 "metrics": {"step": 10, "train_loss": 0.5, "train_mean_token_accuracy": 0.8, "valid_loss": 0.6,
                             "valid_mean_token_accuracy": 0.7, "full_valid_loss": 0.6,
                             "full_valid_mean_token_accuracy": 0.7}}]
        return web.json_response({"object": "list", "data": data, "has_more": False, "first_id": data[0]["id"],
                                  "last_id": data[0]["id"]})

    async def permissions(self, request: web.Request) -> web.Response:
        if request.method == "DELETE":
            return web.json_response({"id": request.match_info["pid"], "object": "checkpoint.permission",
                                      "deleted": True})
        perm = {"id": "cp_standin", "object": "checkpoint.permission", "created_at": 1, "project_id": "proj_1"}
        return web.json_response({"object": "list", "data": [perm], "has_more": False, "first_id": "cp_standin",
                                  "last_id": "cp_standin"})

    async def graders(self, request: web.Request) -> web.Response:
        return web.json_response({"grader": (await request.json()).get("grader")})

    async def _read_multipart(self, request: web.Request, file_field: str) -> tuple[dict[str, str], str, bytes]:
        reader = await request.multipart()
        fields: dict[str, str] = {}
        filename, data = "", b""
        async for part in reader:
            if part.name == file_field:
                filename = part.filename or ""
                data = bytes(await part.read())
            else:
                fields[part.name or ""] = await part.text()
        return fields, filename, data

    async def upload(self, request: web.Request) -> web.Response:
        fields, filename, data = await self._read_multipart(request, "file")
        if "purpose" not in fields:
            return self.error(400, "purpose is required", "missing_required_parameter", "purpose")
        file_id = self.next_id("file")
        f = {"object": "file", "id": file_id, "bytes": len(data), "created_at": int(time.time()),
             "filename": filename, "purpose": fields["purpose"], "status": "processed"}
        if "expires_after[seconds]" in fields:
            f["expires_at"] = f["created_at"] + int(fields["expires_after[seconds]"])
        self.files[file_id] = f
        self.contents[file_id] = data
        return web.json_response(self.out_file(f))

    async def list_files(self, request: web.Request) -> web.Response:
        files = sorted(self.files.values(), key=lambda f: f["id"], reverse=request.query.get("order") != "asc")
        if request.query.get("purpose"):
            files = [f for f in files if f["purpose"] == request.query["purpose"]]
        if self.authoring and not self.since("2025-04-01"):
            # Files_List before 2025-04-01-preview: `purpose` only, the whole list, no has_more.
            return web.json_response({"object": "list", "data": [self.out_file(f) for f in files]})
        page, more = self._page(files, request, 10000)
        return web.json_response({"object": "list", "data": [self.out_file(f) for f in page], "has_more": more,
                                  "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None})

    async def get_file(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["id"])
        if f is None:
            return self.error(404, f"No such File object: {request.match_info['id']}", "file_not_found")
        return web.json_response(self.out_file(f))

    async def delete_file(self, request: web.Request) -> web.Response:
        if self.files.pop(request.match_info["id"], None) is None:
            return self.error(404, "No such File object", "file_not_found")
        return web.json_response({"id": request.match_info["id"], "object": "file", "deleted": True})

    async def content(self, request: web.Request) -> web.StreamResponse:
        data = self.contents.get(request.match_info["id"])
        if data is None or request.match_info["id"] not in self.files:
            return self.error(404, "No such File object", "file_not_found")
        return web.Response(body=data, content_type="application/octet-stream")

    async def create_upload(self, request: web.Request) -> web.Response:
        body = await request.json()
        upload_id = self.next_id("upload")
        now = int(time.time())
        up = {"object": "upload", "id": upload_id, "bytes": body["bytes"], "created_at": now,
              "expires_at": now + 3600, "filename": body["filename"], "purpose": body["purpose"],
              "status": "pending", "file": None}
        self.uploads[upload_id] = up
        return web.json_response(up)

    async def add_part(self, request: web.Request) -> web.Response:
        up = self.uploads.get(request.match_info["id"])
        if up is None:
            return self.error(404, "No such upload", "upload_not_found")
        _fields, _name, data = await self._read_multipart(request, "data")
        part_id = self.next_id("part")
        self.parts[part_id] = data
        return web.json_response({"object": "upload.part", "id": part_id, "created_at": int(time.time()),
                                  "upload_id": up["id"]})

    async def complete_upload(self, request: web.Request) -> web.Response:
        up = self.uploads.get(request.match_info["id"])
        if up is None:
            return self.error(404, "No such upload", "upload_not_found")
        body = await request.json()
        data = b"".join(self.parts[p] for p in body["part_ids"])
        if len(data) != up["bytes"]:
            return self.error(400, f"Upload bytes mismatch: expected {up['bytes']}, got {len(data)}",
                              "bytes_mismatch")
        file_id = self.next_id("file")
        f = {"object": "file", "id": file_id, "bytes": len(data), "created_at": int(time.time()),
             "filename": up["filename"], "purpose": up["purpose"], "status": "processed"}
        self.files[file_id] = f
        self.contents[file_id] = data
        up.update(status="completed", file=f)
        return web.json_response(up)

    async def cancel_upload(self, request: web.Request) -> web.Response:
        up = self.uploads.get(request.match_info["id"])
        if up is None:
            return self.error(404, "No such upload", "upload_not_found")
        up["status"] = "cancelled"
        return web.json_response(up)

    # ---- chat and models ----
    # OpenAI: POST /v1/chat/completions, GET /v1/models, GET|DELETE /v1/models/{model}
    # (openai-python src/openai/resources/chat/completions, resources/models.py; types/model.py,
    # model_deleted.py). Azure GA: POST /openai/deployments/{deployment}/chat/completions?api-version
    # (Azure/azure-rest-api-specs specification/cognitiveservices/data-plane/AzureOpenAI/inference/stable/
    # 2024-10-21/inference.json ChatCompletions_Create: prompt_filter_results, content_filter_results) and
    # GET /openai/models[/{model-id}] (azure-openai-authoring-2024-10-21.json Model: created_at, status,
    # capabilities, lifecycle_status, deprecation, model, fine_tune). Azure v1: POST /openai/v1/chat/
    # completions with model = the deployment; GET /openai/v1/models (OpenAI.ListModelsResponse). That a
    # stream opens with a prompt_filter_results-only chunk (id "", object "") is what Azure is publicly
    # seen to send, not in the spec: unverified.
    def tuned_models(self) -> dict[str, dict[str, Any]]:
        return {j["fine_tuned_model"]: j for j in self.jobs.values()
                if j.get("fine_tuned_model") and j["fine_tuned_model"] not in self.deleted_models}

    def chat_dialect(self) -> ChatDialect:
        azure = self.mode != "openai"
        return ChatDialect(filter_preamble=azure, content_filters=azure)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("messages"):
            return self.error(400, "'messages' is a required property", "invalid_request_error", "messages")
        if self.mode == "openai":
            model = body.get("model")
            if model not in self.base_models and model not in self.tuned_models():
                return self.error(404, f"The model `{model}` does not exist or you do not have access to it.",
                                  "model_not_found")
        else:
            name = request.match_info.get("deployment") or body.get("model")
            if name not in self.deployments:
                return web.json_response({"error": {"code": "DeploymentNotFound", "message": (
                    "The API deployment for this resource does not exist. If you created the deployment within the "
                    "last 5 minutes, please wait a moment and try again.")}}, status=404)
            model = self.deployments[name]
        return await chat_reply(request, self.chat_dialect(), self.chat, str(model))

    def model_out(self, model_id: str, job: dict[str, Any] | None) -> dict[str, Any]:
        created = job["finished_at"] if job else 1_700_000_000
        if self.mode != "azure-ga":
            return {"id": model_id, "object": "model", "created": created,
                    "owned_by": "user-standin" if job else "system"}
        return {"id": model_id, "object": "model", "created_at": created, "status": "succeeded",
                "model": job["model"] if job else None, "fine_tune": job["id"] if job else None,
                "capabilities": {"fine_tune": not job, "inference": True, "completion": False, "chat_completion": True,
                                 "embeddings": False},
                "lifecycle_status": "generally-available", "deprecation": {"inference": 1_900_000_000}}

    async def list_models(self, request: web.Request) -> web.Response:
        tuned = self.tuned_models()
        data = [self.model_out(m, None) for m in self.base_models] + [self.model_out(m, j) for m, j in tuned.items()]
        return web.json_response({"object": "list", "data": data})

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        tuned = self.tuned_models()
        if name not in self.base_models and name not in tuned:
            return self.error(404, f"The model '{name}' does not exist", "model_not_found", "model")
        return web.json_response(self.model_out(name, tuned.get(name)))

    async def delete_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name not in self.tuned_models():
            return self.error(404, f"The model '{name}' does not exist", "model_not_found", "model")
        self.deleted_models.add(name)
        return web.json_response({"id": name, "object": "model", "deleted": True})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """Runs an aiohttp application on a real loopback socket in a background thread."""

    def __init__(self, app: web.Application, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.app = app
        self.host = host
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self.app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, self.host, self.port).start())
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# ---- chat completions, shared by the stand-ins -------------------------------------------------------
# Each stand-in answers chat in its provider's dialect; what differs is declared in a ChatDialect, and
# each stand-in names the source of its dialect beside it. OpenAI's own shapes: openai/openai-python
# src/openai/types/chat/chat_completion.py, chat_completion_chunk.py, completion_usage.py (and the
# installed SDK, openai 2.x); the stream is `data: {chunk}` events ended by `data: [DONE]`
# (openai-python src/openai/_streaming.py), an error inside it is an event whose data holds `error`.


@dataclass(frozen=True)
class ChatDialect:
    finish: str = "stop"  # the word for a natural end
    openai_usage: bool = True  # honours stream_options.include_usage (else: usage on the last chunk, always)
    filter_preamble: bool = False  # Azure: a first chunk with only prompt_filter_results
    content_filters: bool = False  # Azure: content_filter_results on each choice
    token_ids: bool = False  # Together: delta.token_id
    system_fingerprint: bool = True


@dataclass
class ChatScript:
    """What the stand-in's model says and how the stream goes."""

    reply: str = "Hello from the stand-in model, tuned."
    fail_after: int | None = None  # mid-stream: after this many content chunks, an error event, no [DONE]
    gap: float = 0.0  # seconds between chunks
    prompt_tokens: int = 7
    streams_started: int = 0


def reply_pieces(reply: str) -> list[str]:
    """The reply in word-sized chunks, spaces kept, so their concatenation is the reply."""
    out, word = [], ""
    for ch in reply:
        word += ch
        if ch == " ":
            out.append(word)
            word = ""
    return out + ([word] if word else [])


def chat_usage(script: ChatScript) -> dict[str, int]:
    completion = len(reply_pieces(script.reply))
    return {"prompt_tokens": script.prompt_tokens, "completion_tokens": completion,
            "total_tokens": script.prompt_tokens + completion}


def chat_answer(d: ChatDialect, script: ChatScript, model: str) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": script.reply},
                              "finish_reason": d.finish, "logprobs": None}
    if d.content_filters:
        choice["content_filter_results"] = _NO_FILTER
    out: dict[str, Any] = {"id": f"chatcmpl-standin{int(time.time() * 1000) % 10**9}", "object": "chat.completion",
                           "created": int(time.time()), "model": model, "choices": [choice],
                           "usage": chat_usage(script)}
    if d.system_fingerprint:
        out["system_fingerprint"] = "fp_standin"
    if d.filter_preamble:
        out["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _NO_FILTER}]
    return out


_NO_FILTER = {k: {"filtered": False, "severity": "safe"} for k in ("hate", "self_harm", "sexual", "violence")}


def chat_chunks(d: ChatDialect, script: ChatScript, model: str, include_usage: bool) -> list[dict[str, Any]]:
    """The stream's events, in order (without [DONE])."""
    cid, created = f"chatcmpl-standin{int(time.time() * 1000) % 10**9}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        if d.content_filters and delta.get("content"):
            choice["content_filter_results"] = _NO_FILTER
        out: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                               "choices": [choice]}
        if d.system_fingerprint:
            out["system_fingerprint"] = "fp_standin"
        if usage is not None or (d.openai_usage and include_usage):
            out["usage"] = usage
        return out

    events = []
    if d.filter_preamble:
        events.append({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                       "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _NO_FILTER}]})
    events.append(chunk({"role": "assistant", "content": ""}))
    for n, piece in enumerate(reply_pieces(script.reply)):
        delta: dict[str, Any] = {"content": piece}
        if d.token_ids:  # Together's ChatCompletionChoiceDelta: role required, token_id
            delta = {"role": "assistant", "content": piece, "token_id": 1000 + n}
        events.append(chunk(delta))
    usage = chat_usage(script)
    if d.openai_usage:
        events.append(chunk({}, d.finish))
        if include_usage:
            events.append({**chunk({}), "choices": [], "usage": usage})
    else:  # the usage rides on the finishing chunk, asked for or not
        events.append(chunk({"role": "assistant", "content": ""} if d.token_ids else {"content": ""}, d.finish, usage))
    return events


async def chat_stream(request: web.Request, d: ChatDialect, script: ChatScript, model: str,
                      include_usage: bool) -> web.StreamResponse:
    script.streams_started += 1
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    content = 0
    for event in chat_chunks(d, script, model, include_usage):
        if script.fail_after is not None and content >= script.fail_after:
            await resp.write(b'data: {"error": {"message": "The server had an error while processing your request.",'
                             b' "type": "server_error", "param": null, "code": "stream_interrupted"}}\n\n')
            return resp
        await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        if any(c.get("delta", {}).get("content") for c in event.get("choices") or []):
            content += 1
        if script.gap:
            await asyncio.sleep(script.gap)
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def chat_reply(request: web.Request, d: ChatDialect, script: ChatScript, model: str) -> web.StreamResponse:
    body = await request.json()
    if body.get("stream"):
        return await chat_stream(request, d, script, model,
                                 bool((body.get("stream_options") or {}).get("include_usage")))
    return web.json_response(chat_answer(d, script, model))
