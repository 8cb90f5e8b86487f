"""The ASGI application: routes, lifespan (database, upstream session) and error handling."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunegate import logs, metrics, tracing, ui
from tunegate.api import chat, files, fine_tuning, health, models, uploads
from tunegate.api.common import Services
from tunegate.config import Settings
from tunegate.context import ContextResolver, new_trace_id, ownership_refusal
from tunegate.errors import APIError, MethodNotAllowed, NotFound
from tunegate.files import open_file_store
from tunegate.localjobs import start_scheduler
from tunegate.private import secure_data_dir
from tunegate.serving.local import manager as local_serving
from tunegate.store import Store
from tunegate.store.secretbox import SecretBox
from tunegate.upstream import Upstream
from tunegate.webhooks import routes as webhook_routes
from tunegate.webhooks import start_webhooks

log = logging.getLogger("tunegate")
PRUNE_BATCH = 20_000  # request-log rows deleted per transaction

ROUTES = [
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/openapi.json", health.openapi, methods=["GET"]),
    Route("/v1/fine_tuning/jobs", fine_tuning.list_jobs, methods=["GET"], name="list_jobs"),
    Route("/v1/fine_tuning/jobs", fine_tuning.create_job, methods=["POST"], name="create_job"),
    Route("/v1/fine_tuning/jobs/{job_id}", fine_tuning.retrieve_job, methods=["GET"], name="retrieve_job"),
    Route("/v1/fine_tuning/jobs/{job_id}", fine_tuning.delete_job, methods=["DELETE"], name="delete_job"),
    Route("/v1/fine_tuning/jobs/{job_id}/cancel", fine_tuning.cancel_job, methods=["POST"], name="cancel_job"),
    Route("/v1/fine_tuning/jobs/{job_id}/pause", fine_tuning.pause_job, methods=["POST"], name="pause_job"),
    Route("/v1/fine_tuning/jobs/{job_id}/resume", fine_tuning.resume_job, methods=["POST"], name="resume_job"),
    Route("/v1/fine_tuning/jobs/{job_id}/events", fine_tuning.list_events, methods=["GET"], name="list_events"),
    Route("/v1/fine_tuning/jobs/{job_id}/checkpoints", fine_tuning.list_checkpoints, methods=["GET"],
          name="list_checkpoints"),
    Route("/v1/tunegate/jobs/{job_id}/snapshot", fine_tuning.retrieve_job_snapshot, methods=["GET"],
          name="retrieve_job_snapshot"),
    Route("/v1/fine_tuning/checkpoints/{checkpoint}/permissions", fine_tuning.passthrough,
          methods=["GET", "POST"], name="checkpoint_permissions"),
    Route("/v1/fine_tuning/checkpoints/{checkpoint}/permissions/{permission_id}", fine_tuning.passthrough,
          methods=["DELETE"], name="delete_checkpoint_permission"),
    Route("/v1/fine_tuning/alpha/graders/run", fine_tuning.passthrough, methods=["POST"], name="run_grader"),
    Route("/v1/fine_tuning/alpha/graders/validate", fine_tuning.passthrough, methods=["POST"],
          name="validate_grader"),
    Route("/v1/chat/completions", chat.chat_completions, methods=["POST"], name="chat_completions"),
    Route("/v1/models", models.list_models, methods=["GET"], name="list_models"),
    Route("/v1/models/{model:path}/deploy", models.deploy_model, methods=["POST"], name="deploy_model"),
    Route("/v1/models/{model:path}", models.retrieve_model, methods=["GET"], name="retrieve_model"),
    Route("/v1/models/{model:path}", models.delete_model, methods=["DELETE"], name="delete_model"),
    Route("/v1/files", files.list_files, methods=["GET"], name="list_files"),
    Route("/v1/files", files.upload_file, methods=["POST"], name="upload_file"),
    Route("/v1/files/{file_id}", files.retrieve_file, methods=["GET"], name="retrieve_file"),
    Route("/v1/files/{file_id}", files.delete_file, methods=["DELETE"], name="delete_file"),
    Route("/v1/files/{file_id}/content", files.file_content, methods=["GET"], name="file_content"),
    Route("/v1/uploads", uploads.create_upload, methods=["POST"], name="create_upload"),
    Route("/v1/uploads/{upload_id}/parts", uploads.add_part, methods=["POST"], name="add_upload_part"),
    Route("/v1/uploads/{upload_id}/complete", uploads.complete_upload, methods=["POST"], name="complete_upload"),
    Route("/v1/uploads/{upload_id}/cancel", uploads.cancel_upload, methods=["POST"], name="cancel_upload"),
    *webhook_routes.ROUTES,
]


class TraceAndLog:
    """Echo or mint ``x-portkey-trace-id`` on every response, and write one request-log entry per
    request (id, time, key, provider, operation, statuses, latency — never a header value)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        services: Services | None = getattr(scope["app"].state, "services", None) if "app" in scope else None
        limit = services.settings.max_header_bytes if services else 32 * 1024
        if sum(len(k) + len(v) for k, v in scope["headers"]) > limit:
            await APIError(f"The request headers are larger than {limit} bytes.", status=431,
                           code="headers_too_large").response()(scope, receive, send)
            return
        traceparent = _header(scope, b"traceparent")
        trace_id = (_header(scope, b"x-portkey-trace-id") or tracing.trace_id_from_traceparent(traceparent)
                    or new_trace_id())
        scope["tunegate.trace_id"] = trace_id
        receive = metrics.count_upload(scope, receive)
        span = tracing.start_request(scope, trace_id, traceparent) if tracing.enabled() else None
        status = 500
        started_response = False
        body_pending = _has_body(scope)

        async def receive_tracked() -> Message:
            nonlocal body_pending
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_pending = False
            return message

        async def send_with_trace(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                extra = [(b"x-portkey-trace-id", trace_id.encode())]
                if body_pending:
                    # Answered before the body was read (a 413, a refused form): without this, uvicorn keeps
                    # the connection and reads the rest of the body only to drop it, as long as it is sent.
                    extra.append((b"connection", b"close"))
                ctx = scope.get("tunegate.ctx")
                for name, value in ctx.response_headers.items() if ctx is not None else ():
                    extra.append((name.lower().encode("latin-1"), value.encode("latin-1")))  # the adapter's own
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive_tracked, send_with_trace)
        except Exception as exc:
            # Last line of defence: an OpenAI-shaped 500, and a log line with the exception's type and
            # place only (messages of foreign exceptions may hold request data, so no traceback text).
            frame = exc.__traceback__
            while frame is not None and frame.tb_next is not None:
                frame = frame.tb_next
            where = f"{frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame else "?"
            log.error("internal error on %s %s: %s at %s", scope["method"], scope["path"], type(exc).__name__, where)
            if not started_response:
                response = APIError("The gateway hit an internal error; the request was not completed.",
                                    status=500, type="server_error", code="internal_error").response()
                await response(scope, receive, send_with_trace)
        finally:
            elapsed = time.perf_counter() - started
            self._log(scope, status, elapsed * 1000)
            self._observe(scope, status, elapsed)
            if span is not None:
                tracing.end_request(span, scope, status)

    @staticmethod
    def _log(scope: Scope, status: int, latency_ms: float) -> None:
        services: Services | None = getattr(scope["app"].state, "services", None) if "app" in scope else None
        if services is None or not services.settings.request_log or not scope["path"].startswith("/v1/"):
            return
        ctx = scope.get("tunegate.ctx")
        if ctx is None and status == 401:
            # Refused before anyone was identified: anonymous callers must not be able to grow the table.
            # They are counted in tunegate_requests_total{provider="none",status="401"} instead.
            return
        endpoint = scope.get("endpoint")
        services.store.log_request(dict(
            ts=time.time(), trace_id=scope["tunegate.trace_id"], key_id=ctx.key_id if ctx else None,
            provider=ctx.provider_name if ctx else None, operation=getattr(endpoint, "__name__", None),
            method=scope["method"], path=scope["path"][:500], status=status,
            upstream_status=ctx.upstream_status if ctx else None, latency_ms=round(latency_ms, 3)))

    @staticmethod
    def _observe(scope: Scope, status: int, seconds: float) -> None:
        """Metrics and the JSON request line (never a header, query string or body)."""
        try:
            metrics.observe(scope, status, seconds)
            ctx = scope.get("tunegate.ctx")
            logs.log_request(scope["tunegate.trace_id"], scope["method"], scope["path"], status, seconds * 1000,
                             key_id=ctx.key_id if ctx else None, provider=ctx.provider_name if ctx else None,
                             operation=getattr(scope.get("endpoint"), "__name__", None),
                             upstream_status=ctx.upstream_status if ctx else None,
                             attempts=ctx.policy.stats["attempts"] if ctx else None)
        except Exception as exc:  # observability must never fail a request
            log.warning("metrics/log hook failed: %s", type(exc).__name__)


