"""Checks on ``x-portkey-custom-host``: where a client may point the gateway.

Portkey's rule: loopback is trusted by default (local development); the operator's list replaces that
default; private, link-local, metadata and other non-public addresses are refused unless listed.
The check runs on the addresses the name resolves to, not only on the string, so a public-looking
name that resolves to 169.254.169.254 is refused too. It runs twice: once when the request arrives
(``check_custom_host``, a clear 400 before anything is sent) and again on the addresses the HTTP client
actually connects to (``GuardedResolver``), so a name whose DNS answer changes in between (DNS
rebinding) cannot lead the gateway into a private network. The first check's verdict is kept for a few
seconds (``VERDICT_SECONDS``); the connect-time one is never skipped.

An entry of the operator's list names a host, an address or a range (any port, either scheme, as
Portkey reads it), or narrows one to a port (``llm.internal:8443``) or to a scheme and port
(``https://llm.internal:8443``): ``parse_entry``. Both checks honour the narrowing: the request-time one
on the URL, the connect-time one on the port aiohttp connects to and the scheme of its session.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from tunegate.errors import InvalidRequest

METADATA_NAMES = {"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"}


# IPv6 prefixes whose addresses carry an IPv4 address in their last 32 bits, which a translator on the
# path (NAT64, SIIT) or the host itself connects to: RFC 6052's well-known NAT64 prefix, RFC 2765's
# IPv4-translated and RFC 4291's IPv4-compatible (deprecated) forms. ::ffff:0:0/96 (mapped) is
# ``ipv4_mapped``, 6to4 ``sixtofour``.
_EMBEDDING = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96"))
# Never public, whatever Python's table of the day says: RFC 8215's local-use NAT64 prefix (which
# embeds at a length only its network knows) and the deprecated site-local fec0::/10.
_NEVER_PUBLIC = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b:1::/48", "fec0::/10"))


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or next(
            (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) for net in _EMBEDDING if ip in net), None)
        if embedded is not None:
            return _is_public(embedded)
        if ip.teredo is not None:
            return all(_is_public(end) for end in ip.teredo)  # (server, client)
        if any(ip in net for net in _NEVER_PUBLIC):
            return False
    return ip.is_global and not ip.is_multicast


DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_ENTRY_CHARS = 300


@dataclass(frozen=True)
class Entry:
    """One entry of an allowed-hosts list, taken apart. ``name`` (a host name) or ``network`` (an address
    or CIDR range) says which hosts; ``port`` and ``scheme``, when set, narrow it to that port and scheme."""

    name: str | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    port: int | None = None
    scheme: str | None = None


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or not 0 < int(text) <= 65535:
        raise ValueError(text)
    return int(text)


def _host(text: str) -> tuple[str | None, ipaddress.IPv4Network | ipaddress.IPv6Network | None]:
    """(name, None) or (None, the address as a one-address network); ValueError for neither."""
    literal = ip_literal(text)
    if literal is not None:
        return None, ipaddress.ip_network(literal)
    if not text or not text.isascii() or any(ch in text for ch in "/\\@?#[]:%"):
        raise ValueError(text)
    return text, None


def parse_entry(entry: str) -> Entry | None:
    """An entry of ``allowed_custom_hosts`` (or of ``webhooks.allowed_hosts``), or None when it is none of
    the forms below (such an entry allows nothing, as before these forms were read):

    - ``llm.internal``, ``10.1.2.3``, ``::1``, ``10.0.0.0/8``: that host or range, any port, either scheme;
    - ``llm.internal:8443``, ``10.1.2.3:8443``, ``[fd00::5]:8443``: that host, that port only, either scheme;
    - ``https://llm.internal:8443``, ``http://10.1.2.3``: that scheme, host and port only; a URL without a
      port means its scheme's own (443, 80), as a browser reads it. A path other than ``/``, a query or
      credentials make the entry invalid, as does a range in a URL or beside a port.
    """
    text = str(entry).strip().lower()
    if not text or len(text) > MAX_ENTRY_CHARS or any(ch.isspace() or ord(ch) < 32 for ch in text):
        return None
    try:
        if "://" in text:
            parts = urlsplit(text)
            port = parts.port
            if (parts.scheme not in DEFAULT_PORTS or not parts.hostname or port == 0 or parts.username is not None
                    or parts.password is not None or parts.path not in ("", "/") or parts.query
                    or parts.fragment):
                return None
            name, network = _host(parts.hostname)
            return Entry(name, network, port or DEFAULT_PORTS[parts.scheme], parts.scheme)
        try:  # an address, or a CIDR range: any port
            return Entry(None, ipaddress.ip_network(text, strict=False))
        except ValueError:
            pass
        if text.startswith("["):  # [v6] or [v6]:port
            host, sep, rest = text.partition("]")
            if not sep or (rest and not rest.startswith(":")):
                return None
            name, network = _host(host + "]")
            return Entry(name, network, _port(rest[1:]) if rest else None)
        host, sep, port_text = text.partition(":")
        if ":" in port_text:
            return None  # neither an IPv6 address (read above) nor host:port
        name, network = _host(host)
        return Entry(name, network, _port(port_text) if sep else None)
    except ValueError:
        return None


@functools.lru_cache(maxsize=64)
def entries(allowed: tuple[str, ...]) -> tuple[Entry, ...]:
    """The usable entries of a list (parsed once per list: the check runs on every connect)."""
    return tuple(e for e in map(parse_entry, allowed) if e is not None)


def invalid_entries(allowed: list[str]) -> list[str]:
    """The entries of a list that allow nothing because they are none of ``parse_entry``'s forms."""
    return [entry for entry in allowed if parse_entry(entry) is None]


