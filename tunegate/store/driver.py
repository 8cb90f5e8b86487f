"""The registry's hot statements as driver SQL, inside a transaction SQLAlchemy holds.

Every created job runs the same three statements in its write transaction (the object's upsert, the
outbox's transition mark, the lookup of the owner's webhook endpoints). Through SQLAlchemy Core each cost
~60-90 µs of CPU on this 2-core machine (text clause compile-cache lookup, bind and result processing,
the execution context); the whole transaction on the ``sqlite3`` driver alone costs ~35 µs
(bench/store_write.py). So these statements are written once, with ``?`` marks, and run:

- on SQLite's writer thread, on the ``sqlite3`` connection beneath SQLAlchemy's (the same transaction:
  the writer begins and commits on that connection);
- elsewhere (PostgreSQL in ``run_sync``, an in-memory SQLite on aiosqlite) as ``exec_driver_sql``: no
  compile, and still SQLAlchemy's error wrapping, so a dead PostgreSQL connection is handled as for any
  other statement.

Values go in as the driver takes them (JSON as text, serialised here) and rows come back as tuples, JSON
columns as text where the driver leaves them so (SQLite; PostgreSQL's pass-through JSON codec).
"""

from __future__ import annotations

import sqlite3
from functools import lru_cache
from typing import Any

import orjson
import sqlalchemy as sa


def rows(conn: sa.Connection, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Run one ``?``-marked statement on the connection's transaction; its rows as tuples (none for a
    statement that returns none)."""
    raw = conn.connection.dbapi_connection
    if isinstance(raw, sqlite3.Connection):
        return raw.execute(sql, params).fetchall()
    result = conn.exec_driver_sql(_marked(conn, sql), params)
    return [tuple(r) for r in result] if result.returns_rows else []


def execute_many(conn: sa.Connection, sql: str, params: list[tuple[Any, ...]]) -> None:
    """Run one ``?``-marked statement once per parameter tuple, in the connection's transaction."""
    raw = conn.connection.dbapi_connection
    if isinstance(raw, sqlite3.Connection):
        raw.executemany(sql, params)
    else:
        conn.exec_driver_sql(_marked(conn, sql), params)


def _marked(conn: sa.Connection, sql: str) -> str:
    """The statement with the marks the connection's driver takes (aiosqlite ``?``, asyncpg ``$n``)."""
    return sql if conn.dialect.paramstyle == "qmark" else numbered(sql)


def as_store_error(exc: Exception) -> Exception:
    """A ``sqlite3`` error as the SQLAlchemy error the same statement would raise through the engine
    (``OperationalError`` for a locked database, ``IntegrityError`` …); any other exception unchanged."""
    if isinstance(exc, sqlite3.Error):
        return sa.exc.DBAPIError.instance(None, None, exc, sqlite3.Error)
    return exc


@lru_cache(maxsize=64)  # a fixed set of statements
def numbered(sql: str) -> str:
    """``?`` marks as asyncpg's ``$1, $2 …`` (the statements here hold no literal question mark)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))


def json_text(value: Any) -> str:
    """A JSON column's value as SQLAlchemy's JSON type writes it (``None`` is JSON ``null``)."""
    return orjson.dumps(value).decode()


def from_json(value: Any) -> Any:
    """A JSON column read as driver SQL: text on SQLite and through PostgreSQL's pass-through codec."""
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value
