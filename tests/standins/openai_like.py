"""A stateful stand-in for OpenAI's fine-tuning, files and uploads API — and, in Azure mode, for
Azure OpenAI's GA data plane (``/openai/...?api-version=2024-10-21``, ``api-key`` header, Azure's
statuses and ``organisation_id``) or its ``/openai/v1`` surface.

Shapes follow ``../shared/specs/openai-openapi.yaml`` (FineTuningJob, OpenAIFile, Upload, list
envelopes, ErrorResponse) and ``azure-openai-authoring-2024-10-21.json`` (FineTuningJob with
FineTuningState, File with FileState); ``tests/test_standins.py`` validates its answers against those
schemas so it cannot drift. It records every request (method, path, query, headers, body) so tests can
assert exactly what the gateway sent.
"""

from __future__ import annotations

import asyncio
import itertools
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
    mode: str = "openai"  # openai | azure-ga | azure-v1
    api_key: str = "sk-standin-secret-0001"
    requests: list[Recorded] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    parts: dict[str, bytes] = field(default_factory=dict)
    # scripted faults: path-substring -> list of statuses to answer before behaving normally
    faults: dict[str, list[int]] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    # ---- helpers ----
    def next_id(self, prefix: str) -> str:
        return f"{prefix}-standin{next(self._ids):06d}"

    @property
    def prefix(self) -> str:
        return {"openai": "", "azure-ga": "/openai", "azure-v1": "/openai/v1"}[self.mode]

    def error(self, status: int, message: str, code: str | None = None, param: str | None = None) -> web.Response:
        return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                            "code": code}}, status=status)

    def out_job(self, job: dict[str, Any]) -> dict[str, Any]:
        if self.mode != "azure-ga":
            return job
        azure = {k: v for k, v in job.items() if k not in ("organization_id", "metadata", "method", "integrations")}
        azure["organisation_id"] = job["organization_id"]
        azure["status"] = AZURE_STATUS[job["status"]]
        return azure

    def out_file(self, f: dict[str, Any]) -> dict[str, Any]:
        if self.mode != "azure-ga":
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
        if self.mode != "azure-ga":
            r.add_post(f"{p}/fine_tuning/jobs/{{id}}/pause", self.pause_job)
            r.add_post(f"{p}/fine_tuning/jobs/{{id}}/resume", self.resume_job)
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
        if self.mode == "azure-ga":
            if request.query.get("api-version") != "2024-10-21":
                return self.error(400, "api-version is missing or unsupported", "invalid_api_version")
            if request.headers.get("api-key") != self.api_key:
                return self.error(401, "Access denied due to invalid subscription key.", "401")
        elif self.mode == "azure-v1":
            if request.headers.get("api-key") != self.api_key:
                return self.error(401, "Access denied due to invalid subscription key.", "401")
        elif request.headers.get("Authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("Authorization", "")[7:]
            return self.error(401, f"Incorrect API key provided: {given[:3]}***{given[-4:]}.", "invalid_api_key")
        return await handler(request)  # type: ignore[no-any-return]

    async def create_job(self, request: web.Request) -> web.Response:
        body = await request.json()
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
        return web.json_response(self._public(self.out_job(job)), status=201 if self.mode == "azure-ga" else 200)

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