def _listed(host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, allowed: list[str],
            port: int | None = None, scheme: str | None = None) -> bool:
    """Whether the list names this host (by name, or ``ip`` by address or range) for this port and scheme.
    An entry with a port matches only a connection whose port is known and the same, one with a scheme
    only a connection whose scheme is known and the same: a caller that cannot tell passes None, and
    such entries then allow nothing there."""
    host = host.lower()
    for entry in entries(tuple(allowed)):
        if entry.port is not None and entry.port != port:
            continue
        if entry.scheme is not None and entry.scheme != scheme:
            continue
        if entry.name is not None:
            if entry.name == host:
                return True
        elif ip is not None and entry.network is not None and ip in entry.network:
            return True
    return False


def url_listed(parts: SplitResult, allowed: list[str]) -> bool:
    """Whether a list names a URL's host (its name, or the address it spells) for its port and scheme,
    without resolving anything: a connection's ``allowed_client_hosts``."""
    host = (parts.hostname or "").lower()
    scheme = parts.scheme.lower()
    return _listed(host, ip_literal(host), [str(entry) for entry in allowed], parts.port or DEFAULT_PORTS.get(scheme),
                   scheme)


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a URL's host spells out literally (``[::ffff:a9fe:a9fe]`` included), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def address_allowed(host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allowed: list[str],
                    port: int | None = None, scheme: str | None = None) -> bool:
    """Whether a connection to ``ip`` (which ``host`` resolved to, or spells) on ``port`` with ``scheme`` may
    be opened: a public address always; any other only when the list names it for that port and scheme."""
    return _is_public(ip) or _listed(host, ip, allowed, port, scheme)


