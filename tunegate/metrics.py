"""Prometheus metrics, served at ``/metrics``.

Per request (recorded by the TraceAndLog middleware, a few dictionary lookups and additions):
requests by provider/operation/status, latency histograms, upstream errors, upstream attempts and
retries, and bytes uploaded. At scrape time, from the database: jobs by provider and status (the
registry's latest snapshots) and, when the local trainer's ``local_jobs`` table exists, its jobs by
status and queue depth.

Several workers (``tunegate serve --workers N``): each process keeps its own counters, so the CLI sets
``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory) before the workers start, and a scrape of any worker
merges every worker's files (prometheus_client's multiprocess mode). Database-derived gauges are
computed per scrape, so they are the same whichever worker answers.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope

from tunegate.errors import Unauthorized
from tunegate.store.secretbox import KEY_PREFIX

if TYPE_CHECKING:
    from tunegate.store import Store

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("tunegate_requests", "HTTP requests answered by the gateway.",
                   ["provider", "operation", "status"])
LATENCY = Histogram("tunegate_request_duration_seconds", "Time to answer a request, upstream calls included.",
                    ["provider", "operation"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, float("inf")))
UPSTREAM_ERRORS = Counter("tunegate_upstream_errors", "Failed upstream calls: the provider answered 429/5xx, "
                          "or could not be reached or timed out.", ["provider", "operation", "reason"])
UPSTREAM_ATTEMPTS = Counter("tunegate_upstream_attempts", "Upstream calls made (retries included).",
                            ["provider", "operation"])
UPSTREAM_RETRIES = Counter("tunegate_upstream_retries", "Upstream calls retried after a transport error "
                           "or a retryable status.", ["provider", "operation"])
UPLOADED_BYTES = Counter("tunegate_uploaded_bytes", "Bytes of file uploads accepted by the gateway.",
                         ["provider"])

CHAT_TTFT = Histogram("tunegate_chat_time_to_first_token_seconds", "Time from a streamed chat request to its "
                      "first chunk.", ["provider", "model"],
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf")))
CHAT_TOKENS_PER_SECOND = Histogram("tunegate_chat_tokens_per_second", "Output tokens per second of a chat "
                                   "completion (streamed: from the first chunk on).", ["provider", "model"],
                                   buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, float("inf")))
CHAT_OUTPUT_TOKENS = Counter("tunegate_chat_output_tokens", "Output tokens of chat completions (the provider's "
                             "usage when it sends one, else one per streamed content chunk).", ["provider", "model"])
MAX_MODEL_LABELS = 500  # tuned models are many; past this, new ones share the label "other"
_model_labels: set[str] = set()

_UPLOAD_BYTES = "tunegate.upload_bytes"


def _model_label(model: str) -> str:
    if model in _model_labels or len(_model_labels) < MAX_MODEL_LABELS:
        _model_labels.add(model)
        return model
    return "other"


def observe_chat(provider: str, model: str, seconds: float, first_token: float | None, tokens: int | None, *,
                 generation_seconds: float | None = None) -> None:
    """One finished chat completion: time to first token (streams), output tokens and tokens/s."""
    label = _model_label(model)
    if first_token is not None:
        CHAT_TTFT.labels(provider, label).observe(first_token)
    if tokens:
        CHAT_OUTPUT_TOKENS.labels(provider, label).inc(tokens)
        spent = generation_seconds if generation_seconds else seconds
        if spent > 0:
            CHAT_TOKENS_PER_SECOND.labels(provider, label).observe(tokens / spent)


def is_upload(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] == "POST" and (path == "/v1/files" or (path.startswith("/v1/uploads/")
                                                                   and path.endswith("/parts")))


def count_upload(scope: Scope, receive: Receive) -> Receive:
    """Wrap ``receive`` to count an upload's body bytes (only on upload routes)."""
    if not is_upload(scope):
        return receive
    scope[_UPLOAD_BYTES] = 0

    async def counting() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            scope[_UPLOAD_BYTES] += len(message.get("body", b""))
        return message

    return counting


_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, kept: prometheus_client takes a lock and rebuilds the label tuple on
    every ``labels()`` call. The set is bounded: provider names, route names and statuses."""
    key = (id(metric), *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def observe(scope: Scope, status: int, seconds: float) -> None:
    """Record one finished request. Called from the middleware's ``finally``: must never raise."""
    ctx = scope.get("tunegate.ctx")
    endpoint = scope.get("endpoint")
    operation = getattr(endpoint, "__name__", None) or "unrouted"
    provider = ctx.provider_name if ctx is not None else "none"
    _child(REQUESTS, provider, operation, str(status)).inc()
    _child(LATENCY, provider, operation).observe(seconds)
    if ctx is None:
        return
    stats = ctx.policy.stats
    if stats["attempts"]:
        _child(UPSTREAM_ATTEMPTS, provider, operation).inc(stats["attempts"])
    if stats["retries"]:
        _child(UPSTREAM_RETRIES, provider, operation).inc(stats["retries"])
    upstream = ctx.upstream_status
    if upstream is not None and (upstream >= 500 or upstream == 429):
        _child(UPSTREAM_ERRORS, provider, operation, str(upstream)).inc()
    elif upstream is None and stats["attempts"] and status in (502, 504):
        _child(UPSTREAM_ERRORS, provider, operation, "timeout" if status == 504 else "unreachable").inc()
    uploaded = scope.get(_UPLOAD_BYTES)
    if uploaded and status < 400:
        _child(UPLOADED_BYTES, provider).inc(uploaded)


