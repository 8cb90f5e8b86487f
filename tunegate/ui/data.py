"""What the dashboard shows, and where it comes from.

* Lists (jobs, files across providers) come from the registry: the latest snapshot of every object
  seen through the gateway, filtered to what the viewer's key may see (its own objects and unowned
  ones — the same rule as the API).
* A job's page refreshes the job and reads its events and checkpoints *through the provider adapter*,
  with a context resolved exactly as for an API request made with the viewer's key (so the recorded
  provider and connection, grants and ownership all apply). If the provider cannot be reached — e.g.
  an open gateway whose job was created with a client's own provider key, which the gateway never
  stores — the page shows the registry snapshot and says why the live parts are missing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from tunegate.api.common import Services, remember, unclaimed_result
from tunegate.context import RequestContext, new_trace_id
from tunegate.errors import APIError
from tunegate.providers import canonical_name
from tunegate.providers.base import Page
from tunegate.store import ApiKey
from tunegate.store.schema import objects
from tunegate.ui.evals import runs_for as eval_runs
from tunegate.ui.loss import loss_points

MAX_ROWS = 500
MAX_EVENTS = 5000
JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")


@dataclass
class Viewer:
    """Who is looking: a tunegate key, or nobody on an open gateway."""

    key: ApiKey | None
    full_key: str | None = None

    def headers(self) -> dict[str, str]:
        return {"x-portkey-api-key": self.full_key} if self.full_key else {}


@dataclass
class JobFilters:
    provider: str | None = None
    status: str | None = None
    model: str | None = None
    since: str | None = None  # YYYY-MM-DD, inclusive
    until: str | None = None  # YYYY-MM-DD, inclusive

    @classmethod
    def from_query(cls, query: Any) -> JobFilters:
        return cls(**{name: (query.get(name) or "").strip() or None for name in ("provider", "status", "model",
                                                                                 "since", "until")})

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


def _day(text: str | None, end: bool = False) -> int | None:
    if not text:
        return None
    try:
        day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC)
        # The day after 9999-12-31 is past datetime's range (OverflowError): ignored like a malformed date.
        return int((day + dt.timedelta(days=1 if end else 0)).timestamp())
    except (ValueError, OverflowError):
        return None


def _visible(query: sa.Select[Any], viewer: Viewer) -> sa.Select[Any]:
    """The API's ownership rule (``context.reachable`` and the grant check, docs/security.md rule 4) as a
    query: a key sees its own objects (of a connection it is still granted, or of none) and unowned ones
    of a connection it is granted. Unowned objects of no connection (the open era) need a provider key
    of the caller's own, which the dashboard never has: they are not shown to a key."""
    key = viewer.key
    if key is None:
        return query
    connection = objects.c.connection
    granted: Any = sa.true() if "*" in key.connections else connection.in_([str(c) for c in key.connections])
    own = sa.and_(objects.c.key_id == key.id, sa.or_(connection.is_(None), granted))
    unowned = sa.and_(objects.c.key_id.is_(None), connection.is_not(None), granted)
    return query.where(sa.or_(own, unowned))


def _shown(viewer: Viewer, row: dict[str, Any]) -> bool:
    """A job's result file not yet tied to its job (so to no owner) is shown to no key (rule 4)."""
    return viewer.key is None or row["key_id"] is not None or not unclaimed_result(row["snapshot"])


def _row(r: Any) -> dict[str, Any]:
    snap = r["snapshot"] if isinstance(r["snapshot"], dict) else {}
    return {"id": r["id"], "provider": r["provider"], "connection": r["connection"], "status": r["status"],
            "key_id": r["key_id"],
            "created_at": snap.get("created_at") or r["created_at"], "updated_at": r["updated_at"],
            "snapshot": snap}


async def list_jobs(services: Services, viewer: Viewer, filters: JobFilters) -> list[dict[str, Any]]:
    query = _visible(sa.select(objects).where(objects.c.kind == "job"), viewer)
    if filters.provider:  # ?provider=together finds the together-ai jobs: the registry stores canonical names
        query = query.where(objects.c.provider == canonical_name(filters.provider))
    if filters.status:
        query = query.where(objects.c.status == filters.status)
    query = query.order_by(objects.c.created_at.desc(), objects.c.id.desc()).limit(MAX_ROWS * 4)
    async with services.store.engine.connect() as conn:
        rows = [_row(r) for r in (await conn.execute(query)).mappings()]
    since, until = _day(filters.since), _day(filters.until, end=True)
    model = (filters.model or "").lower()
    out = []
    for row in rows:
        snap = row["snapshot"]
        if model and model not in str(snap.get("model") or "").lower() \
                and model not in str(snap.get("fine_tuned_model") or "").lower():
            continue
        created = row["created_at"] if isinstance(row["created_at"], int) else 0
        if (since is not None and created < since) or (until is not None and created >= until):
            continue
        out.append({**row, "model": snap.get("model"), "fine_tuned_model": snap.get("fine_tuned_model"),
                    "finished_at": snap.get("finished_at")})
    out.sort(key=lambda r: (r["created_at"] or 0, r["id"]), reverse=True)
    return out[:MAX_ROWS]


