"""Webhook endpoints in the database, per tunegate key, and their delivery log."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tunegate.store import Store
from tunegate.store.schema import webhook_deliveries, webhook_endpoints, webhook_events
from tunegate.webhooks.signing import new_secret, secret_hint


@dataclass(frozen=True)
class Endpoint:
    id: str
    key_id: str | None
    name: str
    url: str
    event_types: list[str]
    secret_hint: str
    created_at: int
    updated_at: int

    def public(self) -> dict[str, Any]:
        """OpenAI's WebhookEndpoint (openai/types/webhooks/webhook_endpoint.py, 3.57.0)."""
        return {"id": self.id, "object": "webhook_endpoint", "name": self.name, "url": self.url,
                "event_types": self.event_types, "signing_secret_hint": self.secret_hint,
                "created_at": self.created_at, "updated_at": self.updated_at}


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(id=row["id"], key_id=row["key_id"], name=row["name"], url=row["url"],
                    event_types=list(row["event_types"] or []), secret_hint=row["secret_hint"],
                    created_at=row["created_at"], updated_at=row["updated_at"])


def _owned(key_id: str | None) -> Any:
    owner = webhook_endpoints.c.key_id
    return owner.is_(None) if key_id is None else owner == key_id


class Endpoints:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(self, key_id: str | None, name: str, url: str, event_types: list[str]) -> tuple[Endpoint, str]:
        """A new endpoint and its signing secret (shown this once; stored sealed)."""
        secret = new_secret()
        now = int(time.time())
        row = dict(id="whep_" + secrets.token_hex(12), key_id=key_id, name=name, url=url, event_types=event_types,
                   secret=self.store.box.seal({"secret": secret}), secret_hint=secret_hint(secret),
                   created_at=now, updated_at=now)
        async with self.store.engine.begin() as conn:
            await conn.execute(webhook_endpoints.insert().values(**row))
        return _endpoint(row), secret

    async def count(self, key_id: str | None) -> int:
        async with self.store.engine.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(webhook_endpoints)
                                           .where(_owned(key_id)))).scalar() or 0)

    async def of_key(self, key_id: str | None) -> list[Endpoint]:
        """Newest first, as OpenAI lists them."""
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(sa.select(webhook_endpoints).where(_owned(key_id)).order_by(
                webhook_endpoints.c.created_at.desc(), webhook_endpoints.c.id.desc()))).mappings().all()
        return [_endpoint(r) for r in rows]

    async def get(self, key_id: str | None, endpoint_id: str) -> Endpoint | None:
        """The key's endpoint; another key's is not found (ids cannot be probed)."""
        async with self.store.engine.connect() as conn:
            row = (await conn.execute(sa.select(webhook_endpoints).where(
                webhook_endpoints.c.id == endpoint_id, _owned(key_id)))).mappings().first()
        return _endpoint(row) if row is not None else None

    async def secret(self, endpoint_id: str) -> tuple[str, str] | None:
        """(url, signing secret) of an endpoint, for the deliverer."""
        async with self.store.engine.connect() as conn:
            row = (await conn.execute(sa.select(webhook_endpoints.c.url, webhook_endpoints.c.secret).where(
                webhook_endpoints.c.id == endpoint_id))).first()
        return (row[0], self.store.box.open(row[1])["secret"]) if row is not None else None

    async def delete(self, key_id: str | None, endpoint_id: str) -> bool:
        """Remove an endpoint with its delivery log; its pending deliveries are never attempted."""
        async with self.store.engine.begin() as conn:
            gone = (await conn.execute(webhook_endpoints.delete().where(
                webhook_endpoints.c.id == endpoint_id, _owned(key_id)))).rowcount
            if gone:
                await conn.execute(webhook_deliveries.delete().where(webhook_deliveries.c.endpoint_id == endpoint_id))
        return bool(gone)

    async def deliveries(self, endpoint_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The delivery log, newest first: one row per event (attempts, last status and latency)."""
        d, e = webhook_deliveries.c, webhook_events.c
        query = (sa.select(d.id, d.event_id, e.type, e.job_id, d.state, d.attempts, d.last_status, d.last_error,
                           d.latency_ms, d.created_at, d.last_attempt_at, d.delivered_at, d.next_attempt_at)
                 .join(webhook_events, e.id == d.event_id).where(d.endpoint_id == endpoint_id)
                 .order_by(d.created_at.desc()).limit(limit))
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [{"object": "webhook_endpoint.delivery", **{str(k): v for k, v in r.items()},
                 "next_attempt_at": r["next_attempt_at"] if r["state"] == "pending" else None} for r in rows]