# ---- database-derived gauges (computed per scrape, cached briefly) -------------------------------

_QUEUED = ("queued", "validating_files", "pending")
_CACHE_SECONDS = 5.0


class _Snapshot(Collector):
    def __init__(self, jobs: list[tuple[str, str, int]], local: list[tuple[str, int]] | None) -> None:
        self.jobs = jobs
        self.local = local

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("tunegate_jobs", "Fine-tuning jobs in the registry by provider and last "
                                 "seen status.", labels=["provider", "status"])
        for provider, status, count in self.jobs:
            jobs.add_metric([provider, status], count)
        yield jobs
        if self.local is not None:
            local = GaugeMetricFamily("tunegate_local_jobs", "Local trainer jobs by status.", labels=["status"])
            for status, count in self.local:
                local.add_metric([status], count)
            yield local
            yield GaugeMetricFamily("tunegate_local_queue_depth", "Local trainer jobs waiting to run.",
                                    value=sum(c for s, c in self.local if s in _QUEUED))


_cache: dict[str, tuple[float, bytes]] = {}


async def _database_gauges(store: Store) -> bytes:
    cached = _cache.get(store.url)
    now = time.monotonic()
    if cached and now - cached[0] < _CACHE_SECONDS:
        return cached[1]
    from tunegate.store.schema import objects

    async with store.engine.connect() as conn:
        rows = await conn.execute(sa.select(objects.c.provider, objects.c.status, sa.func.count())
                                  .where(objects.c.kind == "job").group_by(objects.c.provider, objects.c.status))
        jobs = [(str(p), str(s or "unknown"), int(c)) for p, s, c in rows]
        local = await _local_jobs(conn)
    body = generate_latest(_registry_of(_Snapshot(jobs, local)))
    _cache[store.url] = (now, body)
    return body


async def _local_jobs(conn: Any) -> list[tuple[str, int]] | None:
    """Counts from the local trainer's table, if it exists and has a status column (read defensively:
    that table belongs to another module and may not be migrated yet)."""
    try:
        columns = await conn.run_sync(lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("local_jobs")}
                                      if sa.inspect(sync).has_table("local_jobs") else set())
        if "status" not in columns:
            return None
        table = sa.table("local_jobs", sa.column("status"))
        rows = await conn.execute(sa.select(table.c.status, sa.func.count()).group_by(table.c.status))
        return [(str(s or "unknown"), int(c)) for s, c in rows]
    except sa.exc.SQLAlchemyError:
        return None


def _registry_of(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def process_metrics() -> bytes:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(DEFAULT_REGISTRY)


async def may_scrape(request: Request) -> bool:
    """The operator's ``metrics_token`` when one is set (nothing else then); else, once tunegate keys
    exist, any valid key: the counters show every team's traffic, so anonymous callers see none of it."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        return False
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented = presented.strip() if scheme.lower() == "bearer" else ""
    token = services.settings.metrics_token
    if token:
        return hmac.compare_digest(presented.encode(), token.encode())
    if not await services.store.keys_exist():
        return True
    return presented.startswith(KEY_PREFIX) and await services.store.authenticate(presented) is not None


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics`` in the Prometheus text format (see ``may_scrape`` for who may read it)."""
    if not await may_scrape(request):
        return Unauthorized("GET /metrics needs 'Authorization: Bearer' with the gateway's metrics token "
                            "(or a tunegate key when no metrics token is set).", code="metrics_unauthorized",
                            ).response({"WWW-Authenticate": "Bearer"})
    body = process_metrics()
    services = getattr(request.app.state, "services", None)
    if services is not None:
        try:
            body += await _database_gauges(services.store)
        except sa.exc.SQLAlchemyError:
            pass  # the database being down must not hide the process metrics
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def prepare_multiprocess(workers: int) -> str | None:
    """Before starting ``workers`` processes: point prometheus_client at a fresh shared directory (a
    given ``PROMETHEUS_MULTIPROC_DIR`` is emptied of old files). Returns the directory, or None for one
    worker. Must run before the workers import this module."""
    if workers <= 1 and not os.environ.get(MULTIPROC_ENV):
        return None
    import tempfile
    from pathlib import Path

    directory = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="tunegate-metrics-")
    Path(directory).mkdir(parents=True, exist_ok=True)
    for old in Path(directory).glob("*.db"):
        old.unlink()
    os.environ[MULTIPROC_ENV] = directory
    return directory
