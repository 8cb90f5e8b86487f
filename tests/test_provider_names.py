"""Portkey's provider slugs are tunegate's names; the old short names are aliases. Every way a provider is
named (the header, `provider` in x-portkey-config, stored connections through the CLI and the store, the
registry, the dashboard filter, the settings) takes both, and whatever was stored is stored canonically.
Migration 0004 rewrites rows written under the old names."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import requests

from tests.gateway import _TEST_FERNET_KEY, Gateway
from tests.standins.openai_like import ServerThread
from tests.standins.together import TogetherStandIn
from tunegate.providers import REGISTRY, canonical_name, known_names, provider_named
from tunegate.store import Store
from tunegate.store.secretbox import SecretBox

PORTKEY_SLUGS = {"openai", "azure-openai", "bedrock", "vertex-ai", "together-ai", "fireworks-ai", "mistral-ai"}
ALIASES = {"together": "together-ai", "fireworks": "fireworks-ai", "mistral": "mistral-ai"}
EXAMPLES = b"".join(
    json.dumps({"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"{i}"}]})
    .encode() + b"\n" for i in range(12))


# ---- the registry --------------------------------------------------------------------------------

def test_registry_is_keyed_by_portkey_slugs() -> None:
    assert set(REGISTRY) == PORTKEY_SLUGS | {"local", "tunegate"}
    for name, provider in REGISTRY.items():
        assert provider.name == name and provider_named(name) is provider
    for alias, slug in ALIASES.items():
        assert provider_named(alias) is REGISTRY[slug] and canonical_name(alias) == slug
        assert alias not in REGISTRY  # an alias is accepted, never listed as a provider of its own
    assert provider_named(" Together-AI ") is REGISTRY["together-ai"]
    assert provider_named("together_ai") is None and canonical_name("nope") == "nope"
    assert "together-ai (or together)" in known_names() and "openai," in known_names()


# ---- requests ------------------------------------------------------------------------------------

@pytest.fixture
def together(tmp_path: Path) -> Iterator[tuple[TogetherStandIn, Gateway, str]]:
    standin = TogetherStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        yield standin, gw, upstream.url + "/v1"


def sdk(gw: Gateway, key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, default_headers=headers, max_retries=0)


@pytest.mark.parametrize("name", ["together-ai", "together", "TOGETHER-AI"])
def test_header_takes_the_slug_and_the_alias(together: tuple[TogetherStandIn, Gateway, str], name: str) -> None:
    standin, gw, host = together
    client = sdk(gw, standin.api_key, **{"x-portkey-provider": name, "x-portkey-custom-host": host})
    uploaded = client.files.create(file=("t.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=uploaded.id, model="meta-llama/Llama-3-8b")
    assert job.id in standin.jobs
    # The registry holds the canonical name whichever alias created the objects ...
    recorded = gw.with_store(lambda s: s.lookup("job", job.id))
    assert recorded is not None and recorded.provider == "together-ai"
    assert gw.with_store(lambda s: s.lookup("file", uploaded.id)).provider == "together-ai"
    # ... so a later request that names no provider finds it there.
    bare = sdk(gw, standin.api_key, **{"x-portkey-custom-host": host})
    assert bare.fine_tuning.jobs.retrieve(job.id).id == job.id


@pytest.mark.parametrize("name", ["together-ai", "together"])
def test_config_provider_takes_the_slug_and_the_alias(together: tuple[TogetherStandIn, Gateway, str],
                                                     name: str) -> None:
    standin, gw, host = together
    client = sdk(gw, standin.api_key, **{"x-portkey-config": json.dumps({"provider": name}),
                                         "x-portkey-custom-host": host})
    assert client.fine_tuning.jobs.list().data == []
    assert standin.requests[-1].path == "/v1/fine-tunes"


def test_unknown_provider_lists_the_canonical_names(together: tuple[TogetherStandIn, Gateway, str]) -> None:
    _, gw, _ = together
    resp = requests.get(gw.url + "/v1/fine_tuning/jobs", headers={"x-portkey-provider": "together.ai"})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert (err["param"], err["code"]) == ("x-portkey-provider", "unknown_provider")
    assert "together-ai (or together)" in err["message"] and "fireworks-ai (or fireworks)" in err["message"]


def test_dashboard_filter_takes_the_alias(together: tuple[TogetherStandIn, Gateway, str]) -> None:
    standin, gw, host = together
    client = sdk(gw, standin.api_key, **{"x-portkey-provider": "together", "x-portkey-custom-host": host})
    uploaded = client.files.create(file=("t.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=uploaded.id, model="meta-llama/Llama-3-8b")
    for name in ("together", "together-ai"):
        listed = requests.get(gw.url + "/ui/api/jobs", params={"provider": name}).json()["data"]
        assert [(j["id"], j["provider"]) for j in listed] == [(job.id, "together-ai")]
    assert requests.get(gw.url + "/ui/api/jobs", params={"provider": "mistral"}).json()["data"] == []


def test_settings_base_url_under_the_old_name_still_applies(tmp_path: Path) -> None:
    standin = TogetherStandIn()
    with ServerThread(standin.app()) as upstream, \
            Gateway(tmp_path / "data", providers={"together": {"base_url": upstream.url + "/v1"}}) as gw:
        client = sdk(gw, standin.api_key, **{"x-portkey-provider": "together-ai"})
        assert client.fine_tuning.jobs.list().data == []
        assert standin.requests and standin.requests[-1].path == "/v1/fine-tunes"


# ---- connections ---------------------------------------------------------------------------------

def cli(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "tunegate", *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TUNEGATE_DATA_DIR": str(data_dir), "TUNEGATE_SECRET_KEY": _TEST_FERNET_KEY,
                              **(env or {})})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli_stores_the_canonical_name_and_both_names_reach_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    standin = TogetherStandIn()
    with ServerThread(standin.app()) as upstream:
        out = cli(data, "connections", "add", "team-together", "--provider", "together", "--base-url",
                  upstream.url + "/v1", "--api-key", standin.api_key)
        assert "(together-ai)" in out
        listed = json.loads(cli(data, "connections", "list", "--json"))
        assert [(c["name"], c["provider"], c["secret_fields"]) for c in listed] == [
            ("team-together", "together-ai", ["api_key"])]
        key = json.loads(cli(data, "keys", "create", "--name", "alice", "--connection", "team-together",
                             "--json"))["key"]
        with Gateway(data) as gw:
            for name in ("together-ai", "together"):
                assert sdk(gw, key, **{"x-portkey-provider": name}).fine_tuning.jobs.list().data == []
            assert sdk(gw, key, **{"x-portkey-virtual-key": "team-together"}).fine_tuning.jobs.list().data == []
            mismatch = requests.get(gw.url + "/v1/fine_tuning/jobs", headers={
                "x-portkey-api-key": key, "x-portkey-virtual-key": "team-together", "x-portkey-provider": "mistral"})
            assert mismatch.status_code == 400 and "'together-ai'" in mismatch.json()["error"]["message"]
        assert all(r.headers["Authorization"] == f"Bearer {standin.api_key}" for r in standin.requests)
    err = subprocess.run([sys.executable, "-m", "tunegate", "connections", "add", "x", "--provider", "together.ai"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TUNEGATE_DATA_DIR": str(data), "TUNEGATE_SECRET_KEY": _TEST_FERNET_KEY})
    assert err.returncode != 0 and "together-ai (or together)" in " ".join(err.stderr.split())  # rich wraps


async def test_store_keeps_one_name_and_old_rows_still_resolve(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    store = await Store.open(url, SecretBox.from_settings(_TEST_FERNET_KEY, tmp_path))
    try:
        await store.add_connection("c-alias", "mistral", {"api_key": "k"})
        await store.add_connection("c-slug", "mistral-ai", {"api_key": "k"})
        assert [(c["name"], c["provider"]) for c in await store.list_connections()] == [
            ("c-alias", "mistral-ai"), ("c-slug", "mistral-ai")]
        assert await store.connections_for("mistral-ai") == ["c-alias", "c-slug"]
    finally:
        await store.close()


def test_a_connection_row_under_an_old_name_still_works(tmp_path: Path) -> None:
    """A row an older gateway wrote (or one the migration missed) is compared by canonical name."""
    data = tmp_path / "data"
    standin = TogetherStandIn()
    with ServerThread(standin.app()) as upstream:
        cli(data, "connections", "add", "legacy", "--provider", "together-ai", "--base-url", upstream.url + "/v1",
            "--api-key", standin.api_key)
        db = sqlite3.connect(data / "tunegate.db")
        db.execute("UPDATE connections SET provider = 'together' WHERE name = 'legacy'")
        db.commit()
        db.close()
        with Gateway(data) as gw:
            for name in ("together-ai", "together"):  # no Authorization: the connection's stored key is used
                resp = requests.get(gw.url + "/v1/fine_tuning/jobs",
                                    headers={"x-portkey-virtual-key": "legacy", "x-portkey-provider": name})
                assert resp.status_code == 200 and resp.json()["data"] == [], resp.text


# ---- migration 0004 ------------------------------------------------------------------------------

OLD_ROWS: dict[str, dict[str, Any]] = {
    "connections": dict(name="c1", provider="together", base_url=None, secrets="x", options="{}", created_at=1),
    "objects": dict(kind="job", id="ft-1", provider="fireworks", connection=None, key_id=None, status=None,
                    snapshot=None, created_at=1, updated_at=1),
    "request_log": dict(ts=1.0, trace_id="t", key_id=None, provider="mistral", operation="list_jobs", method="GET",
                        path="/v1/fine_tuning/jobs", status=200, upstream_status=200, latency_ms=1.0),
    "file_copies": dict(sha256="a" * 64, provider="together", connection="", target_format="together",
                        remote_id="file-1", created_at=1),
    "idempotency": dict(scope="key-a:mistral:team:eu", idem_key="k1", request_hash="h", state="done",
                        status_code=200, body=b"{}", created_at=1),
    "page_cursors": dict(cursor_key="c" * 64, provider="fireworks", token="t", created_at=1, expires_at=2),
}


def _migrate(url: str, revision: str, *, down: bool = False) -> None:
    from alembic import command

    from tunegate.store.migrate import alembic_config

    (command.downgrade if down else command.upgrade)(alembic_config(url), revision)


def _insert_old_rows(path: Path) -> None:
    db = sqlite3.connect(path)
    for table, row in OLD_ROWS.items():
        db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                   list(row.values()))
    db.execute("INSERT INTO objects (kind, id, provider, created_at, updated_at) VALUES ('job', 'o-1', 'openai', 1, 1)")
    db.execute("INSERT INTO idempotency (scope, idem_key, request_hash, state, created_at) "
               "VALUES ('open:openai:mistral:x', 'k2', 'h', 'done', 1)")  # a connection named like a provider
    db.commit()
    db.close()


def _names(path: Path) -> dict[str, Any]:
    db = sqlite3.connect(path)
    try:
        return {
            "connections": db.execute("SELECT provider FROM connections").fetchall(),
            "objects": sorted(db.execute("SELECT id, provider FROM objects").fetchall()),
            "request_log": db.execute("SELECT provider FROM request_log").fetchall(),
            "file_copies": db.execute("SELECT provider, target_format FROM file_copies").fetchall(),
            "idempotency": sorted(db.execute("SELECT scope FROM idempotency").fetchall()),
            "page_cursors": db.execute("SELECT provider FROM page_cursors").fetchall(),
        }
    finally:
        db.close()


def test_migration_0004_rewrites_every_stored_provider_name(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    url = f"sqlite+aiosqlite:///{path}"
    _migrate(url, "0003")
    _insert_old_rows(path)
    _migrate(url, "0004")
    assert _names(path) == {
        "connections": [("together-ai",)],
        "objects": [("ft-1", "fireworks-ai"), ("o-1", "openai")],
        "request_log": [("mistral-ai",)],
        "file_copies": [("together-ai", "together-ai")],
        "idempotency": [("key-a:mistral-ai:team:eu",), ("open:openai:mistral:x",)],
        "page_cursors": [],  # keyed by a hash of the old name: unreachable, so dropped
    }
    _migrate(url, "0003", down=True)
    back = _names(path)
    assert back["connections"] == [("together",)] and back["objects"] == [("ft-1", "fireworks"), ("o-1", "openai")]
    assert back["idempotency"] == [("key-a:mistral:team:eu",), ("open:openai:mistral:x",)]


def test_a_migrated_idempotency_claim_still_replays(tmp_path: Path) -> None:
    """A create retried after the upgrade, with the key it used before, gets the job it made before."""
    path = tmp_path / "m.sqlite"
    url = f"sqlite+aiosqlite:///{path}"
    _migrate(url, "0003")
    db = sqlite3.connect(path)
    body = {"model": "m", "training_file": "file-1"}
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    db.execute("INSERT INTO idempotency (scope, idem_key, request_hash, state, status_code, body, created_at) "
               "VALUES ('open:together:', 'retry-1', ?, 'done', 200, ?, 1)",
               (digest, b'{"id": "ft-earlier", "object": "fine_tuning.job"}'))
    db.commit()
    db.close()
    _migrate(url, "head")
    with Gateway(tmp_path / "data", database_url=url) as gw:
        resp = requests.post(gw.url + "/v1/fine_tuning/jobs", json=body, headers={
            "x-portkey-provider": "together", "Authorization": "Bearer k", "Idempotency-Key": "retry-1"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["id"] == "ft-earlier" and resp.headers["Idempotent-Replayed"] == "true"


def test_migration_head_is_0004() -> None:
    from tunegate.store.migrate import head

    assert head() >= "0004"
