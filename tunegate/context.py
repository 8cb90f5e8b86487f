"""RequestContext: who is calling, which provider, which credential — resolved once per request,
before any provider code runs.

Resolution order for the provider: ``x-portkey-provider``; the provider of the connection named by
``x-portkey-virtual-key``; ``provider`` in the JSON of ``x-portkey-config``; the provider recorded for
the job or file id in the path; the operator's default provider.

Credentials: ``x-portkey-api-key`` or ``Authorization: Bearer`` carry either a tunegate key
(``tg-…``), which authenticates and maps to stored connections, or the provider's own key. With no
tunegate keys configured the gateway is open and provider keys pass through.
"""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from tunegate.config import RetryPolicy, Settings, Timeouts
from tunegate.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from tunegate.files import FileStore
from tunegate.hosts import check_custom_host
from tunegate.limits import RateLimiter
from tunegate.providers import canonical_name, known_names, provider_named
from tunegate.providers.base import Provider
from tunegate.providers.paging import Pending
from tunegate.store import ApiKey, Connection, Store, StoredObject
from tunegate.store.secretbox import KEY_PREFIX
from tunegate.upstream import CallPolicy, Upstream

# x-portkey-* headers the context itself consumes; every other one is a provider option.
_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "service_account")
_CONTEXT_HEADERS = {"provider", "api-key", "virtual-key", "config", "custom-host", "trace-id",
                    "request-timeout"}


@dataclass
class RequestContext:
    trace_id: str
    provider: Provider
    upstream: Upstream
    policy: CallPolicy
    key: ApiKey | None = None
    connection: str | None = None
    credentials: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # provider options: headers + connection
    base_url_override: str | None = None
    settings: Settings | None = None
    store: Store | None = None
    files: FileStore | None = None
    upstream_status: int | None = None  # for the request log
    idempotent_create: bool = False  # set when tunegate holds an Idempotency-Key for this create
    idempotency_key: str | None = None  # the client's key, for providers that accept a token (Bedrock)
    page_cursor: Pending | None = None  # a listing's next position, saved once its visible items are known
    # Headers an adapter adds to this request's answer (e.g. a provider's deprecation Warning); the app
    # puts them on the response, errors included.
    response_headers: dict[str, str] = field(default_factory=dict)

    @property
    def provider_name(self) -> str:
        return self.provider.name

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None

    def require_store(self) -> tuple[Store, FileStore]:
        """The database and the managed file store (providers that keep files in tunegate use both)."""
        if self.store is None or self.files is None:
            raise RuntimeError("this context has no storage")
        return self.store, self.files

    def option(self, name: str, default: Any = None) -> Any:
        """A provider option such as ``azure_resource_name``: from the request's
        ``x-portkey-azure-resource-name`` header, else from the connection."""
        value = self.options.get(name)
        return default if value in (None, "") else value

    def require_option(self, name: str) -> Any:
        value = self.option(name)
        if value is None:
            header = "x-portkey-" + name.replace("_", "-")
            raise InvalidRequest(f"Provider '{self.provider.name}' needs '{header}' (or a connection that sets "
                                 f"'{name}').", param=header, code="missing_provider_option")
        return value

    def redact(self, text: str) -> str:
        """Remove every credential value from a text (providers sometimes echo keys back): the
        credentials, and options whose names say they are secret (e.g. x-portkey-aws-session-token)."""
        secret_options = [v for k, v in self.options.items() if any(w in k for w in _SECRET_WORDS)]
        for value in [*self.credentials.values(), *secret_options]:
            if isinstance(value, str) and len(value) >= 6 and value in text:
                text = text.replace(value, "***")
        return text


def _configured_base_url(settings: Settings, provider: Provider) -> str | None:
    """The operator's `[providers.<name>] base_url`, under the canonical name or an alias (a config file
    written before the names became Portkey's still applies)."""
    for name in (provider.name, *provider.aliases):
        if url := settings.provider_base_url(name):
            return url
    return None


def _header_options(headers: Mapping[str, str]) -> dict[str, str]:
    options = {}
    for name, value in headers.items():
        if name.startswith("x-portkey-"):
            suffix = name[len("x-portkey-"):]
            if suffix not in _CONTEXT_HEADERS:
                options[suffix.replace("-", "_")] = value
    return options


