"""OpenAI cursors (``limit`` + ``after=<last id>``) over Mistral's page numbers (``page`` + ``page_size``).

Mistral lists newest first and numbers pages from 0. A cursor is the id of the last item the client
saw, so the next page is found by *re-listing*: pages are read in order until the ``after`` id turns
up, and the items that follow it are returned. Nothing is kept between requests (any gateway process
can serve any page), inserts at the head of the list do not shift the cursor, and an item seen twice
across a page boundary is skipped. The cost is one upstream request per ``max_page_size`` items that
lie before the cursor. ``has_more`` is true only when an item after the returned ones was seen (or
Mistral's ``total`` says one exists).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tunegate.errors import InvalidRequest, UpstreamError
from tunegate.providers.base import JSON, Page

Fetch = Callable[[int, int], Awaitable[JSON]]  # (page number, page size) -> Mistral's list object

MAX_PAGES = 1000  # a provider that ignores `page` must not keep the gateway busy forever


async def scan(fetch: Fetch, page: Page, *, kind: str, max_page_size: int) -> tuple[list[JSON], bool]:
    """The ``page.limit`` items after ``page.after`` (or from the head), and whether more follow."""
    limit = page.limit
    after = page.after
    # Without a cursor one request of limit+1 items answers the page and has_more at once.
    size = max_page_size if after else max(1, min(limit + 1, max_page_size))
    found = after is None
    out: list[JSON] = []
    seen: set[str] = set()
    scanned = 0
    for number in range(MAX_PAGES):
        raw = await fetch(number, size)
        data = raw.get("data") if isinstance(raw, dict) else None
        if not isinstance(data, list):
            raise UpstreamError("Mistral answered a list request without a 'data' array.", status=502,
                                code="upstream_invalid_response")
        total = raw.get("total")
        scanned += len(data)
        for item in data:
            item_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(item_id, str) or item_id in seen:
                continue
            seen.add(item_id)
            if not found:
                found = item_id == after
                continue
            if len(out) >= limit:
                return out, True
            out.append(item)
        if not isinstance(total, int) or isinstance(total, bool):
            total = None
        if not data or (total is not None and scanned >= total) or (total is None and len(data) < size):
            break
    else:
        raise UpstreamError(f"Mistral's {kind} list did not end after {MAX_PAGES} pages.", status=502,
                            code="upstream_invalid_response")
    if not found:
        raise InvalidRequest(f"'after' names no {kind} in this listing: '{after}'.", param="after",
                             code="invalid_cursor")
    return out, False


def slice_after(items: list[JSON], page: Page, kind: str) -> tuple[list[JSON], bool]:
    """The same cursor semantics over a list already in memory (events, checkpoints)."""
    start = 0
    if page.after:
        ids = [i["id"] for i in items]
        if page.after not in ids:
            raise InvalidRequest(f"'after' names no {kind} of this job: '{page.after}'.", param="after",
                                 code="invalid_cursor")
        start = ids.index(page.after) + 1
    rest = items[start:]
    return rest[:page.limit], len(rest) > page.limit
