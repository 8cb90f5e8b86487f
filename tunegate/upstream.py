"""The upstream HTTP client: one pooled aiohttp session per process, with per-phase timeouts and
retries for idempotent calls.

Provider adapters build the request (URL, auth headers, body); this module only moves bytes and
turns transport failures into OpenAI-shaped errors (502 unreachable, 504 timeout).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import yarl

from tunegate.config import RetryPolicy, Timeouts
from tunegate.errors import UpstreamTimeout, UpstreamUnreachable
from tunegate.hosts import GuardedResolver, HostNotAllowed, refusal

USER_AGENT = "tunegate/0.1"


@dataclass
class UpstreamResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    attempts: int = 1

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    @property
    def ok(self) -> bool:
        return self.status < 400


@dataclass
class CallPolicy:
    """How one upstream call behaves: its timeouts and, for idempotent calls, its retries."""

    timeouts: Timeouts
    retry: RetryPolicy
    stats: dict[str, int] = field(default_factory=lambda: {"attempts": 0, "retries": 0})
    client_host: str | None = None  # the host of x-portkey-custom-host: its calls resolve through the guard


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # an HTTP date
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unreadable: as if absent
    return max(0.0, parsed.timestamp() - time.time())


class Upstream:
    """Holds the sessions; created in the app's lifespan, closed at shutdown.

    Two pools: one for the hosts the operator configured (providers' URLs, endpoint overrides), and one
    for hosts a client chose (``x-portkey-custom-host``), whose resolver refuses the addresses the
    custom-host rule refuses (``allowed_client_hosts`` is the operator's list). Separate pools also mean
    separate DNS caches: nothing resolved for one is reused by the other."""

    def __init__(self, allowed_client_hosts: list[str] | None = None) -> None:
        self._allowed = ["localhost", "127.0.0.1", "::1"] if allowed_client_hosts is None else allowed_client_hosts
        self._session: aiohttp.ClientSession | None = None
        self._client_session: aiohttp.ClientSession | None = None

    @staticmethod
    def _new_session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",),
                                        json_serialize=lambda o: orjson.dumps(o).decode())
        # aiohttp silently re-sends a GET/DELETE once when a kept-alive connection closes before
        # the answer; tunegate's own retry policy must be the only one, so attempts are counted
        # (and bounded) in one place. There is no public switch for this in aiohttp 3.x.
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False
        return session

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._new_session(
                aiohttp.TCPConnector(limit=512, ttl_dns_cache=300, enable_cleanup_closed=True))
        return self._session

    @property
    def client_session(self) -> aiohttp.ClientSession:
        if self._client_session is None or self._client_session.closed:
            self._client_session = self._new_session(aiohttp.TCPConnector(
                limit=512, ttl_dns_cache=10, enable_cleanup_closed=True, resolver=GuardedResolver(self._allowed)))
        return self._client_session

    def _session_for(self, url: str | yarl.URL, policy: CallPolicy) -> aiohttp.ClientSession:
        if policy.client_host is None:
            return self.session
        host = (url if isinstance(url, yarl.URL) else yarl.URL(url)).host
        return self.client_session if host is not None and host.lower() == policy.client_host else self.session

    async def close(self) -> None:
        for session in (self._session, self._client_session):
            if session is not None:
                await session.close()

    async def request(
        self,
        method: str,
        url: str,
        policy: CallPolicy,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | list[tuple[str, str]] | None = None,
        json: Any = None,
        data: Any = None,
        idempotent: bool = False,
    ) -> UpstreamResponse:
        """Send a request and read the whole answer. Idempotent calls are retried on connection
        errors and on the policy's status codes, with exponential backoff, full jitter and
        ``Retry-After``. Non-idempotent calls (creates, uploads) are sent exactly once."""
        attempts = policy.retry.attempts if idempotent else 1
        body = orjson.dumps(json) if json is not None else data
        if isinstance(body, bytes | bytearray) and len(body) > _SLICE:
            body = _Slices(body)
        send_headers = {"User-Agent": USER_AGENT, **(headers or {})}
        if isinstance(body, _Slices):
            send_headers.setdefault("Content-Length", str(len(body.data)))  # sent as is, not chunked
        if json is not None:
            send_headers.setdefault("Content-Type", "application/json")
        for attempt in range(1, max(1, attempts) + 1):
            policy.stats["attempts"] += 1
            try:
                response = await self._send(self._session_for(url, policy), method, url, policy.timeouts,
                                            send_headers, params, body)
            except (UpstreamUnreachable, UpstreamTimeout):
                if attempt >= attempts:
                    raise
                await asyncio.sleep(_backoff(policy.retry, attempt, None))
                policy.stats["retries"] += 1
                continue
            if attempt < attempts and response.status in policy.retry.on_status_codes:
                await asyncio.sleep(_backoff(policy.retry, attempt, retry_after_seconds(response.headers)))
                policy.stats["retries"] += 1
                continue
            response.attempts = attempt
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, session: aiohttp.ClientSession, method: str, url: str, timeouts: Timeouts,
                    headers: Mapping[str, str], params: Any, body: Any) -> UpstreamResponse:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=timeouts.idle)
        try:
            async with asyncio.timeout(timeouts.connect + timeouts.first_byte) as deadline:
                async with session.request(method, url, headers=headers, params=params, data=body,
                                                 timeout=timeout, allow_redirects=False) as resp:
                    # First byte arrived: from here only the idle timeout (sock_read) applies.
                    deadline.reschedule(None)
                    payload = await resp.read()
                    return UpstreamResponse(resp.status, resp.headers, payload)
        except TimeoutError as exc:
            raise UpstreamTimeout("The provider did not answer in time.") from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, HostNotAllowed):  # the custom host's DNS answer changed (rebinding)
                raise refusal(exc.os_error.host) from None
            raise UpstreamUnreachable("Could not connect to the provider.") from exc
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise UpstreamUnreachable("The connection to the provider broke off.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"The request to the provider failed ({type(exc).__name__}).") from exc

    async def open(self, method: str, url: str, policy: CallPolicy, *,
                   headers: Mapping[str, str] | None = None, params: Any = None) -> aiohttp.ClientResponse:
        """Open a response whose body the caller streams on (downloads); the caller releases it.
        Not retried: a download is read once."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.timeouts.connect,
                                        sock_read=policy.timeouts.idle)
        policy.stats["attempts"] += 1
        try:
            async with asyncio.timeout(policy.timeouts.connect + policy.timeouts.first_byte):
                return await self._session_for(url, policy).request(method, url, params=params, timeout=timeout,
                                                  headers={"User-Agent": USER_AGENT, **(headers or {})},
                                                  allow_redirects=False)
        except TimeoutError as exc:
            raise UpstreamTimeout("The provider did not answer in time.") from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, HostNotAllowed):
                raise refusal(exc.os_error.host) from None
            raise UpstreamUnreachable("Could not connect to the provider.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable("Could not connect to the provider.") from exc


_SLICE = 256 * 1024


class _Slices:
    """A large in-memory body (an 8 MiB upload part, say) written in 256 KiB slices. Handed whole to
    the socket, the event loop would copy the unsent remainder into its buffer: a second copy of the
    part in memory. Re-iterable, so a retried request sends it again from the start."""

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    async def __aiter__(self) -> Any:
        view = memoryview(self.data)  # the caller does not resize the body while it is sent
        for start in range(0, len(view), _SLICE):
            yield view[start:start + _SLICE]


def _backoff(policy: RetryPolicy, attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, 60.0)
    return random.uniform(0, min(policy.backoff_max, policy.backoff_base * 2 ** (attempt - 1)))
