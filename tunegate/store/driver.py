"""The registry's hot statements as driver SQL, and the transaction they run in.

Every created job runs the same few statements in its write transaction (the object's upsert, the
outbox's transition mark, sometimes the owner's webhook endpoints). Through SQLAlchemy Core each cost
~60-90 µs of CPU on this 2-core machine (text clause compile-cache lookup, bind and result processing,
the execution context); the whole transaction on the ``sqlite3`` driver alone costs ~35 µs
(bench/store_write.py). So these statements are written once, with ``?`` marks, and a write's work (the
store's own statements and its hooks, the webhook outbox) is a plain function of a :class:`Tx`:

- :class:`SQLiteTx`: SQLite's writer thread, on its ``sqlite3`` connection (store/writer.py);
- ``AsyncpgTx``: PostgreSQL, on the registry's asyncpg pool (store/postgres.py).

Values go in as the driver takes them (JSON as text, serialised here) and rows come back as tuples, JSON
columns as text where the driver leaves them so (SQLite; asyncpg's default JSON codec).
"""

from __future__ import annotations

import sqlite3
from functools import lru_cache
from typing import Any, Protocol

import orjson
import sqlalchemy as sa


class Tx(Protocol):
    """An open write transaction, seen from sync code."""

    def rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run one ``?``-marked statement; its rows as tuples (none for a statement that returns none)."""
        ...

    def execute_many(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        """Run one ``?``-marked statement once per parameter tuple."""
        ...


class SQLiteTx:
    def __init__(self, raw: sqlite3.Connection) -> None:
        self._raw = raw

    def rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._raw.execute(sql, params).fetchall()

    def execute_many(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        self._raw.executemany(sql, params)


def as_store_error(exc: Exception) -> Exception:
    """A ``sqlite3`` error as the SQLAlchemy error the same statement would raise through the engine
    (``OperationalError`` for a locked database, ``IntegrityError`` …); any other exception unchanged."""
    if isinstance(exc, sqlite3.Error):
        return sa.exc.DBAPIError.instance(None, None, exc, sqlite3.Error)
    return exc


@lru_cache(maxsize=256)  # a fixed set of statements (and IN lists of a page's length)
def numbered(sql: str) -> str:
    """``?`` marks as asyncpg's ``$1, $2 …`` (the statements here hold no literal question mark)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))


def json_text(value: Any) -> str:
    """A JSON column's value as SQLAlchemy's JSON type writes it (``None`` is JSON ``null``)."""
    return orjson.dumps(value).decode()


def from_json(value: Any) -> Any:
    """A JSON column read as driver SQL: text on SQLite and through asyncpg's default JSON codec."""
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value