async def providers_seen(services: Services, viewer: Viewer, kind: str = "job") -> list[str]:
    query = _visible(sa.select(objects.c.provider).where(objects.c.kind == kind).distinct(), viewer)
    async with services.store.engine.connect() as conn:
        return sorted(str(r[0]) for r in await conn.execute(query))


async def registry_object(services: Services, viewer: Viewer, kind: str, object_id: str) -> dict[str, Any] | None:
    query = _visible(sa.select(objects).where(objects.c.kind == kind, objects.c.id == object_id), viewer)
    async with services.store.engine.connect() as conn:
        row = (await conn.execute(query)).mappings().first()
    found = _row(row) if row is not None else None
    return found if found is not None and _shown(viewer, found) else None


async def list_files(services: Services, viewer: Viewer, provider: str | None = None) -> list[dict[str, Any]]:
    query = _visible(sa.select(objects).where(objects.c.kind == "file"), viewer)
    if provider:
        query = query.where(objects.c.provider == canonical_name(provider))
    query = query.order_by(objects.c.created_at.desc(), objects.c.id.desc()).limit(MAX_ROWS)
    async with services.store.engine.connect() as conn:
        rows = [row for row in (_row(r) for r in (await conn.execute(query)).mappings()) if _shown(viewer, row)]
    for row in rows:
        managed = await services.store.get_managed_file(row["id"]) if row["provider"] == "tunegate" else None
        report = (managed or {}).get("report") or _REPORTS.get(row["id"])
        row["report"] = report if isinstance(report, dict) else None
    return rows


# ---- live data through the provider adapter ------------------------------------------------------


@dataclass
class JobDetail:
    job: dict[str, Any]
    provider: str
    connection: str | None
    events: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    loss: list[dict[str, Any]] = field(default_factory=list)
    live_error: str | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)  # `tunegate eval` runs naming the tuned model


async def _context(services: Services, viewer: Viewer, ref: tuple[str, str]) -> RequestContext:
    return await services.resolver.resolve(viewer.headers(), new_trace_id(), ref)


async def _all_pages(fetch: Any, limit: int, cap: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = None
    while len(items) < cap:
        listing = await fetch(Page(limit=limit, after=after))
        data = [d for d in listing.get("data", []) if isinstance(d, dict)]
        items.extend(data)
        if not listing.get("has_more") or not data or not isinstance(data[-1].get("id"), str):
            break
        after = data[-1]["id"]
    return items[:cap]


async def job_detail(services: Services, viewer: Viewer, job_id: str) -> JobDetail | None:
    recorded = await registry_object(services, viewer, "job", job_id)
    if recorded is None:
        return None
    detail = JobDetail(job=recorded["snapshot"] or {"id": job_id, "status": recorded["status"]},
                       provider=recorded["provider"], connection=recorded["connection"])
    try:
        ctx = await _context(services, viewer, ("job", job_id))
        detail.job = await ctx.provider.retrieve_job(ctx, job_id)
        await remember(ctx, "job", detail.job)
        detail.events = await _all_pages(lambda p: ctx.provider.list_events(ctx, job_id, p), 100, MAX_EVENTS)
        try:
            detail.checkpoints = await _all_pages(lambda p: ctx.provider.list_checkpoints(ctx, job_id, p), 100, 200)
        except APIError as exc:
            if exc.status not in (400, 404):  # providers without checkpoints answer 400 (not supported)
                raise
    except APIError as exc:
        detail.live_error = f"{exc.status}: {exc.message}"
    detail.loss = loss_points(detail.events, detail.checkpoints)
    detail.evals = await asyncio.to_thread(eval_runs, services.settings.data_dir, detail.job.get("fine_tuned_model"))
    return detail


# ---- file validation reports ---------------------------------------------------------------------

_REPORTS: OrderedDict[str, dict[str, Any]] = OrderedDict()  # reports made on demand, newest last


async def validate_file(services: Services, viewer: Viewer, file_id: str, method: str = "supervised") -> dict[str, Any]:
    """Stream a file's content through the validator (through the provider adapter, or from the
    managed store) and keep the report for the files page."""
    from tunegate.data.validator import Validator

    ctx = await _context(services, viewer, ("file", file_id))
    download = await ctx.provider.file_content(ctx, file_id)
    validator = Validator(method=method, model=None, max_bytes=services.settings.max_upload_bytes)
    try:
        async for chunk in download.chunks:
            validator.feed(chunk)
            if validator.too_large:
                break
    finally:
        close = getattr(download.chunks, "aclose", None)
        if close is not None:
            await close()
    report = validator.finish().to_dict()
    _REPORTS[file_id] = report
    _REPORTS.move_to_end(file_id)
    while len(_REPORTS) > 256:
        _REPORTS.popitem(last=False)
    return report


async def stored_report(services: Services, file_id: str) -> dict[str, Any] | None:
    managed = await services.store.get_managed_file(file_id)
    report = (managed or {}).get("report") or _REPORTS.get(file_id)
    return report if isinstance(report, dict) else None
