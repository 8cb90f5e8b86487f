"""The upstream HTTP client: one pooled aiohttp session per process, with per-phase timeouts and
retries for idempotent calls.

Provider adapters build the request (URL, auth headers, body); this module only moves bytes and
turns transport failures into OpenAI-shaped errors (502 unreachable, 504 timeout).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson
import yarl

from tunegate.config import RetryPolicy, Timeouts
from tunegate.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from tunegate.hosts import (
    DEFAULT_PORTS,
    GuardedResolver,
    HostNotAllowed,
    address_allowed,
    invalid_entries,
    ip_literal,
    refusal,
)

R = TypeVar("R")
USER_AGENT = "tunegate/0.1"
# The most of an upstream answer the gateway reads into memory (after decompression). Provider answers
# are small JSON documents; file bodies are streamed (``Upstream.open``), never read whole.
MAX_ANSWER_BYTES = 32 * 1024 * 1024


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
    # Hosts the operator configured for this call (the provider's built-in default, its base URL in the
    # settings, a connection's base URL, endpoint variables such as AWS_ENDPOINT_URL): only these skip the
    # address check. Every other URL — from a header, an option, an id, or handed back by an upstream —
    # connects through the guarded pool.
    trusted_hosts: frozenset[str] = frozenset()
    client_host: str | None = None  # the host of x-portkey-custom-host, to word a refusal as the client's
    max_answer_bytes: int = MAX_ANSWER_BYTES


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

    Two pools: one for the hosts the operator configured (``CallPolicy.trusted_hosts``), and one for
    every other host, whose resolver refuses the addresses the custom-host rule refuses at connect time
    (``allowed_client_hosts`` is the operator's list). There is no third way to connect: a URL a client
    chose or an upstream handed back can only reach the guarded pool. Separate pools also mean separate
    DNS caches: nothing resolved for one is reused by the other."""

    def __init__(self, allowed_client_hosts: list[str] | None = None) -> None:
        self._allowed = ["localhost", "127.0.0.1", "::1"] if allowed_client_hosts is None else allowed_client_hosts
        unusable = invalid_entries(self._allowed)
        if unusable:  # an operator's typo would otherwise refuse the host it meant, silently
            logging.getLogger("tunegate").warning(
                "allowed hosts entries that allow nothing (not a host, host:port, address, CIDR range or "
                "http(s)://host[:port]): %s", ", ".join(repr(e[:100]) for e in unusable[:20]))
        self._session: aiohttp.ClientSession | None = None
        # The guarded pool, one session per scheme: aiohttp tells a resolver the host and port but not
        # the scheme, so a list entry that names one (``https://llm.internal:8443``) is honoured by
        # giving each scheme's session a resolver that knows it.
        self._client_sessions: dict[str, aiohttp.ClientSession] = {}
        # Whether an address literal passes the guard's rule on a port and scheme: a pure function of
        # those and this Upstream's fixed list, asked on every request to a client-chosen literal, so
        # kept (bounded).
        self._literals: dict[tuple[str, int | None, str], bool] = {}

    @staticmethod
    def _new_session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        # No cookie jar: a session serves every caller, so a cookie one answer set would go out on the
        # next caller's request to that host.
        session = aiohttp.ClientSession(connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",),
                                        cookie_jar=aiohttp.DummyCookieJar(),
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

    def client_session(self, scheme: str = "https") -> aiohttp.ClientSession:
        """The guarded session for URLs of ``scheme`` (and only those: its resolver judges every
        connection as one of that scheme). Any scheme but http(s) shares one whose resolver knows none
        (an upstream's answer can name any: they must not each get a session)."""
        scheme = scheme.lower() if scheme.lower() in DEFAULT_PORTS else ""
        session = self._client_sessions.get(scheme)
        if session is None or session.closed:
            session = self._client_sessions[scheme] = self._new_session(aiohttp.TCPConnector(
                limit=512, ttl_dns_cache=10, enable_cleanup_closed=True,
                resolver=GuardedResolver(self._allowed, scheme or None)))
        return session

    def _session_for(self, url: str | yarl.URL, policy: CallPolicy) -> aiohttp.ClientSession:
        parsed = url if isinstance(url, yarl.URL) else yarl.URL(url)
        host = (parsed.host or "").lower().rstrip(".")
        if host in policy.trusted_hosts:
            return self.session
        scheme = parsed.scheme.lower()
        # aiohttp never asks the resolver about an address literal (http://169.254.169.254/), so the
        # guard's rule is applied to literals here, before the connection is opened.
        key = (host, parsed.port, scheme)  # yarl's port: the scheme's own when the URL names none
        allowed = self._literals.get(key)
        if allowed is None:
            literal = ip_literal(host)
            allowed = literal is None or address_allowed(host, literal, self._allowed, parsed.port, scheme)
            if len(self._literals) >= 1024:
                self._literals.clear()
            self._literals[key] = allowed
        if not allowed:
            raise _refused(host, policy)
        return self.client_session(scheme)

    async def close(self) -> None:
        for session in (self._session, *self._client_sessions.values()):
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
        async def send() -> UpstreamResponse:
            policy.stats["attempts"] += 1
            return await self._send(self._session_for(url, policy), method, url, policy, send_headers, params, body)

        response, attempt = await _with_retries(policy, attempts, send, lambda r: r.status, lambda r: r.headers,
                                                lambda r: None)
        response.attempts = attempt
        return response

    async def _send(self, session: aiohttp.ClientSession, method: str, url: str, policy: CallPolicy,
                    headers: Mapping[str, str], params: Any, body: Any) -> UpstreamResponse:
        timeouts = policy.timeouts
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=timeouts.idle)
        try:
            async with asyncio.timeout(timeouts.connect + timeouts.first_byte) as deadline:
                async with session.request(method, url, headers=headers, params=params, data=body,
                                                 timeout=timeout, allow_redirects=False) as resp:
                    # First byte arrived: from here only the idle timeout (sock_read) applies.
                    deadline.reschedule(None)
                    payload = await read_bounded(resp, policy.max_answer_bytes)
                    return UpstreamResponse(resp.status, resp.headers, payload)
        except TimeoutError as exc:
            raise UpstreamTimeout("The provider did not answer in time.") from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, HostNotAllowed):
                raise _refused(exc.os_error.host, policy) from None
            raise UpstreamUnreachable("Could not connect to the provider.") from exc
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise UpstreamUnreachable("The connection to the provider broke off.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"The request to the provider failed ({type(exc).__name__}).") from exc

    async def open(self, method: str, url: str, policy: CallPolicy, *,
                   headers: Mapping[str, str] | None = None, params: Any = None, json: Any = None,
                   retry: bool = False) -> aiohttp.ClientResponse:
        """Open a response whose body the caller streams on (downloads, streamed chat); the caller
        releases it. With ``retry``, a failure *before the answer starts* (no connection, a retryable
        status) is tried again under the policy; once the response is handed over it never is."""
        send_headers = {"User-Agent": USER_AGENT, **(headers or {})}
        body = orjson.dumps(json) if json is not None else None
        if body is not None:
            send_headers.setdefault("Content-Type", "application/json")
        attempts = max(1, policy.retry.attempts) if retry else 1
        resp, _ = await _with_retries(
            policy, attempts, lambda: self._open_once(method, url, policy, send_headers, params, body),
            lambda r: r.status, lambda r: r.headers, lambda r: r.release())
        return resp

    async def _open_once(self, method: str, url: str, policy: CallPolicy, headers: Mapping[str, str],
                         params: Any, body: bytes | None) -> aiohttp.ClientResponse:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.timeouts.connect,
                                        sock_read=policy.timeouts.idle)
        policy.stats["attempts"] += 1
        try:
            async with asyncio.timeout(policy.timeouts.connect + policy.timeouts.first_byte):
                return await self._session_for(url, policy).request(method, url, params=params, timeout=timeout,
                                                                    headers=headers, data=body,
                                                                    allow_redirects=False)
        except TimeoutError as exc:
            raise UpstreamTimeout("The provider did not answer in time.") from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, HostNotAllowed):
                raise _refused(exc.os_error.host, policy) from None
            raise UpstreamUnreachable("Could not connect to the provider.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable("Could not connect to the provider.") from exc


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole (decompressed) answer, or a 502 once it passes ``limit``: an upstream that answers with
    a gigabyte — or a small gzip bomb — costs at most ``limit`` bytes of memory. aiohttp decompresses
    in bounded steps as the body is read, so counting what comes out is enough."""
    declared = resp.content_length
    if declared is not None and declared > limit and "Content-Encoding" not in resp.headers:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> UpstreamError:
    return UpstreamError(f"The provider's answer is larger than the gateway reads ({limit} bytes).", status=502,
                         code="upstream_answer_too_large")


def _refused(host: str, policy: CallPolicy) -> Exception:
    """A connect the guard stopped: the client's own custom host is the client's mistake (400); any other
    URL came from an upstream's answer or a stored value, so the provider side is at fault (502)."""
    if policy.client_host is not None and host.lower() == policy.client_host:
        return refusal(host)
    return UpstreamError(f"The gateway refused to connect to '{host}': it resolves to a private, loopback, "
                         "link-local or metadata address that is not allowed.", status=502,
                         code="upstream_host_not_allowed")


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


async def _with_retries(policy: CallPolicy, attempts: int, send: Callable[[], Awaitable[R]],
                        status: Callable[[R], int], headers: Callable[[R], Mapping[str, str]],
                        discard: Callable[[R], None]) -> tuple[R, int]:
    """(answer, attempt number): ``send`` tried up to ``attempts`` times on a transport failure or a
    status the policy retries, with backoff (Retry-After when the answer gives one). A retried answer
    is ``discard``ed (an opened response is released)."""
    for attempt in range(1, max(1, attempts) + 1):
        try:
            answer = await send()
        except (UpstreamUnreachable, UpstreamTimeout):
            if attempt >= attempts:
                raise
            await asyncio.sleep(_backoff(policy.retry, attempt, None))
            policy.stats["retries"] += 1
            continue
        if attempt < attempts and status(answer) in policy.retry.on_status_codes:
            wait = _backoff(policy.retry, attempt, retry_after_seconds(headers(answer)))
            discard(answer)
            await asyncio.sleep(wait)
            policy.stats["retries"] += 1
            continue
        return answer, attempt
    raise AssertionError("unreachable")  # pragma: no cover


def _backoff(policy: RetryPolicy, attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, 60.0)
    return random.uniform(0, min(policy.backoff_max, policy.backoff_base * 2 ** (attempt - 1)))
