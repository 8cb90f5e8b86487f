"""/v1/fine_tuning/…: jobs, their events and checkpoints, and the other OpenAI fine-tuning
operations (checkpoint permissions, graders) passed to providers that have them."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Awaitable, Callable

import orjson
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from tunegate.api.common import (
    context,
    context_and_input,
    json_body,
    page,
    remember,
    respond,
    services,
    visible,
)
from tunegate.api.datasets import check_job_files
from tunegate.context import ContextResolver, RequestContext
from tunegate.errors import APIError, InvalidRequest, NotFound, missing_param
from tunegate.files import is_managed_file_id
from tunegate.providers.base import JSON, IncomingFile, Page
from tunegate.store import Store, StoredObject
from tunegate.store.schema import job_watch, objects
from tunegate.webhooks.outbox import TERMINAL
from tunegate.webhooks.settings import WatchSettings

# Checkpoint names (`ft:gpt-4o-mini-2024-07-18:org:suffix:ckpt-step-10`) and permission ids.
_PASSTHROUGH_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9:._-]{0,255}")
_CHECKPOINT_STEP = re.compile(r":ckpt-step-[0-9]+$")


# Model names and file ids are echoed in error messages, recorded and sent upstream: bounded before
# any of that (the registry's id column holds 512).
MAX_ID_LENGTH = 512


def validate_create(ctx: RequestContext, body: JSON) -> None:
    """The checks every provider shares; limits are the provider's own."""
    for name in ("model", "training_file"):
        value = body.get(name)
        if value is None or value == "":
            raise missing_param(name)
        if not isinstance(value, str):
            raise InvalidRequest(f"'{name}' must be a string.", param=name, code="invalid_type")
    for name in ("validation_file",):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise InvalidRequest(f"'{name}' must be a string.", param=name, code="invalid_type")
    for name in ("model", "training_file", "validation_file"):
        if isinstance(body.get(name), str) and not body[name].isprintable():
            # No model or file name holds one, and PostgreSQL refuses a NUL in any text (a 500 there).
            raise InvalidRequest(f"'{name}' holds a control character.", param=name, code="invalid_value")
        if isinstance(body.get(name), str) and len(body[name]) > MAX_ID_LENGTH:
            # Named by length, not quoted: the value itself could be megabytes.
            raise InvalidRequest(f"'{name}' must be at most {MAX_ID_LENGTH} characters (got {len(body[name])}).",
                                 param=name, code="invalid_value")
    suffix = body.get("suffix")
    if suffix is not None:
        limit = ctx.provider.suffix_max_length
        if not isinstance(suffix, str) or not 1 <= len(suffix) <= limit:
            raise InvalidRequest(f"'suffix' must be a string of 1 to {limit} characters for provider "
                                 f"'{ctx.provider_name}'.", param="suffix", code="invalid_suffix")
    for name in ("hyperparameters", "method", "metadata"):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise InvalidRequest(f"'{name}' must be an object.", param=name, code="invalid_type")
    metadata = body.get("metadata") or {}
    if len(metadata) > 16 or any(not isinstance(v, str) or len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise InvalidRequest("'metadata' holds at most 16 pairs of strings (keys up to 64, values up to 512 "
                             "characters).", param="metadata", code="invalid_metadata")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= 2147483647):
        raise InvalidRequest("'seed' must be an integer from 0 to 2147483647.", param="seed", code="invalid_seed")


async def list_jobs(request: Request) -> Response:
    ctx = await context(request)
    listing = await ctx.provider.list_jobs(ctx, page(request, 20))
    return respond(await visible(ctx, "job", listing))


async def create_job(request: Request) -> Response:
    ctx = await context(request)
    body = await json_body(request)
    validate_create(ctx, body)
    # Another key's tuned model is nobody else's base model, another key's file trains nobody else's job
    # (the provider checks the other spellings it knows), before its dataset facts are read.
    await ctx.check_named_all([("model", body["model"], "model")] + [
        ("file", body[field], field) for field in ("training_file", "validation_file") if isinstance(body.get(field), str)])
    await check_job_files(ctx, body)  # the provider's dataset rules, before any copy is pushed
    for field in ("training_file", "validation_file"):
        if isinstance(body.get(field), str):
            body[field] = await managed_file_on_provider(ctx, body[field], field)
    idem_key = request.headers.get("idempotency-key")
    if not idem_key or ctx.store is None:
        job = await ctx.provider.create_job(ctx, body)
        await remember(ctx, "job", job, created=True)
        return respond(job)
    return await _create_once(ctx, idem_key, body)