def _bearer(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _parse_config(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        config = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("x-portkey-config is not valid JSON.", param="x-portkey-config",
                             code="invalid_config") from exc
    if not isinstance(config, dict):
        raise InvalidRequest("x-portkey-config must be a JSON object.", param="x-portkey-config",
                             code="invalid_config")
    return config


class ContextResolver:
    """Turns request headers (and an object id from the path) into a RequestContext."""

    def __init__(self, settings: Settings, store: Store, upstream: Upstream, files: FileStore) -> None:
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self.files = files
        self.rates = RateLimiter()

    async def resolve(self, headers: Mapping[str, str], trace_id: str,
                      ref: tuple[str, str] | None = None, default_provider: str | None = None) -> RequestContext:
        config = _parse_config(headers.get("x-portkey-config"))
        key, provider_key = await self._authenticate(headers)
        if key is not None and (limit := key.rate_limit_per_min or self.settings.rate_limit_per_min):
            self.rates.check(key.id, limit)

        connection = await self._named_connection(headers.get("x-portkey-virtual-key") or config.get("virtual_key"))
        recorded = await self._recorded(ref, key)
        provider_name = (headers.get("x-portkey-provider") or (connection.provider if connection else None)
                         or config.get("provider") or (recorded.provider if recorded else None)
                         or default_provider or self.settings.default_provider)
        if not provider_name:
            raise InvalidRequest("No provider given: send the 'x-portkey-provider' header (e.g. "
                                 "'x-portkey-provider: openai').", param="x-portkey-provider",
                                 code="missing_provider")
        provider = provider_named(provider_name)  # Portkey's slug or one of the provider's aliases
        if provider is None:
            raise InvalidRequest(f"Unknown provider '{provider_name}'. Known providers: "
                                 f"{known_names()}.", param="x-portkey-provider",
                                 code="unknown_provider")
        provider_name = provider.name
        # Stored names are canonical (migration 0004, Store.add_connection); canonical_name() keeps a row
        # written by an older gateway working.
        if connection is not None and canonical_name(connection.provider) != provider_name:
            raise InvalidRequest(f"Connection '{connection.name}' is for provider '{connection.provider}', "
                                 f"not '{provider_name}'.", param="x-portkey-virtual-key")
        if (connection is None and recorded is not None and recorded.connection
                and canonical_name(recorded.provider) == provider_name):
            connection = await self.store.get_connection(recorded.connection)
        if connection is None and key is not None:
            connection = await self._granted_connection(key, provider_name)

        ctx = RequestContext(trace_id=trace_id, provider=provider, upstream=self.upstream,
                             policy=self._policy(headers, config, connection), key=key, settings=self.settings,
                             store=self.store, files=self.files)
        if connection is not None:
            if key is not None and not key.may_use(connection.name):
                raise Forbidden(f"This key is not granted the connection '{connection.name}'.",
                                param="x-portkey-virtual-key")
            ctx.connection = connection.name
            ctx.credentials = dict(connection.secrets)
            ctx.options = dict(connection.options)
            ctx.base_url_override = connection.base_url

        if provider_key and (key is None or key.allow_provider_keys):
            ctx.credentials[provider.credential_field] = provider_key
        elif key is not None and connection is None:
            raise Forbidden(f"This key has no connection for provider '{provider_name}'.",
                            param="x-portkey-provider", code="no_connection")
        ctx.options.update(_header_options(headers))
        custom_host = await self._custom_host(headers.get("x-portkey-custom-host"))
        if custom_host:
            # Calls to it resolve through the guard again (see tunegate.hosts: DNS rebinding).
            ctx.policy.client_host = (urlsplit(custom_host).hostname or "").lower()
        ctx.base_url_override = (custom_host or ctx.base_url_override
                                 or _configured_base_url(self.settings, provider))
        return ctx

    async def _authenticate(self, headers: Mapping[str, str]) -> tuple[ApiKey | None, str | None]:
        """(tunegate key, provider key). x-portkey-api-key decides when both headers are present."""
        header_key = headers.get("x-portkey-api-key") or None
        bearer = _bearer(headers)
        candidates = [k for k in (header_key, bearer) if k]
        gateway_keys = [k for k in candidates if k.startswith(KEY_PREFIX)]
        provider_keys = [k for k in candidates if not k.startswith(KEY_PREFIX)]
        key = None
        if gateway_keys:
            key = await self.store.authenticate(gateway_keys[0])
            if key is None:
                raise Unauthorized("Invalid or revoked tunegate key.")
        elif await self.store.keys_exist():
            raise Unauthorized("This gateway requires a tunegate key: send it as 'x-portkey-api-key' or "
                               "'Authorization: Bearer'.", code="missing_api_key")
        return key, provider_keys[0] if provider_keys else None

    async def _named_connection(self, name: str | None) -> Connection | None:
        if not name:
            return None
        connection = await self.store.get_connection(name)
        if connection is None:
            raise InvalidRequest(f"No connection named '{name}'.", param="x-portkey-virtual-key",
                                 code="unknown_connection")
        return connection

    async def _recorded(self, ref: tuple[str, str] | None, key: ApiKey | None) -> StoredObject | None:
        if ref is None:
            return None
        recorded = await self.store.placement(*ref)
        if recorded is not None and key is not None and recorded.key_id not in (None, key.id):
            # Another key's object: answer as if it did not exist, so ids cannot be probed.
            raise NotFound(f"No such {ref[0]}: '{ref[1]}'.")
        return recorded

    async def _granted_connection(self, key: ApiKey, provider_name: str) -> Connection | None:
        """The connection a key uses for a provider when the request names none: the first of its
        grants, in the order they were granted; for a key granted everything, the only one."""
        available = await self.store.connections_for(provider_name)
        if "*" not in key.connections:
            chosen = next((name for name in key.connections if name in available), None)
        elif len(available) > 1:
            raise InvalidRequest(f"Several connections serve provider '{provider_name}' "
                                 f"({', '.join(available)}): name one with 'x-portkey-virtual-key'.",
                                 param="x-portkey-virtual-key", code="ambiguous_connection")
        else:
            chosen = available[0] if available else None
        return await self.store.get_connection(chosen) if chosen else None

    async def _custom_host(self, value: str | None) -> str | None:
        if not value:
            return None
        return await check_custom_host(value, self.settings.allowed_custom_hosts)

    def _policy(self, headers: Mapping[str, str], config: dict[str, Any],
                connection: Connection | None) -> CallPolicy:
        """Timeouts: the request's own, else the connection's (option ``timeouts``), else the settings'."""
        timeouts = self.settings.timeouts
        if connection is not None and isinstance(connection.options.get("timeouts"), dict):
            try:
                timeouts = timeouts.model_copy(update={k: float(v) for k, v in connection.options["timeouts"].items()
                                                       if k in Timeouts.model_fields})
            except (TypeError, ValueError):
                pass  # a malformed stored option falls back to the defaults
        raw_timeout = headers.get("x-portkey-request-timeout") or config.get("request_timeout")
        if raw_timeout:
            try:
                seconds = float(raw_timeout) / 1000  # Portkey gives it in milliseconds
            except (TypeError, ValueError) as exc:
                raise InvalidRequest("x-portkey-request-timeout must be a number of milliseconds.",
                                     param="x-portkey-request-timeout") from exc
            if seconds <= 0:
                raise InvalidRequest("x-portkey-request-timeout must be positive.",
                                     param="x-portkey-request-timeout")
            timeouts = Timeouts(connect=min(timeouts.connect, seconds), first_byte=seconds, idle=seconds)
        retry = self.settings.retry
        if isinstance(config.get("retry"), dict):
            spec = config["retry"]
            try:
                # Portkey counts retries; tunegate's policy counts tries.
                attempts = int(spec["attempts"]) + 1 if "attempts" in spec else retry.attempts
                retry = RetryPolicy(attempts=min(attempts, 10),
                                    on_status_codes=list(spec.get("on_status_codes", retry.on_status_codes)),
                                    backoff_base=retry.backoff_base, backoff_max=retry.backoff_max)
            except (TypeError, ValueError) as exc:
                raise InvalidRequest("x-portkey-config retry must be {attempts, on_status_codes}.",
                                     param="x-portkey-config") from exc
        return CallPolicy(timeouts=timeouts, retry=retry)


def new_trace_id() -> str:
    return _secrets.token_hex(16)