def _has_body(scope: Scope) -> bool:
    for key, value in scope["headers"]:
        if (key == b"content-length" and value.strip() not in (b"", b"0")) or key == b"transfer-encoding":
            return True
    return False


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            text = value.decode("latin-1")
            # A trace id is echoed into headers and logs: keep it short and printable.
            return text if 0 < len(text) <= 128 and text.isprintable() else None
    return None


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    ctx = request.scope.get("tunegate.ctx")
    if exc.status == 404 and ctx is not None and ctx.key is not None and ctx.unrecorded_ref is not None:
        # An id the registry does not know: whatever said "not found" (the provider, in its own words, or
        # the adapter), the answer reads exactly as the refusal of another key's object
        # (context._recorded), so a key cannot tell ids that exist under other keys from ids that exist
        # nowhere. A key's own objects keep the provider's message.
        log.info("a 404 on %s %s answered as the ownership refusal; the original: %s %s", request.method,
                 request.url.path[:200], exc.code, exc.message[:300])
        ctx.response_headers.clear()  # the refusal carries no adapter header (a provider's Warning) either
        exc = ownership_refusal(*ctx.unrecorded_ref)
    if exc.status >= 500:
        log.warning("upstream failure %s on %s %s: %s", exc.status, request.method, request.url.path, exc.message)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return NotFound(f"Unknown route: {request.method} {request.url.path}", code="unknown_route").response()
    if exc.status_code == 405:
        allowed = _allowed_methods(request.app.router.routes, {
            "type": "http", "method": request.method, "path": request.scope["path"],
            "root_path": request.scope.get("app_root_path", request.scope.get("root_path", ""))})
        headers = {**(exc.headers or {}), **({"Allow": ", ".join(sorted(allowed))} if allowed else {})}
        return MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}.").response(headers)
    return APIError(str(exc.detail), status=exc.status_code).response()


