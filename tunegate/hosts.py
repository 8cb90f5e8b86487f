"""Checks on ``x-portkey-custom-host``: where a client may point the gateway.

Portkey's rule: loopback is trusted by default (local development); the operator's list replaces that
default; private, link-local, metadata and other non-public addresses are refused unless listed.
The check runs on the addresses the name resolves to, not only on the string, so a public-looking
name that resolves to 169.254.169.254 is refused too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from tunegate.errors import InvalidRequest

METADATA_NAMES = {"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"}


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return _is_public(ip.ipv4_mapped)
    return ip.is_global and not ip.is_multicast


def _listed(host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, allowed: list[str]) -> bool:
    for entry in allowed:
        if entry.lower() == host:
            return True
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


async def check_custom_host(url: str, allowed: list[str], param: str = "x-portkey-custom-host",
                            what: str = "x-portkey-custom-host") -> str:
    """Validate a client-chosen URL; returns it normalised (no trailing slash) or raises a 400.

    ``what`` names the URL in messages and ``param`` in the error's ``param`` (the same rule also guards
    other URLs a client hands the gateway, such as a service account's ``token_uri``)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidRequest(f"{what} must be an http(s) URL with a host.", param=param, code="invalid_custom_host")
    if parts.username or parts.password:
        raise InvalidRequest(f"{what} must not carry credentials.", param=param, code="invalid_custom_host")
    refused = InvalidRequest(
        f"{what} '{host}' points at a private, loopback, link-local or metadata address, "
        "which this gateway does not allow (the operator can list it in allowed_custom_hosts).",
        param=param, code="custom_host_not_allowed")
    if host in METADATA_NAMES and not _listed(host, None, allowed):
        raise refused
    try:
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise InvalidRequest(f"{what} '{host}' does not resolve.", param=param,
                                 code="invalid_custom_host") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        if not _is_public(address) and not _listed(host, address, allowed):
            raise refused
    return url.rstrip("/")
