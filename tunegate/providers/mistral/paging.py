"""OpenAI cursors (``limit`` + ``after=<last id>``) over Mistral's page numbers (``page`` + ``page_size``).

Mistral lists newest first and numbers pages from 0 (mistral-openapi.yaml: ``page`` default 0,
``page_size`` default 100, answers carry ``total``; the SDK, mistralai, sends the same). A page number
is a position: when a page is served, the next page number, its size, and the ``total`` seen are saved
for the page's last id (``tunegate.providers.paging``), so the next page is one request, on any gateway
instance. A changed ``total`` means jobs or files were added or removed and page numbers moved: the saved
position is then dropped, as is any for a cursor never served here, and the cursor is found by
*re-listing*: pages read in order until the ``after`` id turns up (one request per ``max_page_size``
items before it). ``has_more`` follows Mistral's ``total``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from tunegate.errors import InvalidRequest, UpstreamError
from tunegate.providers import paging
from tunegate.providers.base import JSON, Page

Fetch = Callable[[int, int], Awaitable[JSON]]  # (page number, page size) -> Mistral's list object


@dataclasses.dataclass
class _Pages:
    """The listing as page numbers. ``size`` is what a page holds: the page_size asked for, unless the server
    answers page 0 with fewer while its total says more exist (it caps page_size, and numbers pages by its cap)."""

    fetch: Fetch
    kind: str
    total: int | None = None
    size: int | None = None

    async def __call__(self, token: str | None, asked: int, bound: tuple[tuple[str, str], ...]
                       ) -> tuple[list[JSON], str | None]:
        number = int(token or 0)
        raw = await self.fetch(number, asked)
        data = raw.get("data") if isinstance(raw, dict) else None
        if not isinstance(data, list):
            raise UpstreamError(f"Mistral answered a {self.kind} list request without a 'data' array.", status=502,
                                code="upstream_invalid_response")
        total = raw.get("total")
        total = total if isinstance(total, int) and not isinstance(total, bool) else None
        saved = dict(bound)
        if "total" in saved and str(total) != saved["total"]:
            raise paging.Stale()  # the list changed since the position was saved: page numbers moved
        self.total = total
        if self.size is None:
            self.size = int(saved["size"]) if "size" in saved else (
                len(data) if total is not None and 0 < len(data) < min(asked, total) else asked)
        more = (number + 1) * self.size < total if total is not None else len(data) >= self.size
        return [i for i in data if isinstance(i, dict)], str(number + 1) if data and more else None

    def bound(self) -> tuple[tuple[str, str], ...]:
        return (("size", str(self.size)), ("total", str(self.total)))


async def scan(fetch: Fetch, page: Page, *, kind: str, max_page_size: int,
               cursors: paging.Cursors | None = None) -> tuple[list[JSON], bool]:
    """The ``page.limit`` items after ``page.after`` (or from the head), and whether more follow; the
    position after them is handed to ``cursors`` (saved once the caller's view is known)."""
    pages = _Pages(fetch, kind)
    first = max(1, min(page.limit, max_page_size))

    async def run(start: paging.Resume) -> paging.Walk:
        nonlocal pages
        pages = _Pages(fetch, kind)
        return await paging.walk(pages, start, page.limit, max_size=max_page_size, id_of=lambda i: i.get("id"),
                                 fixed_size=start.size)

    async def relist() -> paging.Walk:
        try:
            if page.after:
                return await run(paging.Resume("0", max_page_size, page.after))
            return await run(paging.Resume("0", first))
        except paging.CursorNotFound:
            raise paging.not_found(page.after or "", kind) from None

    walked = await (paging.resumed(cursors, page.after, run, relist) if cursors else relist())
    if cursors is not None:
        resume = walked.resume
        cursors.served(dataclasses.replace(resume, query=pages.bound()) if resume else None)
    return walked.items, walked.more


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