async def _create_once(ctx: RequestContext, idem_key: str, body: JSON) -> Response:
    """A create under an Idempotency-Key: the first request runs, repeats get its answer. The claim is
    a database row, so this holds across gateway instances sharing PostgreSQL."""
    assert ctx.store is not None
    scope = f"{ctx.key_id or 'open'}:{ctx.provider_name}:{ctx.connection or ''}"
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    existing = await ctx.store.claim_idempotency(scope, idem_key, digest)
    if existing is not None:
        if existing["request_hash"] != digest:
            raise InvalidRequest("This Idempotency-Key was used with a different request body.",
                                 param="Idempotency-Key", code="idempotency_key_reused", status=422)
        if existing["state"] != "done":
            raise APIError("A request with this Idempotency-Key is still in progress.", status=409,
                           code="idempotency_in_progress", param="Idempotency-Key")
        return Response(existing["body"], status_code=existing["status_code"], media_type="application/json",
                        headers={"Idempotent-Replayed": "true"})
    ctx.idempotent_create = True
    ctx.idempotency_key = idem_key
    try:
        job = await ctx.provider.create_job(ctx, body)
    except APIError as exc:
        if exc.status >= 500 or exc.status == 429:
            await ctx.store.release_idempotency(scope, idem_key)  # safe to try again later
        else:
            await ctx.store.finish_idempotency(scope, idem_key, exc.status, orjson.dumps(exc.body()))
        raise
    except BaseException:
        await ctx.store.release_idempotency(scope, idem_key)
        raise
    await remember(ctx, "job", job, created=True)
    await ctx.store.finish_idempotency(scope, idem_key, 200, orjson.dumps(job))
    return respond(job)


async def managed_file_on_provider(ctx: RequestContext, file_id: str, field: str) -> str:
    """A gateway-managed file named in a job: the id the provider knows it by. The first use pushes a
    copy through the provider's own upload (which converts it to the provider's format); later uses
    of the same content on the same provider and connection reuse that copy."""
    if ctx.provider.keeps_files or ctx.store is None or ctx.files is None or not is_managed_file_id(file_id):
        return file_id
    row = await ctx.store.get_managed_file(file_id)
    if row is None:
        return file_id  # a provider's own id
    if ctx.key is not None and row["key_id"] not in (None, ctx.key.id):
        raise NotFound(f"No such File object: '{file_id}'.", param=field, code="file_not_found")
    copied = await ctx.store.file_copy(row["sha256"], ctx.provider_name, ctx.connection, ctx.key_id)
    if copied is not None:
        return copied
    upload = IncomingFile(filename=row["filename"], purpose=row["purpose"], content_type="application/jsonl",
                          chunks=ctx.files.read(row["location"]), size_hint=row["bytes"])
    created = await ctx.provider.upload_file(ctx, upload)
    await remember(ctx, "file", created, created=True)
    await ctx.store.add_file_copy(row["sha256"], ctx.provider_name, ctx.connection, ctx.key_id, created["id"])
    return str(created["id"])


def _job_ref(request: Request) -> tuple[str, str]:
    return ("job", request.path_params["job_id"])


