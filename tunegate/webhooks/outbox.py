"""The durable outbox: events written in the transaction that records a job's status change.

``Store.record`` / ``record_many`` call :meth:`Outbox.on_job_status` inside their transaction (a store hook),
so a status change and its events commit together or not at all: a gateway killed right after the
commit still has the event, and one killed before it has neither (the next poll sees the change again).

"One event per change" rests on ``job_transitions``' primary key (job, status): of several instances
recording the same status, only the transaction that inserts the row goes on to write an event. A
status is announced once per job, whatever order sightings arrive in; after a terminal status, nothing
more is announced for the job.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson

from tunegate.providers import provider_named
from tunegate.store import StatusChange, Tx, driver
from tunegate.webhooks.settings import WatchSettings

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

# OpenAI's fine-tuning event types (openai/types/webhooks/fine_tuning_job_*_webhook_event.py), and
# tunegate's own, sent only to endpoints that subscribe to them.
OPENAI_EVENTS = {"succeeded": "fine_tuning.job.succeeded", "failed": "fine_tuning.job.failed",
                 "cancelled": "fine_tuning.job.cancelled"}
TUNEGATE_EVENTS = {"running": "fine_tuning.job.running"}
CHECKPOINT_EVENT = "fine_tuning.job.checkpoint.created"
EVENT_TYPES = (*OPENAI_EVENTS.values(), *TUNEGATE_EVENTS.values(), CHECKPOINT_EVENT)
DEFAULT_EVENT_TYPES = list(OPENAI_EVENTS.values())

# Driver SQL (store/driver.py): these run in every created job's transaction.
_MARK = ("INSERT INTO job_transitions (job_id, mark, created_at) VALUES (?, ?, ?) "
         "ON CONFLICT (job_id, mark) DO NOTHING RETURNING job_id")
# A non-terminal status is marked only while the job has not ended: "first sighting of this status" and
# "not a stale sighting after the end" in one statement (was two, one thread hop each on every create).
# Not marking a stale status loses nothing: after an end nothing more is ever announced for the job.
_MARK_UNLESS_ENDED = (  # parameters: job, mark, now, job
    "INSERT INTO job_transitions (job_id, mark, created_at) "
    "SELECT CAST(? AS VARCHAR), CAST(? AS VARCHAR), CAST(? AS FLOAT) "  # typed for PostgreSQL
    "WHERE NOT EXISTS (SELECT 1 FROM job_transitions WHERE job_id = CAST(? AS VARCHAR) "
    "AND mark IN ('succeeded', 'failed', 'cancelled')) "
    "ON CONFLICT (job_id, mark) DO NOTHING RETURNING job_id")
_ENDPOINTS_OF_KEY = "SELECT id, event_types FROM webhook_endpoints WHERE key_id = ?"
_ENDPOINTS_OF_NO_KEY = "SELECT id, event_types FROM webhook_endpoints WHERE key_id IS NULL"
_ENROL = ("INSERT INTO job_watch (job_id, active, status, next_poll_at, unchanged, failures, polls, updated_at) "
          "VALUES (?, ?, ?, ?, 0, 0, 0, ?) ON CONFLICT (job_id) DO NOTHING")
_END_WATCH = ("UPDATE job_watch SET active = ?, status = ?, lease_owner = NULL, reason = ?, updated_at = ? "
              "WHERE job_id = ?")
_EVENT = "INSERT INTO webhook_events (id, job_id, key_id, type, created_at, payload) VALUES (?, ?, ?, ?, ?, ?)"
_DELIVERY = ("INSERT INTO webhook_deliveries (id, event_id, endpoint_id, state, attempts, next_attempt_at, created_at) "
             "VALUES (?, ?, ?, 'pending', 0, ?, ?)")


def pollable(provider: str, connection: str | None) -> bool:
    """Whether the watcher can poll a job from here: it has a stored connection, or its provider keeps its
    jobs in the gateway (``local``). A job made with a caller's own provider key has no stored credential
    (the gateway never keeps those keys), so it is never enrolled: enrolling it cost every such create a
    statement now and a lease, a registry read and a stop later (~0.19 ms of CPU per create)."""
    if connection is not None:
        return True
    adapter = provider_named(provider)
    return adapter is not None and adapter.keeps_files


def payload(event_id: str, event_type: str, created_at: int, data: dict[str, Any]) -> bytes:
    """The body OpenAI sends (its webhooks guide's example; field order as there)."""
    return orjson.dumps({"object": "event", "id": event_id, "type": event_type, "created_at": created_at,
                         "data": data})


class Outbox:
    """The store hook, and the writes it makes; ``watch`` gives a new job's first poll interval.

    The hook is a plain function of a sync transaction (a store hook runs on SQLite's writer thread, or
    in a greenlet on PostgreSQL), so the deliverer is woken through the loop it was created on."""

    def __init__(self, watch: WatchSettings, wake: Callable[[], None] | None = None) -> None:
        self.watch = watch
        self.wake = wake  # the local deliverer, told shortly after an event is written
        self._loop: asyncio.AbstractEventLoop | None = None
        if wake is not None:
            self._loop = asyncio.get_running_loop()

    @staticmethod
    def writes_for(status: str, provider: str, connection: str | None) -> bool:
        """Whether a change to ``status`` of a job at ``provider`` / ``connection`` writes anything here (the
        store's ``writes_for``): a terminal status, one with an event, or a job the watcher can follow.
        Otherwise nothing would follow from marking it (no event, no watch to start), and only terminal
        marks are ever read back: a job created with a caller's own key (the common create) writes nothing,
        and on PostgreSQL its record is then one statement (store ``on_status``)."""
        return (status in TERMINAL or status in OPENAI_EVENTS or status in TUNEGATE_EVENTS
                or pollable(provider, connection))

    def on_job_status(self, tx: Tx, changes: list[StatusChange]) -> None:
        now = time.time()
        woken = False
        for change in changes:
            if not self.writes_for(change.status, change.provider, change.connection):
                continue
            terminal = change.status in TERMINAL
            event_type = OPENAI_EVENTS.get(change.status) or TUNEGATE_EVENTS.get(change.status)
            enrol = not terminal and pollable(change.provider, change.connection)
            marked = (tx.rows(_MARK, (change.id, change.status, now)) if terminal else
                      tx.rows(_MARK_UNLESS_ENDED, (change.id, change.status, now, change.id)))
            if not marked:
                continue  # recorded before (here or by another instance), or a stale sighting after the end
            if terminal:
                tx.rows(_END_WATCH, (False, change.status, change.status, now, change.id))
            elif enrol:
                due = now + self.watch.intervals.get(change.status, self.watch.default_interval_seconds)
                tx.rows(_ENROL, (change.id, True, change.status, due, now))
            if event_type is not None and emit(tx, change.id, change.key_id, event_type, {"id": change.id},
                                               _when(change, now), now):
                woken = True
        if woken and self.wake is not None and self._loop is not None:
            # After the commit, which follows this hook; from whatever thread the hook runs on.
            self._loop.call_soon_threadsafe(self._loop.call_later, 0.02, self.wake)


def _when(change: StatusChange, now: float) -> int:
    """OpenAI's ``created_at``: when the job reached the status (its ``finished_at`` for an end)."""
    finished = (change.snapshot or {}).get("finished_at")
    if change.status in TERMINAL and isinstance(finished, int) and not isinstance(finished, bool) and finished > 0:
        return finished
    return int(now)


def emit(tx: Tx, job_id: str, key_id: str | None, event_type: str, data: dict[str, Any],
         created_at: int, now: float) -> int:
    """Write one event and a pending delivery to each of the owner's endpoints that subscribes to it.
    A key's endpoints hear only its own jobs; an open gateway's endpoints (no key) only unowned ones."""
    found = (tx.rows(_ENDPOINTS_OF_NO_KEY, ()) if key_id is None else tx.rows(_ENDPOINTS_OF_KEY, (key_id,)))
    targets = [r[0] for r in found if event_type in (driver.from_json(r[1]) or [])]
    if not targets:
        return 0
    event_id = "evt_" + secrets.token_hex(16)
    tx.rows(_EVENT, (event_id, job_id, key_id, event_type, now, payload(event_id, event_type, created_at, data).decode()))
    tx.execute_many(_DELIVERY, [("wh_" + secrets.token_hex(16), event_id, endpoint, now, now) for endpoint in targets])
    return len(targets)


def mark_once(tx: Tx, job_id: str, mark: str) -> bool:
    """Whether this transaction is the first to note ``mark`` for the job (checkpoints use it)."""
    return bool(tx.rows(_MARK, (job_id, mark, time.time())))
