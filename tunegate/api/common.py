"""What every route shares: resolving the context, reading bodies and pages, answering JSON,
and keeping the registry up to date (with per-key visibility)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tunegate.config import Settings
from tunegate.context import ContextResolver, RequestContext
from tunegate.errors import InvalidRequest, PayloadTooLarge
from tunegate.files import FileStore
from tunegate.limits import UploadSlots
from tunegate.providers import paging
from tunegate.providers.base import JSON, Page
from tunegate.store import Store
from tunegate.upstream import Upstream

T = TypeVar("T")


@dataclass
class Services:
    """Process-wide parts, built in the app's lifespan."""

    settings: Settings
    store: Store
    upstream: Upstream
    resolver: ContextResolver
    files: FileStore
    uploads: UploadSlots = field(default_factory=UploadSlots)


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def first_headers(request: Request) -> dict[str, str]:
    """The request's headers as a plain dict, decoded once: a repeated name counts by its first value, as
    Starlette's ``Headers.get`` has it, for every header alike (the provider, the key and the options).
    The context reads a dozen headers per request; each ``Headers.get`` is a scan of the raw list."""
    headers: dict[str, str] = {}
    for name, value in request.scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


async def context(request: Request, ref: tuple[str, str] | None = None,
                  default_provider: str | None = None,
                  before_refusal: Callable[[], Awaitable[None]] | None = None) -> RequestContext:
    ctx = await services(request).resolver.resolve(first_headers(request), request.scope["tunegate.trace_id"],
                                                   ref, default_provider, before_refusal)
    request.scope["tunegate.ctx"] = ctx
    return ctx


async def context_and_input(request: Request, ref: tuple[str, str], read_input: Callable[[], Awaitable[T]],
                            discard: Callable[[T], Awaitable[None]] | None = None) -> tuple[RequestContext, T]:
    """The context of a request on the object ``ref`` names, and what the route reads of its query or body
    (``read_input``, which raises the route's 400s). The input is read after every check an unknown id
    goes through, and, for another key's object, before its refusal: so a bad query or body is the same
    400 for another key's object as for an id that exists nowhere, and the body is read in both cases.
    (Read after the refusal, the 400 and the 404 told the two apart.) ``discard`` disposes of input read
    only to be refused (a form's file part: drained, then closed)."""

    async def before_refusal() -> None:
        value = await read_input()
        if discard is not None:
            await discard(value)

    ctx = await context(request, ref, before_refusal=before_refusal)
    return ctx, await read_input()


