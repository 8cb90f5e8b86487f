"""Database access for local jobs: one small method per question, over the gateway's own engine.

Every state change is a conditional UPDATE (``cas``): it names the state it expects, and a rowcount of
0 means another request or another gateway instance got there first. That is what keeps instances
sharing PostgreSQL (or one SQLite file) from running, recovering or cancelling a job twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tunegate.store.schema import local_job_checkpoints, local_job_events, local_jobs

Row = dict[str, Any]


def now() -> int:
    return int(time.time())


def _condition(column: str, expected: Any) -> Any:
    col = local_jobs.c[column]
    if expected is None:
        return col.is_(None)
    if isinstance(expected, list | tuple | set | frozenset):
        return col.in_(list(expected))
    return col == expected


class JobDB:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # ---- jobs ----------------------------------------------------------------------------------

    async def insert_job(self, row: Row) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(local_jobs.insert().values(**row))

    async def get(self, job_id: str) -> Row | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(local_jobs).where(local_jobs.c.id == job_id))).mappings().first()
        return dict(row) if row else None

    async def cas(self, job_id: str, expect: dict[str, Any], values: dict[str, Any]) -> bool:
        """Set ``values`` on the job if every column in ``expect`` still holds its expected value
        (None: IS NULL; a list: IN). True when this call changed the row."""
        conditions = [local_jobs.c.id == job_id, *(_condition(k, v) for k, v in expect.items())]
        async with self.engine.begin() as conn:
            result = await conn.execute(local_jobs.update().where(*conditions).values(**values))
        return result.rowcount == 1

    async def ids_where(self, limit: int = 100, **expect: Any) -> list[Row]:
        """(id, claimed_by, heartbeat_at, …) of jobs in a state, oldest first."""
        query = (sa.select(local_jobs).where(*(_condition(k, v) for k, v in expect.items()))
                 .order_by(local_jobs.c.id).limit(limit))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def stale(self, before: float, limit: int = 100) -> list[Row]:
        """Claimed jobs (running or validating) whose last heartbeat is older than ``before``."""
        query = (sa.select(local_jobs)
                 .where(local_jobs.c.status.in_(["running", "validating_files"]),
                        local_jobs.c.claimed_by.is_not(None),
                        sa.or_(local_jobs.c.heartbeat_at.is_(None), local_jobs.c.heartbeat_at < before))
                 .order_by(local_jobs.c.id).limit(limit))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def unheld_engine_jobs(self, before: float, limit: int = 100) -> list[Row]:
        """Running jobs on an outside engine that no live instance follows: released by an instance that
        stopped, or held by one whose heartbeat is older than ``before``."""
        query = (sa.select(local_jobs)
                 .where(local_jobs.c.status == "running", local_jobs.c.engine_job_id.is_not(None),
                        sa.or_(local_jobs.c.claimed_by.is_(None), local_jobs.c.heartbeat_at.is_(None),
                               local_jobs.c.heartbeat_at < before))
                 .order_by(local_jobs.c.id).limit(limit))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def heartbeat(self, instance: str, job_ids: Sequence[str]) -> set[str]:
        """Refresh the heartbeat of jobs this instance still holds; the ids it still holds."""
        if not job_ids:
            return set()
        where = (local_jobs.c.id.in_(list(job_ids)), local_jobs.c.claimed_by == instance,
                 local_jobs.c.status.in_(["running", "validating_files"]))
        async with self.engine.begin() as conn:
            await conn.execute(local_jobs.update().where(*where).values(heartbeat_at=time.time()))
            held = await conn.execute(sa.select(local_jobs.c.id).where(*where))
            return {r[0] for r in held}

    async def list_jobs(self, *, key_id: str | None, limit: int, after: str | None,
                        metadata: dict[str, str] | None) -> tuple[list[Row], bool]:
        """Newest first; ``after`` is a job id (ids sort by creation time)."""
        query = sa.select(local_jobs).order_by(local_jobs.c.id.desc())
        if key_id is not None:
            query = query.where(local_jobs.c.key_id == key_id)
        if after:
            query = query.where(local_jobs.c.id < after)
        if not metadata:
            async with self.engine.connect() as conn:
                rows = [dict(r) for r in (await conn.execute(query.limit(limit + 1))).mappings()]
            return rows[:limit], len(rows) > limit
        # Metadata filters are matched here (JSON operators differ between SQLite and PostgreSQL).
        found: list[Row] = []
        async with self.engine.connect() as conn:
            result = await conn.stream(query.execution_options(yield_per=500))
            async for r in result.mappings():
                meta = r["metadata"] or {}
                if all(meta.get(k) == v for k, v in metadata.items()):
                    found.append(dict(r))
                    if len(found) > limit:
                        break
            await result.close()
        return found[:limit], len(found) > limit

    # ---- events --------------------------------------------------------------------------------

    async def add_events(self, job_id: str, events: Iterable[Row], *, cursor: int | None = None) -> None:
        """Store events; with ``cursor`` (an outside engine's last event number) the job's ``engine_cursor``
        moves in the same transaction, so an instance that follows the job later stores none twice."""
        rows = [dict(job_id=job_id, created_at=int(e.get("created_at") or now()), level=e.get("level") or "info",
                     type=e.get("type") or "message", message=str(e.get("message") or ""), data=e.get("data"))
                for e in events]
        if not rows and cursor is None:
            return
        async with self.engine.begin() as conn:
            if rows:
                await conn.execute(local_job_events.insert(), rows)
            if cursor is not None:
                await conn.execute(local_jobs.update().where(local_jobs.c.id == job_id).values(engine_cursor=cursor))

    async def list_events(self, job_id: str, *, limit: int, after_seq: int | None) -> tuple[list[Row], bool]:
        """Newest first, like OpenAI; ``after_seq`` continues with older events."""
        query = sa.select(local_job_events).where(local_job_events.c.job_id == job_id)
        if after_seq is not None:
            query = query.where(local_job_events.c.seq < after_seq)
        query = query.order_by(local_job_events.c.seq.desc()).limit(limit + 1)
        async with self.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings()]
        return rows[:limit], len(rows) > limit

    # ---- checkpoints ---------------------------------------------------------------------------

    async def put_checkpoint(self, job_id: str, step: int, metrics: Row, path: str) -> None:
        """Insert or replace (a run restarted from an earlier point writes the same step again)."""
        async with self.engine.begin() as conn:
            await conn.execute(local_job_checkpoints.delete().where(
                local_job_checkpoints.c.job_id == job_id, local_job_checkpoints.c.step == step))
            await conn.execute(local_job_checkpoints.insert().values(
                job_id=job_id, step=step, metrics=metrics, path=path, created_at=now()))

    async def list_checkpoints(self, job_id: str, *, limit: int, after_step: int | None) -> tuple[list[Row], bool]:
        """Newest (highest step) first."""
        query = sa.select(local_job_checkpoints).where(local_job_checkpoints.c.job_id == job_id)
        if after_step is not None:
            query = query.where(local_job_checkpoints.c.step < after_step)
        query = query.order_by(local_job_checkpoints.c.step.desc()).limit(limit + 1)
        async with self.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings()]
        return rows[:limit], len(rows) > limit

    async def last_checkpoint(self, job_id: str) -> Row | None:
        rows, _ = await self.list_checkpoints(job_id, limit=1, after_step=None)
        return rows[0] if rows else None
