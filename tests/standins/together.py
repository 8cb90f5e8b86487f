"""A stateful stand-in for Together AI's fine-tuning and files API (``https://api.together.ai/v1``).

Every shape follows ``../shared/specs/together-openapi.yaml`` (togethercomputer/openapi@090263a), except
where Together's own Python SDKs show the spec is wrong; there the SDKs win, and each such shape names its
source beside it (TP = togethercomputer/together-python@eba5e5f, 1.5.x; T3 = PyPI ``together==3.1.1``):

- event ``level`` "Info"/"Warning"/"Error" and ``type`` in capitals ("JOB_ERROR", "JOB_USER_ERROR", …):
  TP src/together/types/finetune.py FinetuneEventLevels / FinetuneEventType, T3
  together/lib/types/fine_tuning.py (the spec: lower-case words);
- ``progress.seconds_remaining`` a float: FinetuneProgress in TP and T3 (the spec: integer);
- the W&B key arrives as ``wandb_key``: FinetuneRequest in TP and T3 (the spec: ``wandb_api_key``);
- ``suffix`` at most 40 characters: FinetuneRequest in TP and T3 ("up to 40 character suffix");
- ``token_count`` is the dataset's token count: TP FinetuneResponse ("dataset token count");
- CSV uploads only for purpose ``eval``: TP src/together/utils/files.py ``_check_csv`` (the SDK refuses
  the rest before uploading; that the server refuses them too is assumed here);
- a job with status ``user_error`` (not in the spec's enum) and a JOB_USER_ERROR event: TP FinetuneJobStatus.

- ``POST /files/upload`` — multipart ``purpose`` (FilePurpose), ``file_name``, ``file_type`` (FileType),
  ``file``; answers FileResponse (``id, object, created_at, filename, bytes, purpose, FileType,
  Processed``). ``GET /files`` → FileList; ``GET /files/{id}`` → FileResponse; ``DELETE /files/{id}``
  → FileDeleteResponse; ``GET /files/{id}/content`` → the bytes.
- ``POST /fine-tunes`` (the spec's create body) → FinetuneResponseTruncated; ``GET /fine-tunes`` →
  FinetuneTruncatedList (the whole list: the spec has no limit/cursor); ``GET /fine-tunes/{id}`` →
  FinetuneResponse (with ``events``); ``POST /fine-tunes/{id}/cancel`` → FinetuneResponseTruncated;
  ``GET /fine-tunes/{id}/events`` → FinetuneListEvents (FineTuneEvent: every required field);
  ``GET /fine-tunes/{id}/checkpoints`` → FinetuneListCheckpoints (FineTuneCheckpoint).
- Statuses from FinetuneJobStatus; event types from FinetuneEventType; errors as ErrorData
  (``{"error": {"message", "type", "param", "code"}}``); Bearer auth (securitySchemes.bearerAuth).

Behaviour the spec does not pin down, chosen here: a job moves one step per ``GET /fine-tunes/{id}``
(pending → queued → running → compressing → uploading → completed); a model whose name starts with
"fail" ends in ``error`` with a JOB_ERROR event, one starting with "baddata" in ``user_error`` with a
JOB_USER_ERROR event; cancel answers ``cancel_requested`` and the next
retrieve ``cancelled``; ``created_at`` advances one second per created object (a fake clock), so
orderings are deterministic. ``tests/providers/test_together.py`` validates the answers against the
spec's schemas so this cannot drift.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import BodyPartReader, web

from tests.standins.openai_like import ChatDialect, ChatScript, Recorded, chat_reply

SPEC_PATH = Path(__file__).resolve().parents[3] / "shared" / "specs" / "together-openapi.yaml"
# Chat (together-openapi.yaml ChatCompletionResponse / ChatCompletionChunk / FinishReason): no
# stream_options in ChatCompletionRequest; a chunk's delta has `role` (required) and `token_id`; the
# natural end is "eos" (FinishReason: stop, eos, length, tool_calls, function_call); the usage is on the last
# chunk (ChatCompletionChunk.usage, nullable; that only the last carries it is what together-python's
# streaming shows, not the spec: unverified); no system_fingerprint is sent (optional in the spec).
TOGETHER_CHAT = ChatDialect(finish="eos", openai_usage=False, token_ids=True, system_fingerprint=False)


def chat_request_fields() -> frozenset[str] | None:
    """ChatCompletionRequest's properties (None when the spec is not beside the checkout)."""
    if not SPEC_PATH.exists():
        return None
    spec = yaml.safe_load(SPEC_PATH.read_text())
    return frozenset(spec["components"]["schemas"]["ChatCompletionRequest"]["properties"])