def respond(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


async def json_body(request: Request, *, optional: bool = False) -> JSON:
    """The request's JSON object. Invalid JSON or a non-object body is a 400, never a 500."""
    limit = services(request).settings.max_json_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:  # '²'.isdigit() too
        raise PayloadTooLarge(f"The JSON body is larger than {limit} bytes.")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The JSON body is larger than {limit} bytes.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        if optional:
            return {}
        raise InvalidRequest("The request needs a JSON body.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The body is not valid JSON: {exc.msg}.", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The JSON body must be an object.", code="invalid_json")
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and _depth(body) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json")
    return body


# orjson reads 1,024 levels but writes only 254 (a TypeError, a 500 on the way upstream); no API
# field nests more than a few.
MAX_JSON_DEPTH = 64


def _depth(value: Any, level: int = 1) -> int:
    """How deep ``value`` nests, counted only as far as one past MAX_JSON_DEPTH."""
    if level > MAX_JSON_DEPTH or not isinstance(value, dict | list):
        return level - 1 if not isinstance(value, dict | list) else level
    children = value.values() if isinstance(value, dict) else value
    return max((_depth(child, level + 1) for child in children), default=level)


MAX_PAGE_LIMIT = 10_000  # the largest page any provider serves (OpenAI's file list)


def _query_pairs(query_string: bytes) -> tuple[tuple[str, str], ...]:
    """The query string's pairs the way Starlette's QueryParams parses them (latin-1, blanks kept). The
    few short ones that repeat on every list ("limit=20") are parsed once: 512 of at most 256 bytes."""
    return _short_query_pairs(query_string) if len(query_string) <= 256 else _parse_query(query_string)


def _parse_query(query_string: bytes) -> tuple[tuple[str, str], ...]:
    return tuple(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))


_short_query_pairs = functools.lru_cache(maxsize=512)(_parse_query)


def page(request: Request, default_limit: int, *extra: str) -> Page:
    """OpenAI pagination from the query string: ``limit``, ``after``, ``metadata[k]=v`` and the named
    extras. ``limit=0`` is allowed (the spec sets no minimum and the SDK's own tests send it)."""
    pairs = _query_pairs(request.scope.get("query_string", b""))
    query = dict(pairs)  # the last of a repeated name, as Starlette's QueryParams.get
    raw_limit = query.get("limit")
    limit = default_limit
    if raw_limit is not None and raw_limit != "":
        try:
            limit = int(raw_limit)
        except ValueError:
            raise InvalidRequest("'limit' must be an integer.", param="limit", code="invalid_limit") from None
        if not 0 <= limit <= MAX_PAGE_LIMIT:
            raise InvalidRequest(f"'limit' must be from 0 to {MAX_PAGE_LIMIT}.", param="limit", code="invalid_limit")
    after = query.get("after") or None
    if after is not None and len(after) > 512:
        raise InvalidRequest("'after' is longer than any id.", param="after", code="invalid_cursor")
    if after is not None and not after.isprintable():
        # No id holds a control character, and PostgreSQL refuses a NUL in any text it is sent (a 500).
        raise InvalidRequest("'after' is not an id (it holds a control character).", param="after",
                             code="invalid_cursor")
    found: dict[str, Any] = {name: query[name] for name in extra if query.get(name)}
    metadata = {k[len("metadata["):-1]: v for k, v in pairs
                if k.startswith("metadata[") and k.endswith("]")}
    for name, value in [*found.items(), *(("metadata[" + k + "]", f"{k}{v}") for k, v in metadata.items())]:
        if isinstance(value, str) and not value.isprintable():
            raise InvalidRequest(f"'{name[:80]}' holds a control character.", param=name[:80],
                                 code="invalid_value")
    if metadata:
        found["metadata"] = metadata
    return Page(limit=limit, after=after, extra=found)


async def remember(ctx: RequestContext, kind: str, obj: JSON, *, created: bool = False) -> None:
    """Record an object the provider answered with (synchronously: ownership must hold at once). Only
    an object this request ``created`` becomes the key's; one merely seen stays unowned (it was made
    elsewhere). A job's result files belong to the job's owner, so another key cannot download them."""
    if ctx.store and isinstance(obj.get("id"), str):
        await ctx.store.record(kind, obj["id"], ctx.provider_name, ctx.connection, ctx.key_id,
                               _listed_status(obj), obj, claim=created)
        if kind == "job":
            await remember_models(ctx, [obj])
        results = [f for f in obj.get("result_files") or [] if isinstance(f, str)] if kind == "job" else []
        if results:
            owners = await ctx.store.owners("job", [obj["id"]])
            if obj["id"] not in owners or owners[obj["id"]] not in (None, ctx.key_id):
                return  # not a job this key may speak for
            known = await ctx.store.owners("file", results)
            await ctx.store.record_many("file", [(f, None, None) for f in results if f not in known],
                                        ctx.provider_name, ctx.connection, owners[obj["id"]])


async def remember_models(ctx: RequestContext, jobs: list[JSON]) -> None:
    """A job's ``fine_tuned_model`` joins the registry with the job's owner, provider and connection, so
    a chat request naming it needs no provider header and another key cannot call it."""
    assert ctx.store is not None
    named = {j["model_name"]: j for j in (_tuned(job) for job in jobs) if j is not None}
    if not named:
        return
    known = await ctx.store.owners("model", list(named))
    fresh = {name: j for name, j in named.items() if name not in known}
    if not fresh:
        return
    job_owners = await ctx.store.owners("job", [j["job"] for j in fresh.values()])
    by_owner: dict[str | None, list[tuple[str, str | None, JSON | None]]] = {}
    for name, j in fresh.items():
        if j["job"] not in job_owners:
            continue  # a job the registry has not recorded (yet) gives no owner to go by
        by_owner.setdefault(job_owners[j["job"]], []).append((name, "available", j))
    for owner, items in by_owner.items():
        await ctx.store.record_many("model", items, ctx.provider_name, ctx.connection, owner)


def _tuned(job: JSON) -> JSON | None:
    name = job.get("fine_tuned_model")
    if not isinstance(name, str) or not name or not isinstance(job.get("id"), str) or len(name) > 512:
        return None
    return {"model_name": name, "job": job["id"], "base_model": job.get("model"),
            "created": job.get("finished_at") or job.get("created_at")}


# Result files are named only in their job; listed or fetched before the job was seen here, they would
# go to whichever key asked first. They are shown once their job has given them an owner.
_RESULT_PURPOSES = {"fine-tune-results"}


# The registry's column widths (store/schema.py `objects`): an upstream's listing is not trusted to fit.
_MAX_OBJECT_ID = 512
_MAX_STATUS = 32


def _listed_status(obj: JSON) -> str | None:
    """A listed object's status as the registry can keep it: an upstream's object or over-long text
    would fail the whole page's write (a 500), so it is recorded as unknown instead."""
    status = obj.get("status")
    return status if isinstance(status, str) and len(status) <= _MAX_STATUS else None


async def visible(ctx: RequestContext, kind: str, listing: JSON) -> JSON:
    """Drop the objects another key owns, and record the ones seen for the first time — unowned: the
    first key to list an object does not become its owner (docs/security.md). Items without an id the
    registry can hold (a string of at most 512 characters) are neither recorded nor shown to a key."""
    data = listing.get("data")
    items = [o for o in data if isinstance(o, dict) and isinstance(o.get("id"), str)
             and 0 < len(o["id"]) <= _MAX_OBJECT_ID] if isinstance(data, list) else []
    if ctx.store is None or not items:
        return listing
    owners = await ctx.store.owners(kind, [o["id"] for o in items])
    if ctx.key is not None:
        listing = {**listing, "data": [o for o in items if owners.get(o["id"]) in (None, ctx.key.id)
                                       and not (o["id"] not in owners and unclaimed_result(o))]}
    unseen = [(o["id"], _listed_status(o), o) for o in items if o["id"] not in owners and not unclaimed_result(o)]
    await ctx.store.record_many(kind, unseen, ctx.provider_name, ctx.connection, None)
    if kind == "job":
        await remember_models(ctx, listing["data"])
    await paging.commit(ctx, listing["data"])  # the provider's next token, under the last item shown
    return listing


def unclaimed_result(obj: JSON) -> bool:
    """A result file the registry has not yet tied to its job (and so to an owner)."""
    purpose = obj.get("purpose")  # an upstream's list or object here is unhashable: no set lookup
    return isinstance(purpose, str) and purpose in _RESULT_PURPOSES
