"""Microsoft Entra ID tokens for Azure OpenAI: minted by azure-identity's async credentials from a service
principal (client id, secret, tenant) or the gateway host's managed identity, cached per credential and
refreshed before they expire. The token goes upstream as ``Authorization: Bearer`` instead of ``api-key``.

The token endpoint (``login.microsoftonline.com``, or ``AZURE_AUTHORITY_HOST``, or a connection's
``azure_authority_host``; the managed-identity endpoint of the host) is reached by azure-identity itself,
not through ``ctx.upstream``: it is a host the operator chose, never one a request names.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunegate.errors import Forbidden, InvalidRequest, UpstreamError, UpstreamUnreachable

if TYPE_CHECKING:
    from tunegate.context import RequestContext

# The scope Azure's own SDK samples ask for (get_bearer_token_provider(..., ".../.default")).
SCOPE = "https://cognitiveservices.azure.com/.default"
# Refresh this long before expiry (azure-identity's DEFAULT_REFRESH_OFFSET), or halfway through a token
# that lives less than twice that.
REFRESH_MARGIN_S = 300.0
# Where ctx.credentials keeps the minted token for this request (credential values are redacted).
TOKEN_FIELD = "azure_entra_access_token"
AUTH_MODES = ("api_key", "entra", "managed")

# Connection secrets / header options, in Portkey's names first, then the short spellings.
_FIELDS = {"client_id": ("azure_entra_client_id", "azure_client_id"),
           "client_secret": ("azure_entra_client_secret", "azure_client_secret"),
           "tenant_id": ("azure_entra_tenant_id", "azure_tenant_id")}


@dataclass
class _Token:
    value: str
    expires_on: float
    refresh_at: float


_tokens: dict[str, _Token] = {}
_locks: dict[tuple[int, str], asyncio.Lock] = {}


def auth_mode(ctx: RequestContext) -> str:
    mode = str(ctx.option("azure_auth_mode", "api_key")).lower()
    if mode not in AUTH_MODES:
        raise InvalidRequest(f"x-portkey-azure-auth-mode must be one of {', '.join(AUTH_MODES)}.",
                             param="x-portkey-azure-auth-mode", code="invalid_provider_option")
    return mode


def _value(ctx: RequestContext, field: str) -> str | None:
    for name in _FIELDS[field]:
        value = ctx.credentials.get(name) or ctx.option(name)
        if value:
            return str(value)
    return None


async def access_token(ctx: RequestContext) -> str | None:
    """The Entra token this request sends, or None in api-key mode."""
    mode = auth_mode(ctx)
    if mode == "api_key":
        return None
    authority, managed_client_id = await _operator_settings(ctx, mode)
    if mode == "entra":
        tenant, client, secret = (_value(ctx, f) for f in ("tenant_id", "client_id", "client_secret"))
        if not (tenant and client and secret):
            raise InvalidRequest("Entra ID auth needs a client id, client secret and tenant id (connection secrets "
                                 "azure_entra_client_id/_secret/_tenant_id, or x-portkey-azure-entra-* headers).",
                                 param="x-portkey-azure-auth-mode", code="missing_provider_option")
        key = _key("entra", authority, tenant, client, secret)
    else:
        tenant = client = secret = None
        key = _key("managed", authority, managed_client_id or "")
    return await _cached(key, lambda: _mint(mode, authority, tenant, client, secret, managed_client_id))


async def _operator_settings(ctx: RequestContext, mode: str) -> tuple[str | None, str | None]:
    """The authority host and managed-identity client id: the operator's only. A request may not name the
    host a secret is sent to, nor borrow the gateway's own identity for a host it picked."""
    connection = await ctx.store.get_connection(ctx.connection) if ctx.store and ctx.connection else None
    stored = connection.options if connection is not None else {}
    for name in ("azure_authority_host", "azure_managed_client_id"):
        if ctx.option(name) not in (None, "") and stored.get(name) != ctx.option(name):
            raise Forbidden(f"x-portkey-{name.replace('_', '-')} can only be set by a connection.",
                            param=f"x-portkey-{name.replace('_', '-')}", code="option_locked")
    if mode == "managed":
        hosts_chosen = bool(ctx.policy.client_host) or any(
            ctx.option(n) not in (None, "") and stored.get(n) != ctx.option(n)
            for n in ("azure_endpoint", "azure_resource_name"))
        if stored.get("azure_auth_mode") != "managed" or hosts_chosen:
            raise Forbidden("Managed-identity auth is the gateway's own identity: only a connection can turn it "
                            "on, and the request may not choose the host.", param="x-portkey-azure-auth-mode",
                            code="managed_identity_not_allowed")
    authority = stored.get("azure_authority_host") or os.environ.get("AZURE_AUTHORITY_HOST")
    managed = stored.get("azure_managed_client_id")
    return (str(authority) if authority else None), (str(managed) if managed else None)