def _job_operation(operation: str) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint for an operation on one job (retrieve, cancel, pause, resume): resolve the context
    from the job id, call the provider, remember the answer."""

    async def endpoint(request: Request) -> Response:
        ctx = await context(request, _job_ref(request))
        job = await getattr(ctx.provider, operation)(ctx, request.path_params["job_id"])
        await remember(ctx, "job", job)
        return respond(job)

    endpoint.__name__ = operation  # the request log names the operation by its endpoint
    return endpoint


retrieve_job = _job_operation("retrieve_job")
cancel_job = _job_operation("cancel_job")
pause_job = _job_operation("pause_job")
resume_job = _job_operation("resume_job")


# ---- the watcher's snapshot: tunegate's own route, not OpenAI's API ----------------------------------


async def retrieve_job_snapshot(request: Request) -> Response:
    """GET /v1/tunegate/jobs/{id}/snapshot: the job as the job watcher last read it, with no upstream
    call, so any number of viewers (``tunegate jobs watch``, scripts) cost the provider nothing beyond the
    watcher's own polls. Ownership exactly as a retrieve: the context is resolved with the job ref. A job
    the watcher is not keeping current, or a request that would read it elsewhere than the watcher does,
    is read live, as ``GET /v1/fine_tuning/jobs/{id}`` would. ``x-tunegate-source`` says which
    (``snapshot``: with ``x-tunegate-snapshot-age`` in seconds; ``live``: with ``x-tunegate-live-reason``)."""
    ctx = await context(request, _job_ref(request))
    job_id = request.path_params["job_id"]
    svc = services(request)
    found, reason = await _snapshot(svc.store, svc.resolver, svc.settings.watch, ctx, job_id,
                                    request.scope["tunegate.trace_id"])
    if found is not None:
        job, age = found
        return Response(orjson.dumps(job), media_type="application/json",
                        headers={"x-tunegate-source": "snapshot", "x-tunegate-snapshot-age": str(age)})
    job = await ctx.provider.retrieve_job(ctx, job_id)
    await remember(ctx, "job", job)
    return Response(orjson.dumps(job), media_type="application/json",
                    headers={"x-tunegate-source": "live", "x-tunegate-live-reason": reason})


async def _snapshot(store: Store, resolver: ContextResolver, watch: WatchSettings, ctx: RequestContext,
                    job_id: str, trace_id: str) -> tuple[tuple[JSON, int] | None, str]:
    """(the snapshot and its age in seconds, "") when it may stand in for a live read; else (None, why not)."""
    recorded = await store.placement("job", job_id)
    if recorded is None:
        return None, "not_recorded"
    if not await _watchers_view(resolver, ctx, recorded, trace_id):
        return None, "other_view"
    o, w = objects.c, job_watch.c
    query = (sa.select(o.status, o.snapshot, o.updated_at, w.active, w.lease_owner, w.lease_until, w.next_poll_at,
                       w.failures)
             .select_from(objects.outerjoin(job_watch, w.job_id == o.id)).where(o.kind == "job", o.id == job_id))
    async with store.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None, "not_recorded"
    status, snapshot, updated_at, active, owner, lease_until, next_poll_at, failures = row
    now = time.time()
    if not isinstance(snapshot, dict) or status is None or snapshot.get("status") != status:
        return None, "no_snapshot"
    if status not in TERMINAL:  # a terminal snapshot is final: nothing the provider says later changes it
        if not active or owner is None or (lease_until or 0.0) < now:
            return None, "not_watched"  # never watched, stopped (job_watch.reason), or its instance is gone
        if failures:
            return None, "watch_failing"  # the live read gives the caller the provider's own error
        # A due poll may wait a tick to start and its upstream call up to the watcher's timeout; later
        # than that the watcher is behind (overloaded, stuck) and the snapshot is older than its interval.
        if now > next_poll_at + 2 * watch.tick_seconds + watch.timeout_seconds:
            return None, "stale"
    return (snapshot, max(0, int(now) - int(updated_at))), ""


async def _watchers_view(resolver: ContextResolver, ctx: RequestContext, recorded: StoredObject,
                         trace_id: str) -> bool:
    """Whether this request would read the job where, and as, the watcher does: the job's provider and
    stored connection, its stored credentials, no header option or host of the caller's own. A job only a
    caller's own provider key may read (no stored connection, not kept by the gateway) is always read
    live: only the provider can check that key."""
    if recorded.connection is None and not ctx.provider.keeps_files:
        return False
    try:
        theirs = await resolver.for_job(recorded, trace_id)
    except APIError:
        return False  # the watcher could not poll it either (a connection removed, a grant withdrawn)
    return (ctx.provider_name, ctx.connection, ctx.credentials, ctx.options, ctx.base_url_override) == (
        theirs.provider_name, theirs.connection, theirs.credentials, theirs.options, theirs.base_url_override)


async def delete_job(request: Request) -> Response:
    """DELETE /v1/fine_tuning/jobs/{id}: not in OpenAI's API; a 400 from providers that cannot delete jobs."""
    ctx = await context(request, _job_ref(request))
    result = await ctx.provider.delete_job(ctx, request.path_params["job_id"])
    if ctx.store is not None:
        await ctx.store.forget("job", request.path_params["job_id"])
    return respond(result)


async def list_events(request: Request) -> Response:
    ctx, query = await context_and_input(request, _job_ref(request), _page_of(request, 20))
    return respond(await ctx.provider.list_events(ctx, request.path_params["job_id"], query))


async def list_checkpoints(request: Request) -> Response:
    ctx, query = await context_and_input(request, _job_ref(request), _page_of(request, 10))
    return respond(await ctx.provider.list_checkpoints(ctx, request.path_params["job_id"], query))


def _page_of(request: Request, default_limit: int) -> Callable[[], Awaitable[Page]]:
    async def read() -> Page:
        return page(request, default_limit)

    return read


async def passthrough(request: Request) -> Response:
    """Checkpoint permissions and graders: forwarded to providers that speak the OpenAI API."""
    ctx = await context(request)
    for name, value in request.path_params.items():
        if not _PASSTHROUGH_SEGMENT.fullmatch(value):
            # A decoded '%2F', '%3F' or '..' would cut or climb the upstream path: name nothing instead.
            raise NotFound(f"No such {name.replace('_', ' ')}: '{value[:200]}'.", param=name)
    if checkpoint := request.path_params.get("checkpoint"):
        # A checkpoint is a step of a tuned model ('ft:…:abc123:ckpt-step-10'): whoever may not reach
        # the model may neither read nor change who else may use its checkpoints.
        await ctx.check_named("model", _CHECKPOINT_STEP.sub("", checkpoint), "checkpoint")
    path = request.url.path.removeprefix("/v1")
    body = await json_body(request, optional=True) if request.method == "POST" else None
    result = await ctx.provider.passthrough(ctx, request.method, path, request.query_params.multi_items(), body)
    return respond(result)
