"""The store under test, on SQLite and on a real PostgreSQL server (TUNEGATE_TEST_POSTGRES_URL, which
.ci/run sets after starting one): one fixture and one reset for every store-level test module."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.gateway import _TEST_FERNET_KEY
from tunegate.store import Store
from tunegate.store.schema import metadata
from tunegate.store.secretbox import SecretBox

POSTGRES = os.environ.get("TUNEGATE_TEST_POSTGRES_URL")


async def _reset_postgres(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
        for name in ("local_job_checkpoints", "local_job_events", "local_jobs"):
            await conn.execute(sa.text(f"DROP TABLE IF EXISTS {name} CASCADE"))
    await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "postgres":
        if not POSTGRES:
            pytest.skip("TUNEGATE_TEST_POSTGRES_URL not set (bash .ci/run starts a server)")
        await _reset_postgres(POSTGRES)
        url = POSTGRES
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    s = await Store.open(url, SecretBox(_TEST_FERNET_KEY))
    try:
        yield s
    finally:
        await s.close()
