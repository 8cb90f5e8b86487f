"""A stateful stand-in for Mistral AI's fine-tuning and files API (``/v1/fine_tuning/jobs``, ``/v1/files``).

Where each shape comes from (``../shared/specs/mistral-openapi.yaml``, components/schemas):
- POST /v1/files (multipart ``file`` + ``purpose``)      → ``UploadFileOut``  (FilePurpose, SampleType, Source)
- GET /v1/files?page&page_size&purpose                  → ``ListFilesOut`` of ``FileSchema``, newest first
- GET /v1/files/{id}                                     → ``RetrieveFileOut``; DELETE → ``DeleteFileOut``
- GET /v1/files/{id}/content                             → the bytes (application/octet-stream)
- POST /v1/fine_tuning/jobs (body ``JobIn``)             → ``CompletionJobOut``
- GET /v1/fine_tuning/jobs?page&page_size                → ``JobsOut`` of ``CompletionJobOut``, newest first
- GET /v1/fine_tuning/jobs/{id}, POST …/cancel, …/start  → ``CompletionDetailedJobOut`` (with ``events``
  of ``EventOut`` and ``checkpoints`` of ``CheckpointOut``/``MetricOut``)
- 422 bodies                                            → ``HTTPValidationError`` (the only error the spec defines)
The request body of a job create is validated against ``JobIn`` itself (when the spec is beside the
checkout), so the adapter cannot send what Mistral would refuse. Error bodies the spec does not define
follow what Mistral is publicly seen to answer: 401 ``{"message": "Unauthorized", "request_id"}``, other
4xx/5xx ``{"object": "error", "message", "type", "param", "code"}``.

Assumptions beyond the spec (documented in tunegate/providers/mistral/MAPPING.md): events are listed
newest first with ``{"name": "status-updated", "data": {"status": …}}``; a failure's reason is carried in
the failing event's ``data.error``; with ``auto_start`` a job moves QUEUED → VALIDATING → VALIDATED →
RUNNING → SUCCESS, one step per GET of the job; without it the job waits in VALIDATED until …/start
(STARTED → RUNNING → SUCCESS). Models starting with ``fail`` end in FAILED_VALIDATION, models starting
with ``crash`` in FAILED. ``faults`` scripts error answers: path substring → statuses to answer first.
``tests/providers/test_mistral_standin.py`` validates every answer against the spec's schemas.

From Mistral's own code rather than the spec: validation fails (FAILED_VALIDATION) for a training file whose
tool-call ids are not nine letters or digits, on the calls or on the tool messages answering them
(mistralai/mistral-common@bc022b9 src/mistral_common/protocol/instruct/validator.py, MistralRequestValidatorV3
``_validate_tool_call``/``_validate_tool_message``; that the fine-tuning service applies it at validation
is assumed). The W&B ``api_key`` length (exactly 40) is checked by the JobIn validation above
(WandbIntegration.api_key minLength/maxLength 40).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from tests.standins.openai_like import ChatDialect, ChatScript, chat_reply

SPEC = Path(__file__).resolve().parents[3] / "shared" / "specs" / "mistral-openapi.yaml"

AUTO_PLAN = ["QUEUED", "VALIDATING", "VALIDATED", "RUNNING", "SUCCESS"]
TERMINAL = {"FAILED_VALIDATION", "FAILED", "SUCCESS", "CANCELLED"}
PURPOSES = ("fine-tune", "batch", "ocr")
TOOL_CALL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")  # mistral-common validator.py (see the module docstring)


def tool_call_id_error(data: bytes) -> str | None:
    """mistral-common's message for the first tool-call id Mistral would refuse, if any."""
    for n, line in enumerate(data.splitlines(), 1):
        try:
            messages = json.loads(line).get("messages") or []
        except (ValueError, AttributeError):
            continue
        for m in messages:
            ids = [c.get("id") for c in m.get("tool_calls") or []] + (
                [m.get("tool_call_id")] if m.get("role") == "tool" else [])
            bad = next((i for i in ids if not isinstance(i, str) or not TOOL_CALL_ID.match(i)), False)
            if bad is not False:
                return f"line {n}: Tool call id was {bad} but must be a-z, A-Z, 0-9, with a length of 9."
    return None


@dataclass
class Recorded:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes


