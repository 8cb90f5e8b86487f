"""The saved page positions behind OpenAI cursors (``page_cursors``, migration 0003; ``tunegate.providers.paging``):
the store keeps a keyed digest of each cursor's scope and never the scope itself, rows expire and are pruned,
and the scope separates keys, connections, credentials, hosts, options, listings and filters. On SQLite, and on
PostgreSQL where TUNEGATE_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.gateway import _TEST_FERNET_KEY
from tunegate import store as store_module
from tunegate.context import RequestContext
from tunegate.providers import REGISTRY
from tunegate.providers.paging import Cursors, Resume
from tunegate.store import Store, migrate
from tunegate.store.schema import page_cursors
from tunegate.store.secretbox import SecretBox


async def _rows(store: Store) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(sa.select(page_cursors))).mappings()]


async def test_only_a_keyed_digest_of_the_scope_is_stored(store: Store) -> None:
    scope = b'{"credentials": {"api_key": "fw-very-secret-key"}, "after": "job-1"}'
    await store.save_cursor(scope, "fireworks-ai", '{"t": "tok"}')
    assert await store.cursor_token(scope) == '{"t": "tok"}'
    assert await store.cursor_token(scope + b" ") is None
    [row] = await _rows(store)
    assert len(row["cursor_key"]) == 64 and "secret" not in repr(row) and row["provider"] == "fireworks-ai"
    # Keyed by the gateway's secret key: the database alone does not let anyone test a guessed scope.
    other = SecretBox(base64.urlsafe_b64encode(b"another gateway's secret key!!!!"))
    assert other.tag("page-cursor", scope) != row["cursor_key"] == store.box.tag("page-cursor", scope)
    await store.save_cursor(scope, "fireworks-ai", '{"t": "newer"}')  # the same cursor served again
    assert await store.cursor_token(scope) == '{"t": "newer"}' and len(await _rows(store)) == 1
    await store.forget_cursor(scope)
    assert await store.cursor_token(scope) is None


async def test_rows_expire_and_are_pruned(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_800_000_000]
    monkeypatch.setattr(store_module, "_now", lambda: now[0])
    await store.save_cursor(b"old", "bedrock", "{}")
    now[0] += store.CURSOR_TTL_SECONDS
    assert await store.cursor_token(b"old") is None  # expired rows are never served
    await store.save_cursor(b"fresh", "bedrock", "{}")  # a save prunes (at most every CURSOR_PRUNE_SECONDS)
    assert [r["provider"] for r in await _rows(store)] == ["bedrock"] and await store.cursor_token(b"fresh") == "{}"
    now[0] += 1
    await store.save_cursor(b"more", "bedrock", "{}")
    assert len(await _rows(store)) == 2  # pruned again only after CURSOR_PRUNE_SECONDS


def _ctx(store: Store, **changes: Any) -> RequestContext:
    ctx = RequestContext(trace_id="t", provider=REGISTRY["bedrock"], upstream=None, policy=None,  # type: ignore[arg-type]
                         store=store, connection="conn", credentials={"aws_secret_access_key": "s3cr3t"},
                         options={"aws_region": "us-east-1"}, base_url_override="https://bedrock.example")
    for name, value in changes.items():
        setattr(ctx, name, value)
    return ctx


async def test_the_scope_separates_callers_listings_and_filters(store: Store) -> None:
    base = Cursors(_ctx(store), "jobs")
    await base.save("job-9", Resume("tok-1"))
    assert await Cursors(_ctx(store), "jobs").resume("job-9") == Resume("tok-1")
    key = type("Key", (), {"id": "k2"})()
    for other in (Cursors(_ctx(store, key=key), "jobs"), Cursors(_ctx(store, connection="conn-b"), "jobs"),
                  Cursors(_ctx(store, credentials={"aws_secret_access_key": "other"}), "jobs"),
                  Cursors(_ctx(store, base_url_override="https://elsewhere.example"), "jobs"),
                  Cursors(_ctx(store, options={"aws_region": "eu-west-1"}), "jobs"),
                  Cursors(_ctx(store, provider=REGISTRY["vertex-ai"]), "jobs"),
                  Cursors(_ctx(store), "files"), Cursors(_ctx(store), "jobs", {"metadata": {"a": "b"}})):
        assert await other.resume("job-9") is None
    # Credentials an adapter adds while it works (a minted token) do not change the scope it saved under.
    ctx = _ctx(store)
    late = Cursors(ctx, "jobs")
    ctx.credentials["access_token"] = "ya29.minted"
    assert await late.resume("job-9") == Resume("tok-1")


def test_unreadable_positions_count_as_never_served() -> None:
    for junk in ("", "[]", "{}", '{"t": 5, "n": null, "s": null, "q": []}', '{"t": "x", "n": "big", "s": 1, "q": []}'):
        assert Resume.load(junk) is None
    kept = Resume("tok", 50, "job-3", (("creationTimeBefore", "2025-01-01T00:00:00Z"),))
    assert Resume.load(kept.dump()) == kept


def test_migration_0003_goes_up_and_down(tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    cfg = migrate.alembic_config(url)

    async def tables(reopen: bool) -> set[str]:
        s = await Store.open(url, SecretBox(_TEST_FERNET_KEY)) if reopen else Store(url, SecretBox(_TEST_FERNET_KEY))
        try:
            async with s.engine.connect() as conn:
                return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
        finally:
            await s.close()

    command.upgrade(cfg, "0003")
    assert "page_cursors" in asyncio.run(tables(False))
    command.downgrade(cfg, "0002")
    assert "page_cursors" not in asyncio.run(tables(False))
    assert "page_cursors" in asyncio.run(tables(True))  # Store.open upgrades to head again
