"""OpenAI ``limit``/``after`` over Together's lists, which come back whole (no limit, no cursor).

The whole list is fetched, put in OpenAI's order, and sliced after the cursor's id. ``has_more`` is
true only when items remain past the page, and the page's last id fetches the next page on any
gateway instance (no cursor state is kept anywhere).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tunegate import models
from tunegate.providers.base import JSON

T = TypeVar("T")

# The number an event or checkpoint id carries, as tunegate writes it: ASCII digits only (str.isdigit also
# passes '²', which int() refuses, and '٣', which int() reads as 3), at most 18 of them.
CURSOR_NUMBER = re.compile(r"[0-9]{1,18}")


def cursor_number(text: str) -> int | None:
    """The number in a cursor's tail, or None when it is not one tunegate could have written."""
    return int(text) if CURSOR_NUMBER.fullmatch(text) else None


def after_index(ids: Sequence[str], after: str | None) -> int | None:
    """Where the page starts: 0 without a cursor, the slot after the cursor, None when the cursor
    is not in the list."""
    if not after:
        return 0
    try:
        return list(ids).index(after) + 1
    except ValueError:
        return None


def slice_page(items: Sequence[T], start: int, limit: int) -> tuple[list[T], bool]:
    rest = list(items[start:])
    return rest[:limit], len(rest) > limit


def envelope(items: Sequence[JSON], start: int, limit: int, *, with_ids: bool = False) -> JSON:
    page, more = slice_page(items, start, limit)
    return models.page(page, more, with_ids=with_ids)


def newest_first(items: list[T], key: Callable[[T], Any]) -> list[T]:
    return sorted(items, key=key, reverse=True)