def load_spec() -> dict[str, Any]:
    """The spec, with YAML 1.2 floats such as ``1e-08`` read as numbers (PyYAML's 1.1 rules need a dot)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return yaml.load(SPEC.read_text(), Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def schema_validator(name: str, spec: dict[str, Any] | None = None) -> Any:
    """A jsonschema validator for one of the spec's component schemas, ``$ref``s resolved in the spec."""
    from jsonschema import Draft202012Validator, FormatChecker
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    resource = Resource.from_contents(spec or load_spec(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:mistral", resource)
    return Draft202012Validator({"$ref": f"urn:mistral#/components/schemas/{name}"}, registry=registry,
                                format_checker=FormatChecker())


def job_in_validator() -> Any:
    """A validator for Mistral's JobIn, or None when the spec is not beside the checkout."""
    return schema_validator("JobIn") if SPEC.exists() else None


@dataclass
class MistralStandIn:
    api_key: str = "mistral-standin-key-0001"
    requests: list[Recorded] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, list[int]] = field(default_factory=dict)
    max_page_size: int = 100
    chat: ChatScript = field(default_factory=lambda: ChatScript())
    base_models: tuple[str, ...] = ("open-mistral-7b", "mistral-small-latest")
    deleted_models: set[str] = field(default_factory=set)
    validate_requests: bool = True
    _seq: int = 0
    _validator: Any = None

    def __post_init__(self) -> None:
        if self.validate_requests:
            self._validator = job_in_validator()

    # ---- helpers ----
    def _next(self) -> int:
        self._seq += 1
        return self._seq

    @staticmethod
    def error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None
              ) -> web.Response:
        return web.json_response({"object": "error", "message": message, "type": type_, "param": None,
                                  "code": code}, status=status)

    @staticmethod
    def validation_error(loc: list[Any], msg: str, type_: str = "value_error") -> web.Response:
        return web.json_response({"detail": [{"loc": loc, "msg": msg, "type": type_}]}, status=422)

    def recorded(self, method: str, path_part: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and path_part in r.path]

    def _page(self, items: list[dict[str, Any]], request: web.Request) -> list[dict[str, Any]] | web.Response:
        try:
            number = int(request.query.get("page", "0"))
            size = int(request.query.get("page_size", "100"))
        except ValueError:
            return self.validation_error(["query", "page"], "Input should be a valid integer", "int_parsing")
        size = min(size, self.max_page_size)  # a server-side cap, like real services have
        return items[number * size:(number + 1) * size]

    # ---- job state ----
    def set_status(self, job: dict[str, Any], status: str, **data: Any) -> None:
        now = int(time.time())
        job["status"] = status
        job["modified_at"] = now
        job["_events"].append({"name": "status-updated", "data": {"status": status, **data}, "created_at": now})
        if status == "RUNNING":
            job["_checkpoints"].append({"metrics": {"train_loss": 1.25, "valid_loss": 1.5,
                                                    "valid_mean_token_accuracy": 0.61},
                                        "step_number": 10, "created_at": now})
        if status == "SUCCESS":
            job["_checkpoints"].append({"metrics": {"train_loss": 0.75, "valid_loss": 0.9,
                                                    "valid_mean_token_accuracy": 0.72},
                                        "step_number": 20, "created_at": now})
            day = time.strftime("%Y%m%d", time.gmtime(now))
            job["fine_tuned_model"] = f"ft:{job['model']}:6ed5a2b1:{day}:{job['id'][:8]}"
            job["trained_tokens"] = job["metadata"]["train_tokens"]

    def advance(self, job: dict[str, Any]) -> None:
        """One step of the lifecycle per GET of the job, so a poll loop sees it move."""
        status = job["status"]
        if status == "CANCELLATION_REQUESTED":
            self.set_status(job, "CANCELLED")
            return
        plan: list[str] = job["_plan"]
        if status not in plan or plan.index(status) + 1 >= len(plan):
            return
        nxt = plan[plan.index(status) + 1]
        data_error = tool_call_id_error(self.contents.get(job["training_files"][0], b""))
        if nxt == "VALIDATED" and data_error:
            self.set_status(job, "FAILED_VALIDATION", error=f"Invalid file format: {data_error}")
        elif nxt == "VALIDATED" and job["model"].startswith("fail"):
            self.set_status(job, "FAILED_VALIDATION",
                            error="Invalid file format: line 1: the last message must be from the assistant.")
        elif nxt == "SUCCESS" and job["model"].startswith("crash"):
            self.set_status(job, "FAILED", error="Training diverged at step 20 (loss is NaN).")
        else:
            self.set_status(job, nxt)

    def out_job(self, job: dict[str, Any], detailed: bool) -> dict[str, Any]:
        out = {k: v for k, v in job.items() if not k.startswith("_")}
        if detailed:
            out["events"] = list(reversed(job["_events"]))  # newest first
            out["checkpoints"] = list(reversed(job["_checkpoints"]))
        return out

    def add_job(self, model: str, training_file: str, *, auto_start: bool = True, suffix: str | None = None,
                hyperparameters: dict[str, Any] | None = None, validation_files: list[str] | None = None,
                integrations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        now = int(time.time())
        job_id = str(uuid.uuid4())
        hp = {"training_steps": None, "learning_rate": 0.0001, "weight_decay": 0.1, "warmup_fraction": 0.05,
              "epochs": None, "seq_len": None, "fim_ratio": 0.9, **(hyperparameters or {})}
        job: dict[str, Any] = {
            "id": job_id, "auto_start": auto_start, "model": model, "status": "QUEUED", "job_type": "completion",
            "created_at": now, "modified_at": now, "training_files": [training_file],
            "validation_files": validation_files or [], "object": "job", "fine_tuned_model": None,
            "suffix": suffix, "integrations": [{k: v for k, v in i.items() if k != "api_key"}
                                               | {"url": f"https://wandb.ai/{i['project']}/runs/{job_id[:8]}"}
                                               for i in integrations or []],
            "trained_tokens": None, "hyperparameters": hp, "repositories": [],
            "metadata": {"expected_duration_seconds": 120, "cost": 2.6214, "cost_currency": "USD",
                         "train_tokens_per_step": 131072, "train_tokens": 1310720, "data_tokens": 305375,
                         "estimated_start_time": None},
            "_plan": AUTO_PLAN if auto_start else AUTO_PLAN[:3], "_events": [], "_checkpoints": [],
            "_seq": self._next(),
        }
        job["_events"].append({"name": "status-updated", "data": {"status": "QUEUED"}, "created_at": now})
        self.jobs[job_id] = job
        return job

    # ---- the app ----
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1024**3)
        r = app.router
        r.add_post("/v1/fine_tuning/jobs", self.create_job)
        r.add_get("/v1/fine_tuning/jobs", self.list_jobs)
        r.add_get("/v1/fine_tuning/jobs/{id}", self.get_job)
        r.add_post("/v1/fine_tuning/jobs/{id}/cancel", self.cancel_job)
        r.add_post("/v1/fine_tuning/jobs/{id}/start", self.start_job)
        r.add_post("/v1/files", self.upload)
        r.add_get("/v1/files", self.list_files)
        r.add_get("/v1/files/{id}", self.get_file)
        r.add_delete("/v1/files/{id}", self.delete_file)
        r.add_get("/v1/files/{id}/content", self.content)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_get("/v1/models", self.list_models)
        r.add_get("/v1/models/{model_id}", self.get_model)
        r.add_delete("/v1/models/{model_id}", self.delete_model)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        is_upload = request.method == "POST" and request.path == "/v1/files"
        body = b"" if is_upload else await request.read()
        self.requests.append(Recorded(request.method, request.path, list(request.query.items()),
                                      dict(request.headers), body))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"message": "Unauthorized", "request_id": uuid.uuid4().hex}, status=401)
        for needle, statuses in self.faults.items():
            if needle in request.path and statuses:
                status = statuses.pop(0)
                if status == 429:
                    return web.json_response({"message": "Requests rate limit exceeded"}, status=429,
                                             headers={"Retry-After": "0"})
                if status == 404:
                    return self.error(404, "Not found (scripted)", code="1100")
                return self.error(status, f"Service unavailable (scripted {status})", "internal_server_error")
        return await handler(request)  # type: ignore[no-any-return]

    def _job(self, request: web.Request) -> dict[str, Any] | None:
        return self.jobs.get(request.match_info["id"])

    def _job_missing(self, request: web.Request) -> web.Response:
        return self.error(404, f"Job with id '{request.match_info['id']}' not found.", code="3101")

    async def create_job(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return self.validation_error(["body"], "JSON decode error", "json_invalid")
        if self._validator is not None:
            errors = sorted(self._validator.iter_errors(body), key=lambda e: list(e.absolute_path))
            if errors:
                return web.json_response({"detail": [
                    {"loc": ["body", *e.absolute_path], "msg": e.message, "type": e.validator} for e in errors[:5]
                ]}, status=422)
        if "hyperparameters" not in body or "model" not in body:
            return self.validation_error(["body", "hyperparameters"], "Field required", "missing")
        files = body.get("training_files") or []
        if not files:
            return self.error(400, "At least one training file is required.")
        for tf in files:
            if tf.get("file_id") not in self.files:
                return self.error(404, f"File with id '{tf.get('file_id')}' not found.", code="1100")
        for vf in body.get("validation_files") or []:
            if vf not in self.files:
                return self.error(404, f"File with id '{vf}' not found.", code="1100")
        job = self.add_job(body["model"], files[0]["file_id"], auto_start=bool(body.get("auto_start", False)),
                           suffix=body.get("suffix"), hyperparameters=body.get("hyperparameters"),
                           validation_files=body.get("validation_files"), integrations=body.get("integrations"))
        return web.json_response(self.out_job(job, detailed=False))

    async def list_jobs(self, request: web.Request) -> web.Response:
        jobs = sorted(self.jobs.values(), key=lambda j: j["_seq"], reverse=True)
        if request.query.get("status"):
            jobs = [j for j in jobs if j["status"] == request.query["status"]]
        page = self._page(jobs, request)
        if isinstance(page, web.Response):
            return page
        return web.json_response({"data": [self.out_job(j, detailed=False) for j in page], "object": "list",
                                  "total": len(jobs)})

    async def get_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self._job_missing(request)
        self.advance(job)
        return web.json_response(self.out_job(job, detailed=True))

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self._job_missing(request)
        if job["status"] in TERMINAL:
            return self.error(400, f"Job {job['id']} cannot be cancelled: it is {job['status']}.")
        if job["status"] != "CANCELLATION_REQUESTED":
            self.set_status(job, "CANCELLATION_REQUESTED")
        return web.json_response(self.out_job(job, detailed=True))

    async def start_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self._job_missing(request)
        if job["status"] != "VALIDATED":
            return self.error(400, f"Job {job['id']} can only be started once VALIDATED (it is {job['status']}).")
        job["_plan"] = ["STARTED", "RUNNING", "SUCCESS"]
        self.set_status(job, "STARTED")
        return web.json_response(self.out_job(job, detailed=True))

    # ---- files ----
    async def upload(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        fields: dict[str, str] = {}
        filename, data = None, b""
        try:
            async for part in reader:
                assert isinstance(part, BodyPartReader)
                if part.name == "file":
                    filename = part.filename or "upload"
                    data = bytes(await part.read())
                else:
                    fields[part.name or ""] = await part.text()
        except ConnectionResetError:  # the client aborted the upload: nothing is created
            return self.error(400, "The upload was interrupted.")
        if filename is None:
            return self.validation_error(["body", "file"], "Field required", "missing")
        purpose = fields.get("purpose", "fine-tune")
        if purpose not in PURPOSES:
            return self.validation_error(["body", "purpose"], f"Input should be {', '.join(map(repr, PURPOSES))}",
                                         "enum")
        self.requests[-1].body = data
        file_id = str(uuid.uuid4())
        f = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
             "filename": filename, "purpose": purpose,
             "sample_type": "instruct" if purpose == "fine-tune" else "batch_request", "source": "upload",
             "num_lines": data.count(b"\n"), "mimetype": "application/jsonl", "signature": uuid.uuid4().hex[:16],
             "_seq": self._next()}
        self.files[file_id] = f
        self.contents[file_id] = data
        return web.json_response(self._public(f))

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    async def list_files(self, request: web.Request) -> web.Response:
        files = sorted(self.files.values(), key=lambda f: f["_seq"], reverse=True)
        if request.query.get("purpose"):
            files = [f for f in files if f["purpose"] == request.query["purpose"]]
        page = self._page(files, request)
        if isinstance(page, web.Response):
            return page
        return web.json_response({"data": [self._public(f) for f in page], "object": "list", "total": len(files)})

    async def get_file(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["id"])
        if f is None:
            return self.error(404, f"File with id '{request.match_info['id']}' not found.", code="1100")
        return web.json_response({**self._public(f), "deleted": False})

    async def delete_file(self, request: web.Request) -> web.Response:
        if self.files.pop(request.match_info["id"], None) is None:
            return self.error(404, f"File with id '{request.match_info['id']}' not found.", code="1100")
        return web.json_response({"id": request.match_info["id"], "object": "file", "deleted": True})

    async def content(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["id"]
        if file_id not in self.files:
            return self.error(404, f"File with id '{file_id}' not found.", code="1100")
        return web.Response(body=self.contents[file_id], content_type="application/octet-stream")

    # ---- chat and models ----
    # POST /v1/chat/completions: the body is validated against ChatCompletionRequest (mistral-openapi.yaml;
    # its properties only: an unknown one such as OpenAI's `seed` is a 422 here, as FastAPI answers
    # "Extra inputs are not permitted" — that Mistral forbids extras is assumed, unverified). Answers:
    # ChatCompletionResponse; the stream is CompletionEvent/CompletionChunk, the usage on the finishing
    # chunk (CompletionChunk.usage; that only the last carries it is what mistralai's SDK streams show:
    # unverified), no system_fingerprint. Models: ModelList of BaseModelCard | FTModelCard, GET/DELETE
    # /v1/models/{model_id} (FTModelCard, DeleteModelOut).
    def tuned_models(self) -> dict[str, dict[str, Any]]:
        return {j["fine_tuned_model"]: j for j in self.jobs.values()
                if j.get("fine_tuned_model") and j["fine_tuned_model"] not in self.deleted_models}

    def chat_problem(self, body: Any) -> web.Response | None:
        if not SPEC.exists():
            return None
        if getattr(self, "_chat_spec", None) is None:
            spec = load_spec()
            self._chat_fields = frozenset(spec["components"]["schemas"]["ChatCompletionRequest"]["properties"])
            self._chat_spec = schema_validator("ChatCompletionRequest", spec)
        extra = sorted(set(body) - self._chat_fields) if isinstance(body, dict) else []
        if extra:
            return self.validation_error(["body", extra[0]], "Extra inputs are not permitted", "extra_forbidden")
        error = next(iter(self._chat_spec.iter_errors(body)), None)
        if error is not None:
            return self.validation_error(["body", *error.absolute_path], error.message)
        return None

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if (problem := self.chat_problem(body)) is not None:
            return problem
        model = body.get("model")
        if model not in self.base_models and model not in self.tuned_models():
            return self.error(404, f"Invalid model: {model}", "invalid_model", code="1500")
        dialect = ChatDialect(openai_usage=False, system_fingerprint=False)
        return await chat_reply(request, dialect, self.chat, str(model))

    def card(self, model_id: str) -> dict[str, Any]:
        job = self.tuned_models().get(model_id)
        caps = {"completion_chat": True, "completion_fim": False, "function_calling": True, "fine_tuning": not job,
                "vision": False, "classification": False}
        card: dict[str, Any] = {"id": model_id, "object": "model", "created": job["modified_at"] if job else 1_700_000_000,
                                "owned_by": "6ed5a2b1" if job else "mistralai", "capabilities": caps, "name": None,
                                "description": None, "max_context_length": 32768, "aliases": [], "deprecation": None,
                                "type": "fine-tuned" if job else "base"}
        if job:
            card.update(job=job["id"], root=job["model"], archived=False)
        return card

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self.card(m) for m in
                                                             [*self.base_models, *self.tuned_models()]]})

    async def get_model(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model_id"]
        if model_id not in self.base_models and model_id not in self.tuned_models():
            return self.error(404, f"Model '{model_id}' not found", "invalid_model", code="1500")
        return web.json_response(self.card(model_id))

    async def delete_model(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model_id"]
        if model_id not in self.tuned_models():
            return self.error(404, f"Model '{model_id}' not found", "invalid_model", code="1500")
        self.deleted_models.add(model_id)
        return web.json_response({"id": model_id, "object": "model", "deleted": True})