def _key(*parts: str | None) -> str:
    return hashlib.sha256("\x00".join(p or "" for p in parts).encode()).hexdigest()


async def _cached(key: str, mint: Any) -> str:
    token = _tokens.get(key)
    if token is not None and time.time() < token.refresh_at:
        return token.value
    # One mint at a time per credential (locks are per event loop: test gateways each run their own).
    lock = _locks.setdefault((id(asyncio.get_running_loop()), key), asyncio.Lock())
    async with lock:
        token = _tokens.get(key)
        if token is None or time.time() >= token.refresh_at:
            value, expires_on = await mint()
            now = time.time()
            margin = min(REFRESH_MARGIN_S, max(expires_on - now, 0) / 2)
            token = _Token(value, expires_on, expires_on - margin)
            _tokens[key] = token
        return token.value


async def _mint(mode: str, authority: str | None, tenant: str | None, client: str | None, secret: str | None,
                managed_client_id: str | None) -> tuple[str, float]:
    """A new token from azure-identity's aio credentials (no blocking I/O on the loop); the credential and
    its session are closed right after, so nothing outlives the request's event loop."""
    from azure.core.exceptions import AzureError, ClientAuthenticationError
    from azure.identity import CredentialUnavailableError
    from azure.identity.aio import ClientSecretCredential, ManagedIdentityCredential

    kwargs: dict[str, Any] = {}
    if ca_bundle := os.environ.get("SSL_CERT_FILE"):  # a private CA in front of the token endpoint
        kwargs["connection_verify"] = ca_bundle
    credential: Any
    if mode == "entra":
        assert tenant and client and secret
        if authority:
            kwargs["authority"] = authority
        credential = ClientSecretCredential(tenant, client, secret, **kwargs)
    else:
        credential = ManagedIdentityCredential(client_id=managed_client_id, **kwargs)
    try:
        async with credential:
            token = await credential.get_token(SCOPE)
    except CredentialUnavailableError as exc:
        raise UpstreamUnreachable("No managed identity is available to the gateway for Azure OpenAI.",
                                  code="entra_unavailable") from exc
    except ClientAuthenticationError as exc:
        # azure-identity's message names the tenant and client, never the secret; keep only the status.
        raise UpstreamError("Microsoft Entra ID refused the credentials for Azure OpenAI.", status=401,
                            code="entra_authentication_failed") from exc
    except AzureError as exc:  # the token endpoint could not be reached
        raise UpstreamUnreachable("Microsoft Entra ID could not be reached for an Azure OpenAI token.",
                                  code="entra_unreachable") from exc
    except ValueError as exc:  # a malformed tenant id or authority
        raise InvalidRequest(f"Entra ID settings are invalid: {str(exc)[:200]}", param="x-portkey-azure-auth-mode",
                             code="invalid_provider_option") from exc
    return token.token, float(token.expires_on)
