"""OpenAI cursors over the providers' own page tokens (Bedrock ``nextToken``, Vertex AI and Fireworks
``pageToken``, Mistral's ``page``).

OpenAI pages with ``after``: the id of the last item the client saw. A provider token only continues a
listing it handed out, so when a page is served, the provider's position after that page — a
:class:`Resume` — is kept in the database under the page's last id (``Store.save_cursor``), scoped to
the caller: provider, tunegate key, connection, host, credentials, options, listing and filters. The
next page, on any gateway instance sharing the database, is then one upstream call. Only a cursor never
served here (an id from elsewhere, an expired row, a token the provider refuses) falls back to re-listing
from the start, and that re-listing leaves a position behind for the page after it.

The position is saved under the last item the caller is *shown*: ``tunegate.api.common.visible`` drops
other keys' objects, and the SDK's next ``after`` is the last item left (see :meth:`Pending.commit`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from tunegate.errors import InvalidRequest, UpstreamError
from tunegate.providers.base import JSON

if TYPE_CHECKING:
    from tunegate.context import RequestContext

MAX_PAGES = 200  # upstream pages one request may read before giving up


@dataclass(frozen=True)
class Resume:
    """Where a listing continues: call with ``token`` (None: from the start). With ``skip``, the page read
    with ``token`` and ``size`` holds that item, and everything up to and including it is dropped — a page
    served from the middle of a provider page, or the re-listing that looks for a cursor. ``query`` holds
    parameters the token is bound to, sent again with it."""

    token: str | None = None
    size: int | None = None
    skip: str | None = None
    query: tuple[tuple[str, str], ...] = ()

    def dump(self) -> str:
        return orjson.dumps({"t": self.token, "n": self.size, "s": self.skip, "q": self.query}).decode()

    @classmethod
    def load(cls, raw: str) -> Resume | None:
        """A saved position; None for anything unreadable (it is then treated as never served)."""
        try:
            data = orjson.loads(raw)
            token, size, skip, query = data["t"], data["n"], data["s"], data["q"]
            pairs = tuple((str(k), str(v)) for k, v in query)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if not (token is None or isinstance(token, str)) or not (size is None or isinstance(size, int)):
            return None
        return cls(token, size, skip if isinstance(skip, str) else None, pairs)


# (token, page size, bound query) -> (items in the provider's order, the next token or None)
Fetch = Callable[[str | None, int, tuple[tuple[str, str], ...]], Awaitable[tuple[list[JSON], str | None]]]


class CursorNotFound(Exception):
    """The item a Resume skips to is not in the listing (any more)."""


class Stale(Exception):
    """A saved position the provider no longer honours as it was (raised by a fetch)."""


@dataclass
class Walk:
    items: list[JSON]
    more: bool
    resume: Resume | None  # where the page after ``items`` starts; None when nothing follows


async def walk(fetch: Fetch, start: Resume, limit: int, *, max_size: int, id_of: Callable[[JSON], str | None],
               keep: Callable[[JSON], bool] | None = None, fixed_size: int | None = None) -> Walk:
    """``limit`` items from ``start`` on. Each call asks for no more than the items still wanted, so a page
    ends where a provider page ends and the next one starts from the provider's token; only a provider page
    with more matches than wanted (a first page found by skipping) is cut, and its Resume re-reads it.
    ``fixed_size`` keeps one page size for the whole walk (page numbers mean nothing otherwise)."""
    items: list[JSON] = []
    token, skip = start.token, start.skip
    for _ in range(MAX_PAGES):
        if fixed_size is not None:
            size = fixed_size
        elif skip is not None:
            size = start.size or max_size
        else:
            size = max(1, min(max_size, limit - len(items)))
        batch, next_token = await fetch(token, size, start.query)
        if skip is not None:
            ids = [id_of(item) for item in batch]
            if skip in ids:
                batch, skip = batch[ids.index(skip) + 1:], None
            else:
                batch = []
        kept = [item for item in batch if keep is None or keep(item)]
        room = limit - len(items)
        if len(kept) > room:  # stopped inside this provider page: the next page re-reads it, skipping
            items += kept[:room]
            last = id_of(items[-1]) if items else None
            return Walk(items, True, Resume(token, size, last, start.query) if last else None)
        items += kept
        if not next_token:
            if skip is not None:
                raise CursorNotFound(skip)
            return Walk(items, False, None)
        token = next_token
        if skip is None and len(items) == limit:
            return Walk(items, True, Resume(token, fixed_size, None, start.query))
    if skip is not None:
        raise CursorNotFound(skip)
    raise UpstreamError(f"The provider's list did not end after {MAX_PAGES} pages.", status=502,
                        code="upstream_invalid_response")


def _scope(ctx: RequestContext, listing: str, filters: Mapping[str, Any]) -> JSON:
    """Everything that decides what a listing holds and who may see it. Taken before any upstream call:
    adapters add minted tokens and assumed-role keys to ``ctx.credentials`` as they go."""
    return {"provider": ctx.provider_name, "key": ctx.key_id, "connection": ctx.connection,
            "host": ctx.base_url_override, "credentials": dict(ctx.credentials), "options": dict(ctx.options),
            "listing": listing, "filters": dict(filters)}


@dataclass
class Cursors:
    """The saved positions of one listing, as one caller sees it."""

    ctx: RequestContext
    listing: str  # "jobs" | "files"
    filters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._base = _scope(self.ctx, self.listing, self.filters)

    def _key(self, after: str) -> bytes:
        return orjson.dumps({**self._base, "after": after}, option=orjson.OPT_SORT_KEYS, default=str)

    async def resume(self, after: str | None) -> Resume | None:
        """The position saved when a page ending at ``after`` was served to this caller, if any."""
        store = self.ctx.store
        if not after or store is None:
            return None
        raw = await store.cursor_token(self._key(after))
        return Resume.load(raw) if raw else None

    async def forget(self, after: str) -> None:
        if self.ctx.store is not None:
            await self.ctx.store.forget_cursor(self._key(after))

    def served(self, resume: Resume | None) -> None:
        """Keep ``resume`` for the page being answered; saved once the caller's view of it is known."""
        self.ctx.page_cursor = Pending(self, resume) if resume is not None else None

    async def save(self, after: str, resume: Resume) -> None:
        if self.ctx.store is not None:
            await self.ctx.store.save_cursor(self._key(after), self.ctx.provider_name, resume.dump())


