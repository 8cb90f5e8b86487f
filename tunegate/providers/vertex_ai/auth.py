"""OAuth access tokens for Vertex AI and Cloud Storage.

Where the credential comes from, first match wins:

1. a service-account JSON: header ``x-portkey-vertex-service-account-json`` (raw JSON, or base64 of it), or the
   connection secret ``service_account_json`` / ``vertex_service_account_json``;
2. an access token sent as the provider key (``Authorization: Bearer ya29…``), used as is.

A service account's token is minted with google-auth (``Credentials.from_service_account_info(..., scopes=
[cloud-platform])`` then ``refresh``, a blocking HTTP call to the JSON's ``token_uri``) in a short-lived child
process (``mint.py`` says why). The ``token_uri`` is a URL the client chose, so it passes the same check as
``x-portkey-custom-host`` before anything is sent there. Tokens are cached per service account (client e-mail,
key id, token URI) until ``REFRESH_MARGIN`` seconds before they expire; a per-account lock makes concurrent
requests mint once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from tunegate.errors import APIError, InvalidRequest, Unauthorized, UpstreamTimeout, UpstreamUnreachable
from tunegate.hosts import check_custom_host, refusal

if TYPE_CHECKING:
    from tunegate.context import RequestContext

REFRESH_MARGIN = 300.0  # seconds before expiry at which a cached token is minted again
MINT_TIMEOUT = 30.0  # seconds for the child: start-up, google-auth, the token endpoint
MINTS_AT_ONCE = 4  # child processes per gateway process (a burst of new accounts waits its turn)
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
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
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

    def _mint_slot(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._guard:
            return self._slots.setdefault(loop, asyncio.Semaphore(MINTS_AT_ONCE))

    def forget(self, info: dict[str, Any]) -> None:
        """Drop a cached token (after the provider refused it)."""
        self._tokens.pop(self.cache_key(info), None)

    async def token(self, info: dict[str, Any], allowed_hosts: list[str]) -> str:
        """A valid access token for ``info``; ``allowed_hosts`` is the operator's custom-host list."""
        key = self.cache_key(info)
        cached = self._tokens.get(key)
        if cached and cached.expires_at - REFRESH_MARGIN > time.time():
            return cached.value
        async with self._lock(key):
            cached = self._tokens.get(key)  # another request may have minted it while we waited
            if cached and cached.expires_at - REFRESH_MARGIN > time.time():
                return cached.value
            await check_custom_host(str(info["token_uri"]), allowed_hosts, param=SA_HEADER,
                                    what="The service account's token_uri")
            async with self._mint_slot():
                minted = await _mint(info, allowed_hosts)
            self.mints += 1
            self._tokens[key] = minted
            return minted.value


async def _mint(info: dict[str, Any], allowed_hosts: list[str]) -> _Token:
    """Run ``mint.py`` in a child process and read its answer."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tunegate.providers.vertex_ai.mint", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)  # stderr could quote the key
    try:
        async with asyncio.timeout(MINT_TIMEOUT):
            out, _ = await child.communicate(orjson.dumps({"service_account": info, "allowed_hosts": allowed_hosts}))
    except TimeoutError:
        raise UpstreamTimeout("The service account's token endpoint did not answer in time.") from None
    finally:  # timed out, or the request was cancelled: the child must not outlive it
        if child.returncode is None:
            child.kill()
            await asyncio.shield(child.wait())
    try:
        answer = orjson.loads(out)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise APIError("Minting the service account's access token failed unexpectedly.", status=502,
                       code="token_mint_failed")
    if "token" in answer:
        return _Token(str(answer["token"]), float(answer["expires_at"]))
    kind, message = answer.get("error"), str(answer.get("message", ""))
    if kind == "invalid":
        raise InvalidRequest(message, param=SA_HEADER, code="invalid_service_account")
    if kind == "refused":
        raise Unauthorized(f"Google refused the service account's token request: {message}",
                           code="invalid_service_account")
    if kind == "unreachable":
        raise UpstreamUnreachable(message)
    if kind == "host_not_allowed":  # the token_uri's name rebound to a refused address after our check
        raise refusal(urlsplit(str(info["token_uri"])).hostname or "", SA_HEADER, "The service account's token_uri")
    raise APIError(message or "Minting the access token failed.", status=500,
                   code="missing_dependency" if kind == "missing_dependency" else "token_mint_failed")
