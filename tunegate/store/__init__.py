"""Storage: keys, connections, the object registry, the request log and idempotency records.

SQLAlchemy 2 async Core over SQLite (default) or PostgreSQL. Small methods, one per question the
gateway asks; nothing here knows what a provider does beyond its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tunegate.store import driver, migrate
from tunegate.store.driver import Tx
from tunegate.store.reader import SQLiteReader
from tunegate.store.schema import (
    api_keys,
    connections,
    file_copies,
    idempotency,
    managed_files,
    objects,
    page_cursors,
    request_log,
)
from tunegate.store.secretbox import SecretBox, new_key, secret_matches, split_key
from tunegate.store.writer import SQLiteWriter

if TYPE_CHECKING:
    from tunegate.store.postgres import RegistryPool

__all__ = ["ApiKey", "Connection", "StatusChange", "StatusHook", "Store", "StoredObject", "Tx"]

# The registry's upsert, one text for SQLite (3.35+) and PostgreSQL, run as driver SQL (store/driver.py:
# SQLAlchemy's dialect insert() constructs are never cached, a text() clause still costs its bind and
# result processing on every created job). A sighting refreshes status and snapshot only where the writer
# may: the same provider and connection, and an object that is unowned or the writer's own (the last
# mark). Without the guard, an upstream a caller chose could answer with another key's id and rewrite what
# that key's dashboard shows.
_UPSERT_OBJECT = (
    "INSERT INTO objects (kind, id, provider, connection, key_id, status, snapshot, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (kind, id) DO UPDATE SET status = excluded.status, snapshot = excluded.snapshot, "
    "updated_at = excluded.updated_at "
    "WHERE objects.provider = excluded.provider "
    "AND COALESCE(objects.connection, '') = COALESCE(excluded.connection, '') "
    "AND (objects.key_id IS NULL OR objects.key_id = ?)")
_UPSERT_OBJECT_RETURNING = _UPSERT_OBJECT + " RETURNING provider, connection, key_id"
_LOG_COLUMNS = tuple(c.name for c in request_log.columns if c.name != "id")
_INSERT_LOG = (f"INSERT INTO request_log ({', '.join(_LOG_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(_LOG_COLUMNS))})")
_UPSERT_CURSOR = sa.text(
    "INSERT INTO page_cursors (cursor_key, provider, token, created_at, expires_at) "
    "VALUES (:cursor_key, :provider, :token, :created_at, :expires_at) "
    "ON CONFLICT (cursor_key) DO UPDATE SET token = excluded.token, created_at = excluded.created_at, "
    "expires_at = excluded.expires_at")


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    connections: list[str]
    allow_provider_keys: bool
    rate_limit_per_min: int | None
    created_at: int
    revoked_at: int | None

    def may_use(self, connection: str) -> bool:
        return "*" in self.connections or connection in self.connections


@dataclass(frozen=True)
class Connection:
    name: str
    provider: str
    base_url: str | None
    secrets: dict[str, str]
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredObject:
    kind: str
    id: str
    provider: str
    connection: str | None
    key_id: str | None
    status: str | None
    snapshot: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A status the registry has just written for an object (as stored: provider, connection, owner)."""

    kind: str
    id: str
    provider: str
    connection: str | None
    key_id: str | None
    status: str
    snapshot: dict[str, Any] | None


# Called inside the transaction that wrote the statuses, so what a hook writes (the webhook outbox)
# commits or rolls back with the status change itself. A plain function of the sync transaction
# (store/driver.py): on SQLite it runs on the writer thread with the rest of the transaction (one hop for
# the lot, store/writer.py), on PostgreSQL in a greenlet on the registry's pool (store/postgres.py). It
# must not touch the event loop directly.
StatusHook = Callable[[Tx, list[StatusChange]], None]
# Whether a hook may write anything for a change to this status of an object at this provider and connection
# (``Store.on_status``'s ``writes_for``). A ``record`` whose hooks would all write nothing is one statement.
HookWrites = Callable[[str, str, str | None], bool]


T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


def _now() -> int:
    return int(time.time())