@dataclass(frozen=True)
class Pending:
    cursors: Cursors
    resume: Resume

    async def commit(self, shown: list[JSON]) -> None:
        """Save the position under the last item shown. Items after it on this page were hidden from this
        caller, so continuing past them skips nothing the caller could see."""
        last = shown[-1].get("id") if shown else None
        if isinstance(last, str):
            await self.cursors.save(last, self.resume)


async def commit(ctx: RequestContext, shown: list[JSON]) -> None:
    """Called once a listing's visible items are known (``tunegate.api.common.visible``)."""
    pending, ctx.page_cursor = ctx.page_cursor, None
    if pending is not None:
        await pending.commit(shown)


async def resumed(cursors: Cursors, after: str | None, run: Callable[[Resume], Awaitable[Walk]],
                  fallback: Callable[[], Awaitable[Walk]]) -> Walk:
    """Serve a page from the saved position behind ``after``; re-list (``fallback``) when there is none, or
    when the provider refuses the token (an expired token is a 400 on every one of these providers) or the
    listing moved under it."""
    saved = await cursors.resume(after)
    if saved is not None:
        try:
            return await run(saved)
        except (Stale, CursorNotFound):
            pass
        except UpstreamError as exc:
            if exc.status != 400:
                raise
        assert after is not None
        await cursors.forget(after)
    return await fallback()


def not_found(after: str, kind: str) -> InvalidRequest:
    return InvalidRequest(f"'after' names no {kind} in this listing: '{after}'.", param="after",
                          code="invalid_cursor")