def _allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> set[str]:
    """Every method some route answers on this path. The table keeps one Route per operation (each its
    own name in logs and metrics), so Starlette's 405 names only the first Route matching the path."""
    allowed: set[str] = set()
    for route in routes:
        match, child = route.matches(scope)
        if match == Match.NONE:
            continue
        if isinstance(route, Mount):
            allowed |= _allowed_methods(route.routes, {**scope, **child})
        elif isinstance(route, Route) and route.methods:
            allowed |= route.methods
    return allowed


async def _disconnect(request: Request, exc: Exception) -> Response:
    return APIError("The client disconnected.", status=499, code="client_disconnected").response()


async def _prune_request_log(settings: Settings, store: Store) -> None:
    """Keep the request log within its retention (``request_log_max_age_days``, ``_max_rows``): at
    start, then every ``request_log_prune_seconds``; each worker may do it, the deletes are idempotent."""
    max_age = settings.request_log_max_age_days * 86400 if settings.request_log_max_age_days else None
    while True:
        try:
            deleted = PRUNE_BATCH
            while deleted == PRUNE_BATCH:  # a backlog goes in short transactions, letting the log's writes in
                deleted = await store.prune_request_log(max_age_seconds=max_age,
                                                        max_rows=settings.request_log_max_rows, batch=PRUNE_BATCH)
                await asyncio.sleep(0)
        except Exception as exc:  # the database briefly away: try again next time
            log.warning("request log pruning failed: %s", type(exc).__name__)
        await asyncio.sleep(settings.request_log_prune_seconds)


def _freeze_startup_objects() -> None:
    """Move what start-up made (modules, settings, compiled statements, ~half a million objects) out of the
    collector's reach: a full collection then walks only what serving creates. Measured under list load
    at c=64 on 2 cores: gen-2 pauses of 45-60 ms, about once a second, down to ~4 ms. Once per process
    (a test process starts many apps: what later ones make must stay collectable).

    The youngest generation is collected every ``YOUNG_GC_THRESHOLD`` allocations instead of Python's 700:
    64 requests in flight keep their frames, dicts and parsed answers alive, so each young collection
    found most of them live and promoted them, 0.13-0.17 collections per request, 22-30 µs of CPU a
    request (a gc.callbacks probe, list / create at c=64). At 7,000 most of those objects are freed by
    reference counting before a collection looks at them: 2.5-14.5 µs a request, pauses of ~1 ms."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()
        _gen0, older, oldest = gc.get_threshold()
        gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)


YOUNG_GC_THRESHOLD = 7_000


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.load()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        secure_data_dir(settings.data_dir, settings.resolved_database_url)  # before anything is written there
        box = SecretBox.from_settings(settings.secret_key, settings.data_dir)
        store = await Store.open(settings.resolved_database_url, box, settings.database_pool_size)
        upstream = Upstream(settings.allowed_custom_hosts)
        files_upstream = Upstream()  # the file store's own session (S3), outside any request
        files = open_file_store(settings, files_upstream)
        await asyncio.to_thread(files.prepare)
        app.state.services = Services(settings, store, upstream, ContextResolver(settings, store, upstream, files),
                                      files)
        # the `local` provider's worker; a cluster's API (Ray) is reached outside any request, like S3
        app.state.local_jobs = await start_scheduler(settings, store, files, files_upstream)
        app.state.webhooks = await start_webhooks(settings, store, app.state.services.resolver)  # watcher, outbox
        pruner = asyncio.get_running_loop().create_task(_prune_request_log(settings, store))
        _freeze_startup_objects()
        try:
            yield {}
        finally:
            pruner.cancel()
            await app.state.webhooks.stop()
            await app.state.local_jobs.stop()
            await local_serving.shutdown(settings)  # the local model server this instance started, if any
            await upstream.close()
            await files_upstream.close()
            await store.close()

    tracing.setup()
    logs.ensure_request_handler()
    routes = [*ROUTES, Route("/metrics", metrics.metrics_endpoint, methods=["GET"], name="metrics"),
              ui.mount("/ui", name="ui")]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        APIError: _api_error, HTTPException: _http_error, ClientDisconnect: _disconnect})
    app.add_middleware(TraceAndLog)
    return app