LIFECYCLE = ["pending", "queued", "running", "compressing", "uploading", "completed"]
TRUNCATED_KEYS = ("id", "status", "created_at", "updated_at", "started_at", "user_id", "owner_address", "total_price",
                  "token_count", "events", "training_file", "validation_file", "model", "model_output_name", "suffix",
                  "n_epochs", "n_evals", "n_checkpoints", "batch_size", "training_type", "training_method",
                  "learning_rate", "lr_scheduler", "warmup_ratio", "max_grad_norm", "weight_decay", "random_seed",
                  "wandb_project_name", "wandb_name", "from_checkpoint", "progress")
BASE_TIME = 1_735_689_600  # 2025-01-01T00:00:00Z


# The SDK-verified corrections above, as edits to the spec's schemas, so that the check of this stand-in's
# answers against the spec (tests/providers/test_together.py) checks them against the real wire.
EVENT_TYPES = ["JOB_PENDING", "JOB_START", "JOB_STOPPED", "MODEL_DOWNLOADING", "MODEL_DOWNLOAD_COMPLETE",
               "TRAINING_DATA_DOWNLOADING", "TRAINING_DATA_DOWNLOAD_COMPLETE", "VALIDATION_DATA_DOWNLOADING",
               "VALIDATION_DATA_DOWNLOAD_COMPLETE", "WANDB_INIT", "TRAINING_START", "CHECKPOINT_SAVE", "BILLING_LIMIT",
               "EPOCH_COMPLETE", "EVAL_COMPLETE", "TRAINING_COMPLETE", "COMPRESSING_MODEL",
               "MODEL_COMPRESSION_COMPLETE", "MODEL_UPLOADING", "MODEL_UPLOAD_COMPLETE", "MODEL_UPLOADING_TO_HF",
               "MODEL_UPLOAD_TO_HF_COMPLETE", "JOB_COMPLETE", "JOB_ERROR", "JOB_USER_ERROR", "CANCEL_REQUESTED",
               "JOB_RESTARTED", "REFUND", "WARNING", "EARLY_STOPPED"]  # T3 FinetuneEventType values