async def lookup(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses ``host`` resolves to (raises OSError when it does not)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def refusal(host: str, param: str = "x-portkey-custom-host", what: str = "x-portkey-custom-host") -> InvalidRequest:
    return InvalidRequest(
        f"{what} '{host}' points at a private, loopback, link-local or metadata address, "
        "which this gateway does not allow (the operator can list it in allowed_custom_hosts).",
        param=param, code="custom_host_not_allowed")


class HostNotAllowed(OSError):
    """Raised inside aiohttp's connect when a client-chosen name resolves to a refused address."""

    def __init__(self, host: str) -> None:
        super().__init__(f"'{host}' resolved to an address this gateway does not allow")
        self.host = host


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for the session that serves client-chosen hosts: every address it hands to the
    connector passes the same rule as ``check_custom_host``, or the connection is never opened.

    aiohttp hands a resolver the host and port, not the scheme: a session whose resolver is to honour
    entries that name a scheme (``https://llm.internal:8443``) serves that scheme only, and says so in
    ``scheme`` (``Upstream`` keeps one guarded session per scheme). With ``scheme`` None such entries
    allow nothing."""

    def __init__(self, allowed: list[str], scheme: str | None = None) -> None:
        self._allowed = allowed
        self._scheme = scheme
        self._inner: AbstractResolver | None = None

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = DefaultResolver()
        results = await self._inner.resolve(host, port, family)
        for result in results:
            ip = ipaddress.ip_address(str(result["host"]).split("%")[0])
            if not address_allowed(host.lower(), ip, self._allowed, port or None, self._scheme):
                raise HostNotAllowed(host)
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


# Verdicts of check_custom_host that let a URL through, per (url, allowed list), for a short time: the
# same custom host arrives on every request of a client, and parsing it (urlsplit, ipaddress, the allowed
# list as networks) cost ~10 µs of CPU each time, 2-5 % of a proxied request. As long as aiohttp's DNS
# cache of the guarded pool (ttl_dns_cache=10): a name's addresses are taken as this old either way, and
# the connect-time check (GuardedResolver, Upstream._session_for for literals) still runs on every new
# connection. Refusals are not cached (each raises anew, with its own param and wording).
VERDICT_SECONDS = 10.0
MAX_URL_CHARS = 2048
VERDICTS_KEPT = 1024
_verdicts: dict[tuple[str, tuple[str, ...]], tuple[float, str]] = {}


async def check_custom_host(url: str, allowed: list[str], param: str = "x-portkey-custom-host",
                            what: str = "x-portkey-custom-host") -> str:
    """Validate a client-chosen URL; returns it normalised (no trailing slash) or raises a 400.

    ``what`` names the URL in messages and ``param`` in the error's ``param`` (the same rule also guards
    other URLs a client hands the gateway, such as a service account's ``token_uri``)."""
    key = (url, tuple(allowed))
    now = time.monotonic()
    cached = _verdicts.get(key)
    if cached is not None and now - cached[0] < VERDICT_SECONDS:
        return cached[1]
    checked = await _check_custom_host(url, allowed, param, what)
    if len(_verdicts) >= VERDICTS_KEPT:
        _verdicts.clear()
    _verdicts[key] = (now, checked)
    return checked


@functools.lru_cache(maxsize=1024)  # pure, and the same few hosts arrive on every request; a raise is not cached
def split_client_url(url: str, param: str = "x-portkey-custom-host",
                     what: str = "x-portkey-custom-host") -> SplitResult:
    """A client-chosen URL taken apart, or a 400 saying what is wrong with it: an http(s) URL with a
    host and, if any, a port from 1 to 65535; no credentials, whitespace or control characters (which
    would otherwise reach a header or the request line). Parsing alone: resolving is the caller's."""
    def bad(why: str) -> InvalidRequest:
        return InvalidRequest(f"{what} {why}.", param=param, code="invalid_custom_host")

    if len(url) > MAX_URL_CHARS:
        raise bad(f"is longer than {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise bad("must not hold whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # an unclosed or bad IPv6 bracket, a port that is not a number 0-65535
        raise bad(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad("must be an http(s) URL with a host")
    if port == 0:
        raise bad("must not name port 0")
    if parts.username or parts.password:
        raise bad("must not carry credentials")
    return parts


async def _check_custom_host(url: str, allowed: list[str], param: str, what: str) -> str:
    parts = split_client_url(url, param, what)
    host = (parts.hostname or "").lower()
    scheme = parts.scheme.lower()
    port = parts.port or DEFAULT_PORTS[scheme]
    refused = refusal(host, param, what)
    if host in METADATA_NAMES and not _listed(host, None, allowed, port, scheme):
        raise refused
    try:
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = await lookup(host, port)
        except (OSError, UnicodeError) as exc:  # UnicodeError: not a valid name at all (empty or 64+ char label)
            raise InvalidRequest(f"{what} '{host}' does not resolve.", param=param,
                                 code="invalid_custom_host") from exc
    if not all(address_allowed(host, address, allowed, port, scheme) for address in addresses):
        raise refused
    return url.rstrip("/")
