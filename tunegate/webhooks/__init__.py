"""Push, not poll (issue 19): a job watcher on every backend, and OpenAI-compatible signed webhooks.

- ``watcher``: background polls of every non-terminal job, leases shared through the database;
- ``outbox``: events written in the transaction that records a status change (a store hook);
- ``delivery``: at-least-once signed delivery with back-off for up to 72 hours, and its log;
- ``signing``: Standard Webhooks signatures, as the ``openai`` SDK's ``webhooks.unwrap()`` verifies them;
- ``registry`` / ``routes`` / ``cli``: endpoints per gateway key (``/v1/webhooks``, ``tunegate webhooks``).

See docs/webhooks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunegate.config import Settings
    from tunegate.context import ContextResolver
    from tunegate.store import Store
    from tunegate.upstream import Upstream
    from tunegate.webhooks.delivery import Deliverer
    from tunegate.webhooks.watcher import Watcher

__all__ = ["WebhookService", "start_webhooks"]


@dataclass
class WebhookService:
    """What one gateway instance runs: the outbox hook always; the watcher and the deliverer when enabled."""

    instance: str
    deliverer: Deliverer
    watcher: Watcher
    upstream: Upstream
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):  # the database may be gone at shutdown; leases then expire
            await self.watcher.release()
        await self.upstream.close()


def instance_id() -> str:
    """Names this process in leases: host, pid and a random part (a restarted pid is another instance)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"


def allowed_hosts(settings: Settings) -> list[str]:
    """Non-public hosts an endpoint URL may name: ``webhooks.allowed_hosts``, else ``allowed_custom_hosts``."""
    allowed = settings.webhooks.allowed_hosts
    return list(settings.allowed_custom_hosts if allowed is None else allowed)


async def start_webhooks(settings: Settings, store: Store, resolver: ContextResolver) -> WebhookService:
    """The gateway's lifespan calls this once per instance (and ``await service.stop()`` at shutdown)."""
    from tunegate.upstream import Upstream
    from tunegate.webhooks.delivery import Deliverer
    from tunegate.webhooks.outbox import Outbox
    from tunegate.webhooks.watcher import Watcher

    upstream = Upstream(allowed_hosts(settings))
    me = instance_id()
    service = WebhookService(me, Deliverer(store, settings.webhooks, upstream, me),
                             Watcher(store, resolver, settings.watch, me), upstream)
    outbox = Outbox(settings.watch, service.deliverer.wake)
    store.on_status("job", outbox.on_job_status, outbox.writes_for)
    loop = asyncio.get_running_loop()
    if settings.webhooks.enabled:
        service.tasks.append(loop.create_task(service.deliverer.run()))
    if settings.watch.enabled:
        service.tasks.append(loop.create_task(service.watcher.run()))
    return service