def sdk_corrected(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with what Together's SDKs show instead (TP and T3, see the module docstring)."""
    schemas = spec["components"]["schemas"]
    schemas["FinetuneEventLevels"]["enum"] = [None, "", "Info", "Warning", "Error", "info", "warning", "error"]
    schemas["FinetuneEventType"]["enum"] = EVENT_TYPES
    schemas["FineTuneProgress"]["properties"]["seconds_remaining"] = {"type": "number"}
    schemas["FinetuneJobStatus"]["enum"] = [*schemas["FinetuneJobStatus"]["enum"], "user_error"]
    create = spec["paths"]["/fine-tunes"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    create["properties"]["wandb_key"] = {"type": "string"}
    create["properties"]["suffix"] = {**create["properties"]["suffix"], "maxLength": 40}
    return spec


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + "123456789Z"  # Go-style nanoseconds


@dataclass
class TogetherStandIn:
    api_key: str = "8f3c1b2a9d7e4f60a1b2c3d4e5f60718293a4b5c6d7e8f9012345678abcdef01"
    requests: list[Recorded] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)  # form fields of each upload, with the bytes
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    # scripted faults: path-substring -> statuses to answer before behaving normally
    faults: dict[str, list[int]] = field(default_factory=dict)
    chat: ChatScript = field(default_factory=lambda: ChatScript())
    base_models: tuple[str, ...] = ("meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",)
    chat_fields: frozenset[str] | None = field(default_factory=chat_request_fields)
    _clock: itertools.count = field(default_factory=lambda: itertools.count(0))

    def now(self) -> int:
        return BASE_TIME + next(self._clock)

    @staticmethod
    def error(status: int, message: str, code: str | None = None, param: str | None = None,
              type: str = "invalid_request_error") -> web.Response:
        return web.json_response({"error": {"message": message, "type": type, "param": param, "code": code}},
                                 status=status)

    # ---- the app ----
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1024**3)
        r = app.router
        r.add_post("/v1/files/upload", self.upload)
        r.add_get("/v1/files", self.list_files)
        r.add_get("/v1/files/{id}", self.get_file)
        r.add_delete("/v1/files/{id}", self.delete_file)
        r.add_get("/v1/files/{id}/content", self.content)
        r.add_post("/v1/fine-tunes", self.create_job)
        r.add_get("/v1/fine-tunes", self.list_jobs)
        r.add_get("/v1/fine-tunes/{id}", self.get_job)
        r.add_post("/v1/fine-tunes/{id}/cancel", self.cancel_job)
        r.add_get("/v1/fine-tunes/{id}/events", self.events)
        r.add_get("/v1/fine-tunes/{id}/checkpoints", self.checkpoints)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_get("/v1/models", self.list_models)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        is_upload = request.path.endswith("/files/upload")
        body = b"" if is_upload else await request.read()
        self.requests.append(Recorded(request.method, request.path, dict(request.query), dict(request.headers), body))
        for needle, statuses in self.faults.items():
            if needle in request.path and statuses:
                status = statuses.pop(0)
                headers = {"Retry-After": "0"} if status == 429 else {}
                kind = "rate_limit_exceeded" if status == 429 else "server_error"
                return web.json_response({"error": {"message": f"scripted {status}", "type": kind, "param": None,
                                                    "code": None}}, status=status, headers=headers)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self.error(401, "Invalid API key provided. You can find your API key at "
                                   "https://api.together.xyz/settings/api-keys.", "invalid_api_key")
        return await handler(request)  # type: ignore[no-any-return]

    # ---- files ----
    async def upload(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        fields: dict[str, str] = {}
        data = b""
        order: list[str] = []
        async for part in reader:
            assert isinstance(part, BodyPartReader)
            order.append(part.name or "")
            if part.name == "file":
                data = bytes(await part.read())
            else:
                fields[part.name or ""] = await part.text()
        self.uploads.append({**fields, "_order": order, "_bytes": data})
        for name in ("purpose", "file_name"):
            if not fields.get(name):
                return self.error(400, f"{name} is required", "missing_required_parameter", name)
        if fields["purpose"] not in ("fine-tune", "eval", "eval-sample", "eval-output", "eval-summary",
                                     "batch-generated", "batch-api"):
            return self.error(400, f"invalid purpose {fields['purpose']}", "invalid_purpose", "purpose")
        if fields.get("file_type") == "csv" and fields["purpose"] != "eval":  # TP utils/files.py _check_csv
            return self.error(400, f"CSV files are not supported for {fields['purpose']}", "invalid_file_type",
                              "file_type")
        file_id = f"file-{uuid.uuid4()}"
        f = {"id": file_id, "object": "file", "created_at": self.now(), "filename": fields["file_name"],
             "bytes": len(data), "purpose": fields["purpose"], "FileType": fields.get("file_type", "jsonl"),
             "Processed": True, "LineCount": data.count(b"\n")}
        self.files[file_id] = f
        self.contents[file_id] = data
        return web.json_response(f)

    async def list_files(self, request: web.Request) -> web.Response:
        return web.json_response({"data": list(self.files.values())})  # oldest first: no paging at Together

    async def get_file(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["id"])
        if f is None:
            return self.error(404, f"File {request.match_info['id']} not found", "file_not_found")
        return web.json_response(f)

    async def delete_file(self, request: web.Request) -> web.Response:
        if self.files.pop(request.match_info["id"], None) is None:
            return self.error(404, f"File {request.match_info['id']} not found", "file_not_found")
        return web.json_response({"id": request.match_info["id"], "deleted": True})

    async def content(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] not in self.files:
            return self.error(404, f"File {request.match_info['id']} not found", "file_not_found")
        return web.Response(body=self.contents[request.match_info["id"]], content_type="text/plain")

    # ---- jobs ----
    def _event(self, job: dict[str, Any], type: str, message: str, level: str = "Info", **extra: Any) -> None:
        job["_events"].append({"object": "fine-tune-event", "created_at": iso(self.now()), "level": level,
                               "message": message, "type": type, "param_count": 8_030_261_248,
                               "token_count": extra.get("token_count", 0), "total_steps": 30,
                               "wandb_url": "", "step": extra.get("step", 0),
                               "checkpoint_path": extra.get("checkpoint_path", ""),
                               "model_path": extra.get("model_path", ""), "training_offset": 0, "hash": ""})

    def _truncated(self, job: dict[str, Any]) -> dict[str, Any]:
        out = {k: job[k] for k in TRUNCATED_KEYS if k in job and job[k] is not None}
        out["events"] = []
        return out

    def _full(self, job: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in job.items() if not k.startswith("_") and v is not None}
        out["events"] = list(job["_events"])
        return out

    async def create_job(self, request: web.Request) -> web.Response:
        body = await request.json()
        for name in ("training_file", "model"):
            if not body.get(name):
                return self.error(400, f"{name} is required", "missing_required_parameter", name)
        if body["training_file"] not in self.files:
            return self.error(400, f"Training file {body['training_file']} not found", "invalid_file",
                              "training_file")
        if body.get("validation_file") and body["validation_file"] not in self.files:
            return self.error(400, f"Validation file {body['validation_file']} not found", "invalid_file",
                              "validation_file")
        suffix = body.get("suffix")
        if isinstance(suffix, str) and len(suffix) > 40:  # "up to 40 character suffix" (TP, T3)
            return self.error(400, "suffix must be at most 40 characters", "invalid_parameter", "suffix")
        now = self.now()
        job_id = f"ft-{uuid.uuid4()}"
        job: dict[str, Any] = {
            "id": job_id, "status": "pending", "created_at": iso(now), "updated_at": iso(now),
            "user_id": "user_standin", "owner_address": "0xstandin", "total_price": 0, "token_count": 0,
            "training_file": body["training_file"], "validation_file": body.get("validation_file"),
            "model": body["model"],
            "model_output_name": f"standin/{body['model'].split('/')[-1]}-{suffix or 'ft'}-{job_id[3:11]}",
            "suffix": suffix, "n_epochs": body.get("n_epochs", 1), "n_evals": body.get("n_evals", 0),
            "n_checkpoints": body.get("n_checkpoints", 1),
            "batch_size": body["batch_size"] if isinstance(body.get("batch_size"), int) else 16,
            "learning_rate": body.get("learning_rate", 0.00001),
            "warmup_ratio": body.get("warmup_ratio", 0.0), "max_grad_norm": body.get("max_grad_norm", 1.0),
            "weight_decay": body.get("weight_decay", 0.0), "random_seed": body.get("random_seed"),
            "training_method": body.get("training_method") or {"method": "sft", "train_on_inputs": "auto"},
            "training_type": body.get("training_type") or {"type": "Lora", "lora_r": 8, "lora_alpha": 16,
                                                           "lora_dropout": 0.0,
                                                           "lora_trainable_modules": "all-linear"},
            "wandb_project_name": body.get("wandb_project_name"), "wandb_name": body.get("wandb_name"),
            # The key arrives as `wandb_key` (TP, T3); a run URL only when one came.
            "wandb_url": f"https://wandb.ai/standin/{job_id[3:11]}" if body.get("wandb_key") else None,
            "_body": body, "_events": [],
        }
        self._event(job, "JOB_PENDING", "Fine tune request created")
        self.jobs[job_id] = job
        return web.json_response(self._truncated(job))

    async def list_jobs(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [self._truncated(j) for j in self.jobs.values()]})  # oldest first

    def advance(self, job: dict[str, Any]) -> None:
        status = job["status"]
        now = self.now()
        if status == "cancel_requested":
            job.update(status="cancelled", updated_at=iso(now))
            self._event(job, "JOB_STOPPED", "Job was cancelled by the user")
            return
        if status not in LIFECYCLE[:-1]:
            return
        nxt = LIFECYCLE[LIFECYCLE.index(status) + 1]
        if job["model"].startswith("fail") and nxt == "compressing":
            job.update(status="error", updated_at=iso(now))
            self._event(job, "JOB_ERROR", "Training failed: the training file has 3 lines without an "
                                          "assistant message.", level="Error")
            return
        if job["model"].startswith("baddata") and nxt == "running":
            job.update(status="user_error", updated_at=iso(now))
            self._event(job, "WARNING", "Line 2 has no assistant message.", level="Warning")
            self._event(job, "JOB_USER_ERROR", "The training file has no example with an assistant message.",
                        level="Error")
            return
        job.update(status=nxt, updated_at=iso(now))
        if nxt == "queued":
            job["queue_depth"] = 2
        elif nxt == "running":
            job["started_at"] = iso(now)
            job["progress"] = {"estimate_available": True, "seconds_remaining": 600.5}  # a float (TP, T3)
            self._event(job, "TRAINING_START", "Training started")
            self._event(job, "CHECKPOINT_SAVE", "Checkpoint saved at step 10", step=10,
                        checkpoint_path=f"s3://standin/{job['id']}/checkpoint-10")
        elif nxt == "completed":
            job["progress"] = {"estimate_available": False, "seconds_remaining": 0}
            job["token_count"] = 54321  # the dataset's tokens, once (TP: "dataset token count")
            job["total_price"] = 1500
            job["epochs_completed"] = job["n_epochs"]
            self._event(job, "JOB_COMPLETE", "Job finished", token_count=54321,
                        model_path=f"s3://standin/{job['id']}/final")

    async def get_job(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self.error(404, f"Fine-tune job {request.match_info['id']} not found", "not_found")
        self.advance(job)
        return web.json_response(self._full(job))

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self.error(404, f"Fine-tune job {request.match_info['id']} not found", "not_found")
        if job["status"] in ("cancelled", "error", "completed", "user_error"):  # TP cli NON_CANCELLABLE_STATES
            return self.error(400, f"Cannot cancel a job with status {job['status']}", "invalid_state")
        if job["status"] != "cancel_requested":
            job.update(status="cancel_requested", updated_at=iso(self.now()))
            self._event(job, "CANCEL_REQUESTED", "Cancel requested")
        return web.json_response(self._truncated(job))

    async def events(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self.error(404, f"Fine-tune job {request.match_info['id']} not found", "not_found")
        return web.json_response({"data": list(job["_events"])})

    async def checkpoints(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self.error(404, f"Fine-tune job {request.match_info['id']} not found", "not_found")
        data = []
        created = BASE_TIME
        if job["status"] in ("running", "compressing", "uploading", "completed"):
            data.append({"step": 10, "created_at": iso(created + 10), "path": f"s3://standin/{job['id']}/checkpoint-10",
                         "checkpoint_type": "Intermediate"})
        if job["status"] == "completed":
            data.append({"step": 20, "created_at": iso(created + 20), "path": f"s3://standin/{job['id']}/checkpoint-20",
                         "checkpoint_type": "Intermediate"})
            data.append({"step": 30, "created_at": iso(created + 30), "path": f"s3://standin/{job['id']}/final",
                         "checkpoint_type": "Final Merged"})
            data.append({"step": 30, "created_at": iso(created + 30), "path": f"s3://standin/{job['id']}/adapter",
                         "checkpoint_type": "Final Adapter"})
        return web.json_response({"data": data})

    # ---- chat and models ----
    def tuned_models(self) -> dict[str, dict[str, Any]]:
        return {j["model_output_name"]: j for j in self.jobs.values() if j["status"] == "completed"}

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        unknown = sorted(set(body) - self.chat_fields) if self.chat_fields is not None else []
        if unknown:  # assumed strict here, so a parameter the adapter should have refused cannot slip by
            return self.error(400, f"Unrecognized request argument supplied: {unknown[0]}", "invalid_request_error")
        model = body.get("model")
        if model not in self.base_models and model not in self.tuned_models():
            return self.error(404, f"Unable to access model {model}. Please visit https://api.together.ai/models to "
                                   "view the list of supported models.", "model_not_available")
        return await chat_reply(request, TOGETHER_CHAT, self.chat, str(model))

    async def list_models(self, request: web.Request) -> web.Response:
        # ModelInfoList: a bare array of ModelInfo (id, object, created, type, display_name, organization, …)
        base = [{"id": m, "object": "model", "created": BASE_TIME, "type": "chat", "display_name": m.split("/")[-1],
                 "organization": m.split("/")[0], "context_length": 131072} for m in self.base_models]
        tuned = [{"id": m, "object": "model", "created": BASE_TIME + 60, "type": "chat", "display_name": m,
                  "organization": "standin", "context_length": 8192} for m in self.tuned_models()]
        return web.json_response(base + tuned)