class Store:
    KEY_CACHE_SECONDS = 1.0  # a revoked key stops working within this long, in every process

    def __init__(self, database_url: str, box: SecretBox, pool_size: int = 20) -> None:
        if not (database_url.startswith("postgresql+asyncpg://") or _sqlite_file(database_url)):
            # An in-memory SQLite is one database per connection: it cannot hold a registry. PostgreSQL's
            # registry pool is asyncpg's (store/postgres.py), whatever driver another URL would name.
            raise ValueError("the database must be a SQLite file (sqlite+aiosqlite:///path) or PostgreSQL "
                             "through asyncpg (postgresql+asyncpg://…)")
        self.url = database_url
        self.box = box
        kwargs: dict[str, Any] = {}
        if database_url.startswith("postgresql"):
            # No pool_pre_ping: it costs a round trip on every checkout (8 % of a create's CPU on
            # PostgreSQL, py-spy). Only a connection that sat idle long enough to have been dropped
            # (a restart, an idle timeout, a proxy) is pinged (_ping_if_idle).
            # No overflow: SQLAlchemy closes an overflow connection at every check-in, so bursts above the
            # pool opened (TLS negotiation included) and closed a connection per write — at 64 concurrent
            # records 10 pooled + 20 overflow cost 1,372 µs wall and 659 µs CPU a record, a fixed pool of
            # 20 (opened on demand, then kept) 345 / 344 µs (bench/store_write.py --database).
            # The registry's hot statements have a pool of their own (store/postgres.py): the engine keeps
            # a quarter of the connections, for everything else.
            kwargs.update(pool_size=_engine_share(pool_size), max_overflow=0)
        else:
            # A fixed pool: opening SQLite connections under load costs a thread each.
            kwargs.update(pool_size=16, max_overflow=0)
        self.engine: AsyncEngine = create_async_engine(database_url, **kwargs)
        # Reads that are one SELECT need no transaction. On PostgreSQL SQLAlchemy would wrap each in
        # BEGIN … ROLLBACK: three round trips where one does (in autocommit each statement is its own
        # snapshot). The same pool; the level is set on the connection at checkout, without a round trip.
        self._reads: AsyncEngine = (self.engine.execution_options(isolation_level="AUTOCOMMIT")
                                    if database_url.startswith("postgresql") else self.engine)
        if not database_url.startswith("postgresql"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            event.listen(self.engine.sync_engine, "checkin", _note_checkin)
            event.listen(self.engine.sync_engine, "checkout", self._ping_if_idle)
        # Only the dialect in use is imported: PostgreSQL's costs ~2 MiB resident in every SQLite gateway.
        self._dialect = importlib.import_module(
            "sqlalchemy.dialects." + ("postgresql" if database_url.startswith("postgresql") else "sqlite"))
        # The registry's reads and writes off SQLAlchemy's engine: on PostgreSQL one asyncpg pool does
        # both, on a SQLite file a reader thread and the writer thread.
        self._registry = (_registry_pool(self.engine, max(1, pool_size - _engine_share(pool_size)),
                                         lambda: self.PING_AFTER_IDLE_SECONDS)
                          if database_url.startswith("postgresql") else None)
        sqlite_file = _sqlite_file(database_url)
        self._writer = SQLiteWriter(sqlite_file, _sqlite_pragmas) if sqlite_file else None
        self._reader: SQLiteReader | RegistryPool = self._registry or SQLiteReader(sqlite_file)
        self._key_cache: dict[str, tuple[float, ApiKey | None]] = {}
        # Where each known object lives and who owns it never changes after its first record, so it is
        # cached for good (bounded); the last status seen saves rewriting unchanged snapshots.
        self._placements: dict[tuple[str, str], StoredObject] = {}
        self._written_once: dict[tuple[str, str], tuple[float, StoredObject | None]] = {}  # lookup_written_once
        self._any_keys: tuple[float, bool] | None = None
        self._any_keys_query: asyncio.Task[bool] | None = None  # the one refresh in flight
        self._log_queue: list[dict[str, Any]] = []
        self._cursors_pruned = 0  # when this process last deleted expired page cursors
        self._flusher: asyncio.Task[None] | None = None
        self._status_hooks: dict[str, list[StatusHook]] = {}  # kind -> hooks (see on_status)
        self._hook_writes: dict[str, list[HookWrites | None]] = {}  # kind -> each hook's writes_for

    PING_AFTER_IDLE_SECONDS = 5.0

    def _ping_if_idle(self, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        """A connection idle in the pool for a while is pinged before use; a dead one is replaced (the
        pool retries the checkout on DisconnectionError). A busy gateway reuses its connections within
        milliseconds and pings none. A connection that dies while in use fails that statement, and the
        pool then drops every connection it holds (SQLAlchemy's disconnect handling)."""
        checked_in = record.info.get("checked_in")
        if checked_in is None or time.monotonic() - checked_in < self.PING_AFTER_IDLE_SECONDS:
            return
        try:
            self.engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # whatever the driver raises for a dead connection
            raise sa.exc.DisconnectionError() from exc

    @classmethod
    async def open(cls, database_url: str, box: SecretBox, pool_size: int = 20) -> Store:
        """The store on ``database_url``, its schema upgraded. ``pool_size``: PostgreSQL connections this
        process keeps (opened as needed, never more; a write beyond them waits for one)."""
        if path := _sqlite_file(database_url):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        store = cls(database_url, box, pool_size)
        if await store.schema_revision() != migrate.head():
            await asyncio.to_thread(migrate.upgrade, database_url)
        return store

    async def schema_revision(self) -> str | None:
        """The revision the database is at (None for an empty database)."""
        try:
            async with self.engine.connect() as conn:
                return (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
        except sa.exc.DBAPIError:
            return None

    async def close(self) -> None:
        if self._flusher:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush_log()
        if self._writer is not None:
            await self._writer.close()
        await self._reader.close()
        await self.engine.dispose()

    def on_status(self, kind: str, hook: StatusHook, writes_for: HookWrites | None = None) -> None:
        """Run ``hook`` in the same transaction as every status ``record``/``record_many`` write for ``kind``.

        ``writes_for(status, provider, connection)``, if given, tells whether the hook may write anything
        for such a change; it must be ``True`` wherever the hook would write. A ``record`` whose hooks
        all write nothing is its upsert alone: on PostgreSQL one statement in autocommit (atomic by
        itself) instead of ``BEGIN``, the upsert and ``COMMIT``, two round trips fewer per created job."""
        self._status_hooks.setdefault(kind, []).append(hook)
        self._hook_writes.setdefault(kind, []).append(writes_for)

    def _hooks_quiet(self, kind: str, status: str | None, provider: str, connection: str | None) -> bool:
        """Whether no hook of ``kind`` can write for this record (no status, no hook, or each says so). The
        upsert only ever writes a row of the same provider and connection (``_UPSERT_OBJECT``), so what
        the hooks would be given is known before it runs, but for the owner, which no rule here reads."""
        if status is None:
            return True
        return all(w is not None and not w(status, provider, connection) for w in self._hook_writes.get(kind, ()))

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            return True
        except Exception:  # readiness must answer, whatever the driver raises
            return False

    # ---- tunegate keys -------------------------------------------------------------------------

    async def create_key(self, name: str, granted: list[str], allow_provider_keys: bool = False,
                         rate_limit_per_min: int | None = None) -> tuple[ApiKey, str]:
        key_id, full_key, digest = new_key()
        row = dict(id=key_id, name=name, secret_hash=digest, connections=granted,
                   allow_provider_keys=allow_provider_keys, rate_limit_per_min=rate_limit_per_min,
                   created_at=_now(), revoked_at=None)
        async with self.engine.begin() as conn:
            await conn.execute(api_keys.insert().values(**row))
        self._any_keys = None
        self._any_keys_query = None  # a refresh that began before this key existed answers its own callers only
        row.pop("secret_hash")
        return ApiKey(**row), full_key  # type: ignore[arg-type]

    async def get_key(self, key_id: str) -> ApiKey | None:
        """A key by id, revoked or not (the gateway's own background calls act for a job's owner)."""
        async with self._reads.connect() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).mappings().first()
        return _key(row) if row is not None else None

    async def list_keys(self) -> list[ApiKey]:
        async with self._reads.connect() as conn:
            rows = (await conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at))).mappings()
            return [_key(r) for r in rows]

    async def revoke_key(self, key_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(api_keys.update().where(api_keys.c.id == key_id,
                                                                api_keys.c.revoked_at.is_(None))
                                        .values(revoked_at=_now()))
        self._key_cache.pop(key_id, None)
        return bool(result.rowcount)

    async def keys_exist(self) -> bool:
        """Whether any active key exists: with none, the gateway is open (provider keys pass through)."""
        now = time.monotonic()
        if self._any_keys and now - self._any_keys[0] < self.KEY_CACHE_SECONDS:
            return self._any_keys[1]
        # One query however many requests find the cache expired: each of them used to run its own, and
        # at 64 requests in flight that herd, queued for the pool's connections, made the p99 (0.3-0.5 s).
        if self._any_keys_query is None or self._any_keys_query.done():
            self._any_keys_query = asyncio.get_running_loop().create_task(self._query_any_keys(now))
        return await asyncio.shield(self._any_keys_query)

    async def _query_any_keys(self, now: float) -> bool:
        found = bool(await self._reader.fetchall("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1", ()))
        if self._any_keys_query is asyncio.current_task():  # not superseded by a create_key meanwhile
            self._any_keys = (now, found)
        return found

    async def authenticate(self, full_key: str) -> ApiKey | None:
        """The active key this string names, or None. The secret is compared in constant time."""
        parts = split_key(full_key)
        if parts is None:
            return None
        key_id, secret = parts
        now = time.monotonic()
        cached = self._key_cache.get(full_key)
        if cached and now - cached[0] < self.KEY_CACHE_SECONDS:
            return cached[1]
        async with self._reads.connect() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).mappings().first()
        key = None
        if row is not None and row["revoked_at"] is None and secret_matches(secret, row["secret_hash"]):
            key = _key(row)
        if len(self._key_cache) > 10_000:
            self._key_cache.clear()
        self._key_cache[full_key] = (now, key)
        return key

    # ---- connections ---------------------------------------------------------------------------

    async def add_connection(self, name: str, provider: str, secrets: dict[str, str],
                             base_url: str | None = None, options: dict[str, Any] | None = None) -> None:
        """Store a connection under the provider's canonical name, whichever alias the caller used (the
        resolver and `connections_for` compare canonical names)."""
        from tunegate.providers import canonical_name  # the adapters load only when a connection is added

        async with self.engine.begin() as conn:
            await conn.execute(connections.insert().values(
                name=name, provider=canonical_name(provider), base_url=base_url, secrets=self.box.seal(secrets),
                options=options or {}, created_at=_now()))

    async def get_connection(self, name: str) -> Connection | None:
        async with self._reads.connect() as conn:
            row = (await conn.execute(sa.select(connections).where(connections.c.name == name))).mappings().first()
        if row is None:
            return None
        return Connection(name=row["name"], provider=row["provider"], base_url=row["base_url"],
                          secrets=self.box.open(row["secrets"]), options=dict(row["options"] or {}))

    async def list_connections(self) -> list[dict[str, Any]]:
        """Connections without their secrets (only the names of the secret fields)."""
        async with self._reads.connect() as conn:
            rows = (await conn.execute(sa.select(connections).order_by(connections.c.name))).mappings().all()
        return [dict(name=r["name"], provider=r["provider"], base_url=r["base_url"], options=r["options"],
                     secret_fields=sorted(self.box.open(r["secrets"])), created_at=r["created_at"]) for r in rows]

    async def connections_for(self, provider: str) -> list[str]:
        async with self._reads.connect() as conn:
            rows = await conn.execute(sa.select(connections.c.name).where(connections.c.provider == provider)
                                      .order_by(connections.c.name))
            return [r[0] for r in rows]

    async def remove_connection(self, name: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(connections.delete().where(connections.c.name == name))
        return bool(result.rowcount)

    # ---- the object registry -------------------------------------------------------------------

    async def record(self, kind: str, object_id: str, provider: str, connection: str | None,
                     key_id: str | None, status: str | None = None,
                     snapshot: dict[str, Any] | None = None, *, claim: bool = True) -> None:
        """Remember an object seen by ``key_id``. With ``claim`` (the object was created by this request)
        a new record is that key's; without it (a retrieve of something created elsewhere) a new record
        has no owner. Later sightings refresh status and snapshot only where the key may write (see
        ``_UPSERT_OBJECT``), and are skipped while the status is unchanged."""
        known = self._placements.get((kind, object_id))
        if known is not None and known.status == status and status is not None:
            return
        self._written_once.pop((kind, object_id), None)
        now = _now()
        params = (kind, object_id, provider, connection, key_id if claim else None, status,
                  driver.json_text(snapshot), now, now, key_id)

        def write(tx: Tx) -> Any:
            found = tx.rows(_UPSERT_OBJECT_RETURNING, params)
            row = found[0] if found else None
            if row is not None and status is not None and kind in self._status_hooks:
                self._run_hooks(tx, [StatusChange(kind, object_id, row[0], row[1], row[2], status, snapshot)])
            return row

        if self._registry is not None and self._hooks_quiet(kind, status, provider, connection):
            found = await self._registry.write_one(_UPSERT_OBJECT_RETURNING, params)
            row = found[0] if found else None
        else:  # (SQLite's writer commits a batch of writes at once: one statement or three costs the same)
            row = await self.write(write)
        if row is None:  # a record this key may not write: leave it, and the cache, as they are
            self._placements.pop((kind, object_id), None)
            return
        self._place(StoredObject(kind, object_id, row[0], row[1], row[2], status, None))

    async def refresh(self, kind: str, object_id: str, provider: str, connection: str | None, status: str,
                      snapshot: dict[str, Any]) -> None:
        """Rewrite a snapshot from a fresh provider read whose status is unchanged (``record`` skips those):
        the job watcher's polls keep progress fields (``trained_tokens``) and ``updated_at`` — the age the
        snapshot route reports — current. Only the object's own placement, and only while the row still
        holds this status (a status another instance wrote since keeps its own snapshot)."""
        c = objects.c
        async with self.engine.begin() as conn:
            await conn.execute(objects.update().where(
                c.kind == kind, c.id == object_id, c.provider == provider, c.status == status,
                sa.func.coalesce(c.connection, "") == (connection or "")).values(snapshot=snapshot, updated_at=_now()))

    PLACEMENTS_CACHED = 20_000  # ~6 MiB; the oldest entries make room (they are re-read on use)

    def _place(self, found: StoredObject) -> None:
        _keep(self._placements, (found.kind, found.id),
              dataclasses.replace(found, snapshot=None) if found.snapshot else found, self.PLACEMENTS_CACHED)

    async def placement(self, kind: str, object_id: str) -> StoredObject | None:
        """Provider, connection and owner of a known object (cached; status and snapshot may be old)."""
        found = self._placements.get((kind, object_id))
        if found is None:
            found = await self.lookup(kind, object_id)
            if found is not None:
                self._place(found)
        return found

    async def placements(self, wanted: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredObject]:
        """``placement`` of a few (kind, id) pairs at once: the cached ones, and the rest in one query (a
        create names a model and one or two files: one thread hop or round trip, not three)."""
        found: dict[tuple[str, str], StoredObject] = {}
        missing: list[tuple[str, str]] = []
        for pair in dict.fromkeys(wanted):
            if (known := self._placements.get(pair)) is not None:
                found[pair] = known
            else:
                missing.append(pair)
        for start in range(0, len(missing), 400):  # SQLite binds at most 999 parameters per statement
            chunk = missing[start:start + 400]
            rows = await self._reader.fetchall(
                "SELECT kind, id, provider, connection, key_id, status FROM objects WHERE "
                + " OR ".join(["(kind = ? AND id = ?)"] * len(chunk)), tuple(v for pair in chunk for v in pair))
            for kind, object_id, provider, connection, key_id, status in rows:
                stored = StoredObject(kind, object_id, provider, connection, key_id, status, None)
                self._place(stored)
                found[(kind, object_id)] = stored
        return found

    async def record_many(self, kind: str, items: Sequence[tuple[str, str | None, dict[str, Any] | None]],
                          provider: str, connection: str | None, key_id: str | None) -> None:
        """Record a page of (id, status, snapshot) in one transaction."""
        if not items:
            return
        now = _now()
        rows = [(kind, i, provider, connection, key_id, s, driver.json_text(snap), now, now, key_id)
                for i, s, snap in items]

        def write(tx: Tx) -> None:
            tx.execute_many(_UPSERT_OBJECT, rows)
            if kind in self._status_hooks:
                self._run_hooks(tx, self._written(tx, kind, items))

        await self.write(write)
        for object_id, _status, _snap in items:
            self._placements.pop((kind, object_id), None)  # re-read on next use: the status changed
            self._written_once.pop((kind, object_id), None)

    async def write(self, work: Callable[[Tx], T]) -> T:
        """Run ``work`` (a plain function of a sync transaction, store/driver.py) in a write transaction
        of the registry and return its result once it has committed; the transaction goes on if the
        caller is cancelled. On a SQLite file, on the process's one writer thread (group commit, one hop
        per batch, see store/writer.py). On PostgreSQL one transaction per write on the registry's pool
        (store/postgres.py): group commit there (tried, one shared transaction at a time) serialised what
        30 pooled connections did in parallel, create c=64 291 -> 212 req/s."""
        if self._writer is not None:
            return cast(T, await self._writer.submit(work))
        assert self._registry is not None  # one or the other (see __init__)
        return await self._registry.write(work)

    def _run_hooks(self, tx: Tx, changes: list[StatusChange]) -> None:
        if changes:
            for hook in self._status_hooks.get(changes[0].kind, []):
                hook(tx, changes)

    @staticmethod
    def _written(tx: Tx, kind: str,
                 items: Sequence[tuple[str, str | None, dict[str, Any] | None]]) -> list[StatusChange]:
        """The items of a ``record_many`` whose status the registry now holds (a row the writer may not
        write keeps its own status, and is left out), as stored."""
        wanted = {i: (s, snap) for i, s, snap in items if s is not None}
        found = [r for sql, params in _placement_queries(kind, list(wanted)) for r in tx.rows(sql, params)]
        return [StatusChange(kind, r[0], r[1], r[2], r[3], r[4], wanted[r[0]][1]) for r in found
                if r[4] == wanted[r[0]][0]]

    async def lookup(self, kind: str, object_id: str) -> StoredObject | None:
        rows = await self._reader.fetchall(
            "SELECT provider, connection, key_id, status, snapshot FROM objects WHERE kind = ? AND id = ?",
            (kind, object_id))
        if not rows:
            return None
        provider, connection, key_id, status, snapshot = rows[0]
        if isinstance(snapshot, (str, bytes)):  # JSON as text (SQLite; asyncpg's default codec)
            snapshot = orjson.loads(snapshot) if snapshot else None
        return StoredObject(kind=kind, id=object_id, provider=provider, connection=connection, key_id=key_id,
                            status=status, snapshot=snapshot)

    WRITTEN_ONCE_SECONDS = 60.0  # how long lookup_written_once reuses an answer
    WRITTEN_ONCE_CACHED = 10_000  # answers kept at most (the oldest make room)
    WRITTEN_ONCE_ID_CHARS = 512  # longer ids (a request body may hold megabytes) are not kept: ≤ ~5 MiB in all

    async def lookup_written_once(self, kind: str, object_id: str) -> StoredObject | None:
        """``lookup``, its answer (a miss too) reused for ``WRITTEN_ONCE_SECONDS``, for rows that are written
        once, before any caller can know their id, and only ever deleted afterwards: a dataset's validation
        report, recorded before its upload is answered with the id (api/datasets.py). So a miss can only be
        stale for an id named before it existed, and a hit only for a row deleted meanwhile on another
        instance (this one drops its answer on ``record`` and ``forget``). Every create that names a
        file asks; most name one the gateway never saw (uploaded at the provider), and that answer is the
        same every time: a query (a round trip on PostgreSQL, a thread hop on SQLite) per create, saved."""
        if len(object_id) > self.WRITTEN_ONCE_ID_CHARS:  # no provider's id is this long: asked, never kept
            return await self.lookup(kind, object_id)
        key = (kind, object_id)
        kept = self._written_once.get(key)
        now = time.monotonic()
        if kept is not None and kept[0] > now:
            return kept[1]
        found = await self.lookup(kind, object_id)
        _keep(self._written_once, key, (now + self.WRITTEN_ONCE_SECONDS, found), self.WRITTEN_ONCE_CACHED)
        return found

    async def owners(self, kind: str, ids: list[str]) -> dict[str, str | None]:
        """id → owning key id, for the ids the registry knows."""
        found = {i: p.key_id for i in ids if (p := self._placements.get((kind, i))) is not None}
        for sql, params in _placement_queries(kind, [i for i in ids if i not in found]):
            for r in await self._reader.fetchall(sql, params):
                self._place(StoredObject(kind, r[0], r[1], r[2], r[3], r[4], None))
                found[r[0]] = r[3]
        return found

    async def forget(self, kind: str, object_id: str) -> None:
        self._placements.pop((kind, object_id), None)
        self._written_once.pop((kind, object_id), None)
        async with self.engine.begin() as conn:
            await conn.execute(objects.delete().where(objects.c.kind == kind, objects.c.id == object_id))

    # ---- idempotency ---------------------------------------------------------------------------

    async def claim_idempotency(self, scope: str, idem_key: str, request_hash: str) -> dict[str, Any] | None:
        """Claim a key for a new request. None: claimed, go ahead. Otherwise the existing record
        (state pending or done) — the database's primary key makes the claim atomic across instances."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(idempotency.insert().values(
                    scope=scope, idem_key=idem_key, request_hash=request_hash, state="pending",
                    created_at=_now()))
            return None
        except sa.exc.IntegrityError:
            async with self._reads.connect() as conn:
                row = (await conn.execute(sa.select(idempotency).where(
                    idempotency.c.scope == scope, idempotency.c.idem_key == idem_key))).mappings().first()
            return dict(row) if row else None

    async def finish_idempotency(self, scope: str, idem_key: str, status_code: int, body: bytes) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(idempotency.update().where(
                idempotency.c.scope == scope, idempotency.c.idem_key == idem_key).values(
                state="done", status_code=status_code, body=body))

    async def release_idempotency(self, scope: str, idem_key: str) -> None:
        """Forget a claim whose request failed before reaching the provider, so it may be retried."""
        async with self.engine.begin() as conn:
            await conn.execute(idempotency.delete().where(
                idempotency.c.scope == scope, idempotency.c.idem_key == idem_key))

    # ---- page cursors (providers' page tokens behind OpenAI cursors) ----------------------------

    # How long a served cursor keeps its provider token. Provider tokens expire too (their lifetimes
    # are undocumented); an expired or refused one falls back to re-listing, so this only bounds the table.
    CURSOR_TTL_SECONDS = 24 * 3600
    CURSOR_PRUNE_SECONDS = 300  # each process deletes expired rows at most this often, while saving

    async def save_cursor(self, scope: bytes, provider: str, token: str) -> None:
        """Remember the provider's position behind a cursor. ``scope`` names the caller, the listing and
        the cursor; only its keyed digest is stored (it may hold credentials)."""
        now = _now()
        params = dict(cursor_key=self.box.tag("page-cursor", scope), provider=provider, token=token,
                      created_at=now, expires_at=now + self.CURSOR_TTL_SECONDS)
        async with self.engine.begin() as conn:
            await conn.execute(_UPSERT_CURSOR, params)
            if now - self._cursors_pruned >= self.CURSOR_PRUNE_SECONDS:
                self._cursors_pruned = now
                await conn.execute(page_cursors.delete().where(page_cursors.c.expires_at <= now))

    async def cursor_token(self, scope: bytes) -> str | None:
        """The position saved under ``scope``, unless it has expired."""
        query = sa.select(page_cursors.c.token).where(
            page_cursors.c.cursor_key == self.box.tag("page-cursor", scope), page_cursors.c.expires_at > _now())
        async with self._reads.connect() as conn:
            return (await conn.execute(query)).scalar()

    async def forget_cursor(self, scope: bytes) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(page_cursors.delete().where(
                page_cursors.c.cursor_key == self.box.tag("page-cursor", scope)))

    # ---- gateway-managed files -----------------------------------------------------------------

    async def add_managed_file(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(managed_files.insert().values(**row))

    async def get_managed_file(self, file_id: str) -> dict[str, Any] | None:
        async with self._reads.connect() as conn:
            row = (await conn.execute(sa.select(managed_files).where(managed_files.c.id == file_id))).mappings().first()
        return dict(row) if row else None

    async def list_managed_files(self, *, limit: int, after: str | None, purpose: str | None,
                                 ascending: bool, key_id: str | None) -> tuple[list[dict[str, Any]], bool]:
        """A page of files (newest first unless ascending) and whether more follow."""
        order = (managed_files.c.created_at, managed_files.c.id)
        query = sa.select(managed_files)
        if purpose:
            query = query.where(managed_files.c.purpose == purpose)
        if key_id is not None:
            query = query.where(managed_files.c.key_id == key_id)
        if after:
            anchor = await self.get_managed_file(after)
            if anchor is not None:
                cursor = sa.tuple_(*order)
                bound = sa.tuple_(sa.literal(anchor["created_at"]), sa.literal(anchor["id"]))
                query = query.where(cursor > bound if ascending else cursor < bound)
        query = query.order_by(*(c.asc() if ascending else c.desc() for c in order)).limit(limit + 1)
        async with self._reads.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings()]
        return rows[:limit], len(rows) > limit

    async def set_managed_report(self, file_id: str, report: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(managed_files.update().where(managed_files.c.id == file_id).values(report=report))

    async def delete_managed_file(self, file_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(managed_files.delete().where(managed_files.c.id == file_id))

    async def file_copy(self, sha256: str, provider: str, connection: str | None, owner: str | None) -> str | None:
        """The provider's id for a copy of this content that ``owner`` pushed earlier, if any. Copies are
        never shared between keys: one key's job must not name another key's remote file."""
        async with self._reads.connect() as conn:
            row = (await conn.execute(sa.select(file_copies.c.remote_id).where(
                file_copies.c.sha256 == sha256, file_copies.c.provider == provider,
                file_copies.c.connection == (connection or ""), file_copies.c.target_format == provider,
                file_copies.c.owner == (owner or "")))).first()
        return row[0] if row else None

    async def add_file_copy(self, sha256: str, provider: str, connection: str | None, owner: str | None,
                            remote_id: str) -> None:
        stmt = self._dialect.insert(file_copies).values(
            sha256=sha256, provider=provider, connection=connection or "", target_format=provider,
            owner=owner or "", remote_id=remote_id, created_at=_now())
        async with self.engine.begin() as conn:
            await conn.execute(stmt.on_conflict_do_update(
                index_elements=["sha256", "provider", "connection", "target_format", "owner"],
                set_=dict(remote_id=remote_id)))

    # ---- request log (batched, off the request path) ---------------------------------------------

    def log_request(self, entry: dict[str, Any]) -> None:
        self._log_queue.append(entry)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0.2)
        await self.flush_log()

    async def flush_log(self) -> None:
        batch, self._log_queue = self._log_queue, []
        if batch:
            # The driver's executemany: ~2 µs a row on SQLite, not ~10 (SQLAlchemy's bind processing). With
            # the registry's writes: on SQLite no second writer to wait for.
            rows = [tuple(e.get(c) for c in _LOG_COLUMNS) for e in batch]
            await self.write(lambda tx: tx.execute_many(_INSERT_LOG, rows))

    async def recent_requests(self, limit: int = 100) -> list[dict[str, Any]]:
        async with self._reads.connect() as conn:
            rows = await conn.execute(sa.select(request_log).order_by(request_log.c.id.desc()).limit(limit))
            return [dict(r) for r in rows.mappings()]

    async def prune_request_log(self, *, max_age_seconds: float | None, max_rows: int | None,
                                batch: int = 20_000) -> int:
        """Delete the oldest entries — older than ``max_age_seconds``, or beyond the newest ``max_rows`` —
        at most ``batch`` of them (one short write transaction; call again while it returns ``batch``).
        Ids grow with time, so the cut is an id found on the primary key: no index on ``ts`` needed."""
        c = request_log.c
        async with self.engine.begin() as conn:
            lowest, highest = (await conn.execute(sa.select(sa.func.min(c.id), sa.func.max(c.id)))).one()
            if lowest is None:
                return 0
            limit = lowest + batch
            cuts = []  # ids below a cut go: the furthest cut of the two bounds wins
            if max_rows is not None:
                cuts.append(highest - max_rows + 1)
            if max_age_seconds is not None:
                # The first recent entry within the batch (at most `batch` rows read); none: all are old.
                recent = (await conn.execute(sa.select(c.id).where(c.id < limit, c.ts >= time.time() - max_age_seconds)
                                             .order_by(c.id).limit(1))).scalar()
                cuts.append(limit if recent is None else recent)
            cut = min(limit, max(cuts, default=lowest))
            if cut <= lowest:
                return 0
            return int((await conn.execute(request_log.delete().where(c.id < cut))).rowcount or 0)


def _keep(cache: dict[K, V], key: K, value: V, limit: int) -> None:
    """Put ``value`` in a bounded cache as its newest entry; the oldest make room."""
    cache.pop(key, None)
    while len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = value


def _placement_queries(kind: str, ids: list[str]) -> list[tuple[str, tuple[Any, ...]]]:
    """The reads of id, provider, connection, owner and status for these ids: one per 500 of them
    (SQLite binds at most 999 parameters per statement)."""
    chunks = [ids[start:start + 500] for start in range(0, len(ids), 500)]
    return [("SELECT id, provider, connection, key_id, status FROM objects "
             f"WHERE kind = ? AND id IN ({','.join('?' * len(chunk))})", (kind, *chunk)) for chunk in chunks]


def _engine_share(pool_size: int) -> int:
    """PostgreSQL connections SQLAlchemy's engine keeps; the registry's pool has the rest of
    ``pool_size`` (at least one each)."""
    return max(1, pool_size // 4)


def _registry_pool(engine: AsyncEngine, size: int, ping_after_idle: Callable[[], float]) -> RegistryPool:
    from tunegate.store.postgres import RegistryPool  # asyncpg only where PostgreSQL is used

    return RegistryPool(engine.sync_engine, size, ping_after_idle)


def _sqlite_file(database_url: str) -> str:
    """The path of a SQLite database file ("" for an in-memory database, or another database)."""
    if not database_url.startswith("sqlite"):
        return ""
    path = database_url.split("///", 1)[-1].split("?", 1)[0]
    return path if path != ":memory:" else ""


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in"] = time.monotonic()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the request log and readers proceed without blocking each other; in WAL mode
    # synchronous=NORMAL survives process crashes (only an OS crash can lose the last commits).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _key(row: Any) -> ApiKey:
    return ApiKey(id=row["id"], name=row["name"], connections=list(row["connections"]),
                  allow_provider_keys=bool(row["allow_provider_keys"]),
                  rate_limit_per_min=row["rate_limit_per_min"], created_at=row["created_at"],
                  revoked_at=row["revoked_at"])
