"""The registry's asyncpg pool on PostgreSQL (tunegate/store/postgres.py): connections the server closed,
connections that went silent (a NAT or proxy that forgot them: nothing comes back, nothing is closed),
statements that never get an answer, and writes whose caller went away. Against a real server, through
a real TCP proxy that can go silent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from tests.gateway import _TEST_FERNET_KEY
from tests.stores import POSTGRES, _reset_postgres
from tests.test_store import kill_other_connections
from tunegate.store import Store
from tunegate.store.postgres import RegistryPool
from tunegate.store.secretbox import SecretBox

pytestmark = pytest.mark.postgres


class SilencingProxy:
    """TCP from the store to PostgreSQL. ``silence()``: the connections open now forward nothing more,
    either way, and stay open (what they are sent waits); connections made afterwards work. ``speak()``:
    they forward again, what waited first."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._gates: list[asyncio.Event] = []
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> SilencingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self.speak()
        self._server.close()

    def silence(self) -> None:
        for gate in self._gates:
            gate.clear()

    def speak(self) -> None:
        for gate in self._gates:
            gate.set()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        server_r, server_w = await asyncio.open_connection(*self._target)
        gate = asyncio.Event()
        gate.set()
        self._gates.append(gate)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    await gate.wait()
                    w.write(data)
                    await w.drain()
            finally:
                w.close()

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w), return_exceptions=True)


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[Store, SilencingProxy]]:
    if not POSTGRES:
        pytest.skip("TUNEGATE_TEST_POSTGRES_URL not set (bash .ci/run starts a server)")
    await _reset_postgres(POSTGRES)
    url = sa.engine.make_url(POSTGRES)
    async with SilencingProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        store = await Store.open(through, SecretBox(_TEST_FERNET_KEY))
        try:
            yield store, proxy
        finally:
            proxy.speak()  # the engine's own connections (through the proxy too) close gracefully
            await store.close()


def registry(store: Store) -> RegistryPool:
    pool = store._registry
    assert pool is not None
    return pool


async def test_connections_the_server_closed_are_replaced_before_use(proxied: tuple[Store, SilencingProxy]) -> None:
    store, _proxy = proxied
    store.PING_AFTER_IDLE_SECONDS = 3600.0  # no ping: asyncpg itself saw the server close them
    await asyncio.gather(*(store.lookup("job", f"ftjob-{i}") for i in range(4)))
    await kill_other_connections(POSTGRES or "")
    await asyncio.sleep(0.05)  # the server's goodbye reaches the pooled sockets
    await store.record("job", "ftjob-after", "openai", None, "key-a", "queued", {"id": "ftjob-after"})
    found = await store.lookup("job", "ftjob-after")
    assert found is not None and found.key_id == "key-a"


async def test_a_live_idle_connection_is_pinged_and_kept(proxied: tuple[Store, SilencingProxy]) -> None:
    store, proxy = proxied
    await store.record("job", "ftjob-1", "openai", None, "key-a", "queued", {"id": "ftjob-1"})
    opened = proxy.accepted
    store.PING_AFTER_IDLE_SECONDS = 0.0  # every checkout pings
    for n in range(3):
        await store.record("job", "ftjob-1", "openai", None, "key-a", ("running", "succeeded", "failed")[n], None)
        found = await store.lookup("job", "ftjob-1")
        assert found is not None and found.status == ("running", "succeeded", "failed")[n]
    assert proxy.accepted == opened  # answered: the same connection, kept


async def test_a_silent_idle_connection_is_pinged_and_replaced(proxied: tuple[Store, SilencingProxy]) -> None:
    store, proxy = proxied
    registry(store).PING_TIMEOUT_SECONDS = 0.2
    assert await store.lookup("job", "ftjob-none") is None
    opened = proxy.accepted
    proxy.silence()
    store.PING_AFTER_IDLE_SECONDS = 0.0  # counts as idle: pinged, no answer, replaced
    started = time.monotonic()
    assert await store.lookup("job", "ftjob-none") is None
    assert proxy.accepted > opened  # a new connection (and asyncpg's cancel request for the ping, on another)
    assert time.monotonic() - started < 5  # the ping's timeout, not the statement's (30 s)


async def test_a_statement_without_answer_fails_and_every_pooled_connection_is_replaced(
        proxied: tuple[Store, SilencingProxy]) -> None:
    store, proxy = proxied
    registry(store).STATEMENT_TIMEOUT_SECONDS = 0.3  # read when the pool opens, at the first statement
    store.PING_AFTER_IDLE_SECONDS = 3600.0  # none counts as idle: the silent ones are used
    await asyncio.gather(*(store.lookup("job", f"ftjob-{i}") for i in range(4)))  # a few pooled connections
    proxy.silence()
    with pytest.raises(sa.exc.DBAPIError):
        await store.record("job", "ftjob-lost", "openai", None, "key-a", "queued", {"id": "ftjob-lost"})
    # Every connection opened before the failure is replaced: none of the other silent ones is used.
    await store.record("job", "ftjob-kept", "openai", None, "key-a", "queued", {"id": "ftjob-kept"})
    assert await asyncio.gather(*(store.lookup("job", "ftjob-lost") for _ in range(4))) == [None] * 4
    found = await store.lookup("job", "ftjob-kept")
    assert found is not None and found.key_id == "key-a"


async def test_the_pool_keeps_within_its_share_of_the_connections() -> None:
    """``database_pool_size`` is the process's whole budget: the registry's pool and the engine's
    share it (a quarter, at least one, to the engine)."""
    if not POSTGRES:
        pytest.skip("TUNEGATE_TEST_POSTGRES_URL not set (bash .ci/run starts a server)")
    await _reset_postgres(POSTGRES)
    store = await Store.open(POSTGRES, SecretBox(_TEST_FERNET_KEY), pool_size=8)
    try:
        await asyncio.gather(*(store.record("job", f"ftjob-{i}", "openai", None, None, "queued", None)
                               for i in range(64)),
                             *(store.get_key(f"key-{i}") for i in range(64)))
        pool = registry(store)._pool
        assert pool is not None and pool.get_max_size() == 6 and pool.get_size() == 6
        assert store.engine.pool.size() == 2  # type: ignore[attr-defined]
    finally:
        await store.close()
