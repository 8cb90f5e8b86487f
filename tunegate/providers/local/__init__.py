"""``local``: real LoRA fine-tuning on the gateway's own hardware, behind OpenAI's API.

Files are gateway-managed files (``ManagedFiles``). A job is a row in the gateway's database
(``tunegate.localjobs``); the scheduler task of some gateway instance validates it, claims it and
trains it in a ``tunegate.trainer`` child process. This adapter only reads and writes those rows, so
every operation works from every instance sharing the database. See MAPPING.md.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import TYPE_CHECKING, Any, ClassVar

from tunegate import models
from tunegate.config import Settings
from tunegate.errors import InvalidRequest, NotFound
from tunegate.localjobs import JobDB, wake_all
from tunegate.localjobs.db import Row, now
from tunegate.localjobs.limits import check_active_jobs, check_ceilings, model_shape_ok, model_unavailable
from tunegate.providers.base import JSON, Page
from tunegate.providers.local.chat import LocalChat
from tunegate.providers.openai import OPENAI_RULES
from tunegate.providers.rules import DatasetRules
from tunegate.providers.tunegate import ManagedFiles
from tunegate.trainer.spec import METHODS, TrainingError, fine_tuned_model_name, resolve_hyperparameters

if TYPE_CHECKING:
    from tunegate.context import RequestContext

CREATE_FIELDS = {"model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed",
                 "metadata", "integrations"}
OPENAI_HPARAMS = ("batch_size", "learning_rate_multiplier", "n_epochs")
TERMINAL = ("succeeded", "failed", "cancelled")
CANCEL_WAIT_S = 15.0
PAUSE_WAIT_S = 60.0
CURSOR_NUMBER = re.compile(r"[0-9]{1,18}")  # the number at the end of an event or checkpoint id


def api_status(row: Row) -> str:
    """The status a client sees. A job handed to an outside engine (a Ray cluster) that has not begun
    there — no event from its node yet: Ray's PENDING, waiting for the cluster's resources — is
    ``queued``, as OpenAI shows a job that waits for capacity; internally it is held (``running``)."""
    if row["status"] == "running" and row.get("engine_job_id") and not row.get("engine_cursor"):
        return "queued"
    return str(row["status"])


def job_object(row: Row) -> JSON:
    method_type = row["method"]["type"]
    hp = dict(row["hyperparameters"] or {})
    method_hp = {k: hp.get(k, "auto") for k in OPENAI_HPARAMS}
    if method_type == "dpo":
        method_hp["beta"] = hp.get("beta", "auto")
    method_hp.update({k: v for k, v in hp.items() if k not in method_hp})
    return models.job(
        id=row["id"], model=row["model"], status=api_status(row), created_at=row["created_at"],
        training_file=row["training_file"], validation_file=row["validation_file"],
        fine_tuned_model=row["fine_tuned_model"], finished_at=row["finished_at"], hyperparameters=hp,
        trained_tokens=row["trained_tokens"], result_files=row["result_files"] or [], error=row["error"],
        seed=row["seed"], estimated_finish=row["estimated_finish"],
        method={"type": method_type, method_type: {"hyperparameters": method_hp}},
        metadata=row["metadata"], user_provided_suffix=row["suffix"],
        # Not in OpenAI's status enum: a paused job reports `queued` with this flag set.
        paused=bool(row["paused"]))


def event_id(seq: int) -> str:
    return f"ftevent-{seq}"


def checkpoint_id(job_id: str, step: int) -> str:
    return f"ftckpt-{job_id.removeprefix('ftjob-')}-{step}"


def _cursor(after: str | None, prefix: str) -> int | None:
    """The number at the end of an event or checkpoint id given as ``after``."""
    if after is None:
        return None
    tail = after.rsplit("-", 1)[-1]
    # ASCII digits only (str.isdigit also passes '²', which int() refuses), and no more than SQLite's
    # 64-bit integers hold: anything else is a 400, never a 500.
    if not after.startswith(prefix) or not CURSOR_NUMBER.fullmatch(tail):
        raise InvalidRequest(f"'after' must be an id from this list (got '{after}').", param="after",
                             code="invalid_cursor")
    return int(tail)


def _method(body: JSON) -> tuple[str, dict[str, Any], str]:
    """(method type, requested hyperparameters, the request path they came from)."""
    method = body.get("method")
    top = body.get("hyperparameters") or {}
    if not method:
        return "supervised", dict(top), "hyperparameters"
    kind = method.get("type")
    if kind not in METHODS:
        raise InvalidRequest(f"Provider 'local' trains method.type 'supervised' or 'dpo', not {kind!r}.",
                             param="method.type", code="unsupported_method")
    block = method.get(kind) or {}
    if not isinstance(block, dict) or not isinstance(block.get("hyperparameters") or {}, dict):
        raise InvalidRequest(f"'method.{kind}' must be an object with 'hyperparameters'.", param=f"method.{kind}")
    hp = dict(block.get("hyperparameters") or {})
    if top and hp:
        raise InvalidRequest("Give hyperparameters either in 'method' or at the top level, not both.",
                             param="hyperparameters")
    return kind, hp or dict(top), f"method.{kind}.hyperparameters" if hp or not top else "hyperparameters"


class Local(LocalChat, ManagedFiles):  # chat and models: chat.py (served by tunegate.serving.local)
    name = "local"
    # Local training keeps OpenAI's dataset rules (10 training examples, no validation minimum), so a
    # script that works here works on OpenAI; the scheduler checks the same rule for unvalidated files.
    dataset_rules: ClassVar[DatasetRules] = DatasetRules(
        min_training_examples=OPENAI_RULES.min_training_examples)

    def _db(self, ctx: RequestContext) -> JobDB:
        store, _ = ctx.require_store()
        return JobDB(store.engine)

    async def _job(self, ctx: RequestContext, job_id: str) -> Row:
        row = await self._db(ctx).get(job_id)
        if row is None or (ctx.key is not None and row["key_id"] not in (None, ctx.key.id)):
            raise NotFound(f"No such fine-tuning job: '{job_id}'.", code="fine_tuning_job_not_found")
        return row

    async def _training_file(self, ctx: RequestContext, file_id: str, field: str) -> None:
        store, _ = ctx.require_store()
        row = await store.get_managed_file(file_id)
        if row is None or (ctx.key is not None and row["key_id"] not in (None, ctx.key.id)):
            raise InvalidRequest(f"File '{file_id}' is not a file kept by this gateway: upload it with "
                                 "'x-portkey-provider: local' (or 'tunegate') first.", param=field,
                                 code="file_not_found")
        if row["purpose"] != "fine-tune":
            raise InvalidRequest(f"File '{file_id}' has purpose '{row['purpose']}', not 'fine-tune'.",
                                 param=field, code="invalid_file_purpose")

    # ---- jobs ----------------------------------------------------------------------------------

    async def create_job(self, ctx: RequestContext, body: JSON) -> JSON:
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise InvalidRequest(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0], code="unknown_parameter")
        if body.get("integrations"):
            raise InvalidRequest("Provider 'local' has no integrations (e.g. wandb); metrics are in the job's "
                                 "events and its result files.", param="integrations", code="unsupported_parameter")
        kind, requested, hp_path = _method(body)
        try:  # names and ranges now (a 400); "auto" values are resolved once the file is validated
            resolve_hyperparameters(requested, 100, kind)
        except TrainingError as exc:
            param = (exc.param or "hyperparameters").replace("hyperparameters", hp_path, 1)
            raise InvalidRequest(exc.message, param=param, code=exc.code) from None
        settings = ctx.settings or Settings()
        check_ceilings(requested, settings, hp_path)
        if not model_shape_ok(body.get("model")):
            error = model_unavailable(str(body.get("model")))
            raise InvalidRequest(error["message"], param="model", code=error["code"])
        await check_active_jobs(self._db(ctx).engine, ctx.key_id, settings.local_max_active_jobs_per_key)
        await self._training_file(ctx, body["training_file"], "training_file")
        if body.get("validation_file"):
            await self._training_file(ctx, body["validation_file"], "validation_file")
        seed = body.get("seed")
        job_id = f"ftjob-{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"
        row: Row = dict(
            id=job_id, key_id=ctx.key_id, status="validating_files", model=body["model"],
            training_file=body["training_file"], validation_file=body.get("validation_file") or None,
            method={"type": kind, kind: {"hyperparameters": requested}}, hyperparameters=requested,
            seed=secrets.randbelow(2**31) if seed is None else int(seed), suffix=body.get("suffix"),
            metadata=body.get("metadata"), fine_tuned_model=None, trained_tokens=None, error=None,
            result_files=[], created_at=now(), started_at=None, finished_at=None, estimated_finish=None,
            claimed_by=None, heartbeat_at=None, pid=None, attempts=0, resume_from=None, output_dir=None,
            cancel_requested=False, pause_requested=False, paused=False)
        db = self._db(ctx)
        await db.insert_job(row)
        await db.add_events(job_id, [{"message": f"Created fine-tuning job: {job_id}"}])
        wake_all()
        return job_object(row)

    async def list_jobs(self, ctx: RequestContext, page: Page) -> JSON:
        rows, more = await self._db(ctx).list_jobs(key_id=ctx.key_id, limit=page.limit, after=page.after,
                                                   metadata=page.extra.get("metadata"))
        return models.page([job_object(r) for r in rows], more)

    async def retrieve_job(self, ctx: RequestContext, job_id: str) -> JSON:
        return job_object(await self._job(ctx, job_id))

    async def _wait(self, ctx: RequestContext, job_id: str, done: Any, seconds: float) -> Row:
        deadline = time.monotonic() + seconds
        row = await self._job(ctx, job_id)
        while not done(row) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            row = await self._job(ctx, job_id)
        return row

    async def cancel_job(self, ctx: RequestContext, job_id: str) -> JSON:
        row = await self._job(ctx, job_id)
        if row["status"] in TERMINAL:
            raise InvalidRequest(f"Job {job_id} has already {row['status']}; only a job that is validating, queued "
                                 "or running can be cancelled.", param="fine_tuning_job_id", code="invalid_job_state")
        db = self._db(ctx)
        values = {"status": "cancelled", "cancel_requested": True, "finished_at": now(), "claimed_by": None,
                  "heartbeat_at": None}
        if (await db.cas(job_id, {"status": "validating_files"}, values)
                or await db.cas(job_id, {"status": "queued", "claimed_by": None}, values)):
            await db.add_events(job_id, [{"message": "Job cancelled"}])
            return job_object(await self._job(ctx, job_id))
        # Running (or just claimed): the instance holding it kills the training process, then records it.
        await db.cas(job_id, {"status": ["queued", "running"]}, {"cancel_requested": True})
        wake_all()
        return job_object(await self._wait(ctx, job_id, lambda r: r["status"] in TERMINAL, CANCEL_WAIT_S))

    async def pause_job(self, ctx: RequestContext, job_id: str) -> JSON:
        row = await self._job(ctx, job_id)
        db = self._db(ctx)
        if row["paused"]:
            return job_object(row)
        if row["status"] == "running":
            await db.cas(job_id, {"status": "running"}, {"pause_requested": True})
            wake_all()
            row = await self._wait(ctx, job_id, lambda r: r["status"] != "running", PAUSE_WAIT_S)
            return job_object(row)
        if (await db.cas(job_id, {"status": "queued", "claimed_by": None, "paused": False}, {"paused": True})
                or await db.cas(job_id, {"status": "validating_files", "paused": False}, {"paused": True})):
            await db.add_events(job_id, [{"message": "Job paused before it started"}])
            return job_object(await self._job(ctx, job_id))
        raise InvalidRequest(f"Job {job_id} is {row['status']}; only a queued or running job can be paused.",
                             param="fine_tuning_job_id", code="invalid_job_state")

    async def resume_job(self, ctx: RequestContext, job_id: str) -> JSON:
        row = await self._job(ctx, job_id)
        db = self._db(ctx)
        if not row["paused"] or not await db.cas(job_id, {"paused": True}, {"paused": False}):
            raise InvalidRequest(f"Job {job_id} is not paused.", param="fine_tuning_job_id", code="invalid_job_state")
        await db.add_events(job_id, [{"message": "Job resumed" + (
            f" from its checkpoint at step {row['resume_from'].rstrip('/').rsplit('-', 1)[-1]}"
            if row["resume_from"] else "")}])
        wake_all()
        return job_object(await self._job(ctx, job_id))

    async def list_events(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        await self._job(ctx, job_id)
        rows, more = await self._db(ctx).list_events(job_id, limit=page.limit,
                                                     after_seq=_cursor(page.after, "ftevent-"))
        return models.page([models.event(id=event_id(r["seq"]), created_at=r["created_at"], message=r["message"],
                                         level=r["level"], type=r["type"], data=r["data"]) for r in rows], more)

    async def list_checkpoints(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        row = await self._job(ctx, job_id)
        rows, more = await self._db(ctx).list_checkpoints(job_id, limit=page.limit,
                                                          after_step=_cursor(page.after, "ftckpt-"))
        name = fine_tuned_model_name(row["model"], row["suffix"], job_id)
        metric_keys = ("step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
                       "full_valid_loss", "full_valid_mean_token_accuracy")
        return models.page([models.checkpoint(
            id=checkpoint_id(job_id, r["step"]), created_at=r["created_at"], job_id=job_id, step_number=r["step"],
            model_checkpoint=f"{name}:ckpt-step-{r['step']}",
            metrics={k: (r["metrics"] or {}).get(k, r["step"] if k == "step" else None) for k in metric_keys})
            for r in rows], more, with_ids=True)
