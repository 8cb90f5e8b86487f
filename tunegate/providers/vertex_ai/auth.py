"""OAuth access tokens for Vertex AI and Cloud Storage.

Where the credential comes from, first match wins:

1. a credential JSON: header ``x-portkey-vertex-service-account-json`` (raw JSON, or base64 of it), or the
   connection secret ``service_account_json`` / ``vertex_service_account_json``: a service-account key, or a keyless
   one — an ``external_account`` (workload identity federation, subject token from a URL) or an
   ``impersonated_service_account`` (from a service account or an authorized user);
2. an access token sent as the provider key (``Authorization: Bearer ya29…``), used as is.

The token is minted with google-auth (the credential class of the JSON's type, scopes [cloud-platform], then
``refresh``: blocking HTTP calls) in a short-lived child process (``mint.py`` says why). Every URL in the JSON
(``token_uri``, ``token_url``, the subject-token URL, the impersonation URL) is the client's choice, so each passes
the same check as ``x-portkey-custom-host`` before anything is sent there, and the child checks the addresses it
connects to again. Tokens are cached per credential (a digest of the whole JSON) until ``REFRESH_MARGIN`` seconds
before they expire; a per-credential lock makes concurrent requests mint once.
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
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # google.oauth2 credentials' default token_uri
# The credential JSON types taken, and what each needs (google-auth 2.63.0: google/oauth2/service_account.py,
# google/auth/identity_pool.py + external_account.py, google/auth/impersonated_credentials.py
# `from_impersonated_service_account_info`, google/oauth2/credentials.py `from_authorized_user_info`).
KINDS = ("service_account", "external_account", "impersonated_service_account")
SOURCE_TYPES = ("service_account", "authorized_user")  # what an impersonated account may start from
REQUIRED = {"service_account": ("client_email", "private_key", "token_uri"),
            "external_account": ("audience", "subject_token_type", "token_url", "credential_source"),
            "impersonated_service_account": ("service_account_impersonation_url", "source_credentials"),
            "authorized_user": ("client_id", "client_secret", "refresh_token")}
# credential_source keys that read the gateway host: files, commands, client certificates, AWS metadata.
LOCAL_SOURCES = {"file", "executable", "certificate", "environment_id", "regional_cred_verification_url"}


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
    _check_kind(info)
    return info


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, param=SA_HEADER, code="invalid_service_account")


def _check_kind(info: dict[str, Any], *, nested: bool = False) -> None:
    """The credential JSON holds what its type needs, and nothing that would make the gateway read its own
    files, run commands or ask its own metadata server (google-auth's external accounts can: the JSON comes
    from a client, so only a subject token fetched from a URL is taken)."""
    kind = info.get("type", "service_account")
    allowed = SOURCE_TYPES if nested else KINDS
    if kind not in allowed:
        where = "an impersonated account's source_credentials" if nested else "this gateway"
        raise _invalid(f"Credential type '{str(kind)[:40]}' is not accepted by {where} (one of: {', '.join(allowed)}).")
    missing = [k for k in REQUIRED[kind] if not info.get(k)]
    if missing:
        raise _invalid(f"The {kind} credential JSON lacks '{missing[0]}'.")
    if kind == "external_account":
        source = info["credential_source"]
        if not isinstance(source, dict) or not isinstance(source.get("url"), str) or source.keys() & LOCAL_SOURCES:
            raise _invalid("An external_account's credential_source must fetch the subject token from a 'url'; "
                           "file, executable, certificate and AWS sources would read this gateway's own files, "
                           "commands or metadata, and are refused.")
    if kind == "impersonated_service_account":
        if not isinstance(info["source_credentials"], dict):
            raise _invalid("source_credentials must be a JSON object.")
        _check_kind(info["source_credentials"], nested=True)
        if ":generateAccessToken" not in str(info["service_account_impersonation_url"]):
            raise _invalid("service_account_impersonation_url must name an IAM ':generateAccessToken' method.")
    for field, url in credential_urls(info):
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise _invalid(f"The credential's {field} must be an http(s) URL.")


def credential_urls(info: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every URL google-auth would connect to for this credential: each passes the custom-host rule first."""
    kind = info.get("type", "service_account")
    if kind == "external_account":
        found = [("token_url", info.get("token_url")), ("credential_source.url", info["credential_source"].get("url"))]
        if info.get("service_account_impersonation_url"):
            found.append(("service_account_impersonation_url", info["service_account_impersonation_url"]))
        return found
    if kind == "impersonated_service_account":
        source = info["source_credentials"]
        return [("service_account_impersonation_url", info.get("service_account_impersonation_url")),
                *((f"source_credentials.{f}", u) for f, u in credential_urls(source))]
    if kind == "authorized_user":
        return [("token_uri", info.get("token_uri") or GOOGLE_TOKEN_URI)]
    return [("token_uri", info.get("token_uri"))]


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
        # The whole JSON (keys sorted), so two credentials that differ anywhere — a private key, an audience,
        # a subject-token URL, the account impersonated — never share a token.
        return hashlib.sha256(orjson.dumps(info, option=orjson.OPT_SORT_KEYS)).hexdigest()

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
            for field, url in credential_urls(info):
                await check_custom_host(str(url), allowed_hosts, param=SA_HEADER, what=f"The credential's {field}")
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
    if kind == "host_not_allowed":  # a URL's name rebound to a refused address after our check
        field = next((f for f, url in credential_urls(info) if urlsplit(str(url)).hostname == message), "host")
        raise refusal(message, SA_HEADER, f"The credential's {field}")
    raise APIError(message or "Minting the access token failed.", status=500,
                   code="missing_dependency" if kind == "missing_dependency" else "token_mint_failed")
