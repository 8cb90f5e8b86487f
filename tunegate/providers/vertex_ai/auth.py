"""OAuth access tokens for Vertex AI and Cloud Storage.

Where the credential comes from, first match wins:

1. a service-account JSON: header ``x-portkey-vertex-service-account-json`` (raw JSON, or base64 of it), or the
   connection secret ``service_account_json`` / ``vertex_service_account_json``;
2. an access token sent as the provider key (``Authorization: Bearer ya29…``), used as is.

A service account's token is minted with google-auth (``Credentials.from_service_account_info(..., scopes=
[cloud-platform])`` then ``refresh``). ``refresh`` is a blocking HTTP call to the JSON's ``token_uri``: it runs in a
worker thread. Tokens are cached per service account (client e-mail, key id, token URI) until
``REFRESH_MARGIN`` seconds before they expire; a per-account lock makes concurrent requests mint once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any

import orjson

from tunegate.errors import APIError, InvalidRequest, Unauthorized, UpstreamUnreachable

if TYPE_CHECKING:
    from tunegate.context import RequestContext

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
REFRESH_MARGIN = 300.0  # seconds before expiry at which a cached token is minted again
SA_OPTION = "vertex_service_account_json"
SA_SECRETS = ("service_account_json", "vertex_service_account_json")
SA_HEADER = "x-portkey-vertex-service-account-json"


@dataclass
class _Token:
    value: str
    expires_at: float  # unix seconds


def service_account_info(ctx: RequestContext) -> dict[str, Any] | None:
    """The service-account JSON given for this request, parsed; None when there is none."""
    raw: Any = ctx.option(SA_OPTION)
    if raw is None:
        for name in SA_SECRETS:
            if ctx.credentials.get(name):
                raw = ctx.credentials[name]
                break
    if raw is None:
        return None
    if isinstance(raw, dict):
        info = raw
    else:
        text = str(raw).strip()
        if not text.startswith("{"):
            try:
                text = base64.b64decode(text, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise InvalidRequest(f"'{SA_HEADER}' is neither JSON nor base64-encoded JSON.",
                                     param=SA_HEADER, code="invalid_service_account") from None
        try:
            info = orjson.loads(text)
        except orjson.JSONDecodeError:
            # Never echo the value: it holds a private key.
            raise InvalidRequest(f"'{SA_HEADER}' is not valid JSON.", param=SA_HEADER,
                                 code="invalid_service_account") from None
    if not isinstance(info, dict):
        raise InvalidRequest(f"'{SA_HEADER}' must be a JSON object.", param=SA_HEADER,
                             code="invalid_service_account")
    missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
    if missing:
        raise InvalidRequest(f"The service-account JSON lacks '{missing[0]}'.", param=SA_HEADER,
                             code="invalid_service_account")
    return info


class TokenSource:
    """Mints and caches access tokens. One per adapter (process-wide); safe across event loops."""

    def __init__(self) -> None:
        self._tokens: dict[str, _Token] = {}
        self._guard = threading.Lock()  # protects _locks (adapters are shared by every loop in the process)
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
            weakref.WeakKeyDictionary())
        self.mints = 0  # how many tokens were minted (for tests and logs)

    @staticmethod
    def cache_key(info: dict[str, Any]) -> str:
        ident = f"{info['client_email']}|{info.get('private_key_id', '')}|{info['token_uri']}"
        # The private key is part of the key too, so two JSONs that differ only there never share a token.
        return hashlib.sha256((ident + "|" + str(info["private_key"])).encode()).hexdigest()

    def _lock(self, key: str) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._guard:
            per_loop = self._locks.setdefault(loop, {})
            return per_loop.setdefault(key, asyncio.Lock())

    def forget(self, info: dict[str, Any]) -> None:
        """Drop a cached token (after the provider refused it)."""
        self._tokens.pop(self.cache_key(info), None)

    async def token(self, info: dict[str, Any]) -> str:
        key = self.cache_key(info)
        cached = self._tokens.get(key)
        if cached and cached.expires_at - REFRESH_MARGIN > time.time():
            return cached.value
        async with self._lock(key):
            cached = self._tokens.get(key)  # another request may have minted it while we waited
            if cached and cached.expires_at - REFRESH_MARGIN > time.time():
                return cached.value
            minted = await asyncio.to_thread(_mint, info)
            self.mints += 1
            self._tokens[key] = minted
            return minted.value


def _transport() -> Any:
    try:
        from google.auth.transport.requests import Request

        return Request()
    except ImportError:  # google-auth without its `requests` extra: urllib3 is always there with it
        import urllib3
        from google.auth.transport.urllib3 import Request as Urllib3Request

        return Urllib3Request(urllib3.PoolManager())


def _mint(info: dict[str, Any]) -> _Token:
    """Blocking: build the credentials and call the token endpoint (runs in a worker thread)."""
    try:
        from google.auth import exceptions as gexc
        from google.oauth2 import service_account
    except ImportError as exc:  # pragma: no cover - the `cloud` extra is missing
        raise APIError("Vertex AI service-account auth needs google-auth (pip install 'tunegate[cloud]').",
                       status=500, code="missing_dependency") from exc
    try:
        creds = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"The service-account JSON is not usable: {type(exc).__name__}.", param=SA_HEADER,
                             code="invalid_service_account") from None
    try:
        creds.refresh(_transport())
    except gexc.RefreshError as exc:
        # RefreshError carries the token endpoint's error (e.g. "invalid_grant: Invalid JWT Signature.").
        reason = str(exc.args[0]) if exc.args else "refused"
        raise Unauthorized(f"Google refused the service account's token request: {reason}",
                           code="invalid_service_account") from None
    except gexc.TransportError as exc:
        raise UpstreamUnreachable("Could not reach the service account's token endpoint.") from exc
    expiry = creds.expiry  # naive UTC datetime
    expires_at = expiry.replace(tzinfo=UTC).timestamp() if expiry is not None else time.time() + 3600
    return _Token(str(creds.token), expires_at)
