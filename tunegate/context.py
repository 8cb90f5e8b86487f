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

import hmac
import math
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from tunegate.config import RetryPolicy, Settings, Timeouts
from tunegate.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from tunegate.files import FileStore
from tunegate.hosts import check_custom_host, split_client_url, url_listed
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
MAX_TIMEOUT_SECONDS = 3600.0
MAX_TRIES = 10  # one request's tries at most (x-portkey-config retry.attempts counts the retries)


def ownership_refusal(kind: str, object_id: str) -> NotFound:
    """The one 404 for "not yours" and "not there" alike (docs/security.md, rule 4): every place that
    answers either builds it here, so the two can never drift apart."""
    return NotFound(f"No such {kind}: '{object_id}'.")


def reachable(recorded: StoredObject, key: ApiKey | None, own_provider_key: bool) -> bool:
    """The ownership rule (docs/security.md), for an object the registry knows: a key reaches its own
    objects and unowned ones of a connection (which it must then be granted); unowned ones of no
    connection (made on an open gateway) only with a provider key of its own. An open gateway (no key)
    reaches everything."""
    if key is None:
        return True
    if recorded.key_id is not None:
        return recorded.key_id == key.id
    return recorded.connection is not None or own_provider_key


@dataclass
class RequestContext:
    trace_id: str
    provider: Provider
    upstream: Upstream
    policy: CallPolicy
    key: ApiKey | None = None
    connection: str | None = None
    credentials: dict[str, str] = field(default_factory=dict)
    own_key: bool = False  # the credentials are the caller's own provider key, not a stored connection's
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
    # (kind, id) the path names, when the registry knows no such object: any 404 for it then reads as the
    # refusal of another key's object does (see app._api_error).
    unrecorded_ref: tuple[str, str] | None = None

    @property
    def provider_name(self) -> str:
        return self.provider.name

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None

    async def check_named(self, kind: str, object_id: str, param: str | None = None, *,
                          shown: str | None = None) -> None:
        """An object a request's body names (a job's ``training_file``), or whose canonical name an adapter
        learns only on the way (a bare Fireworks model id, a Vertex name by project id), under the
        ownership rule a path's id is (``shown``: the spelling the caller used): another key's object, or one of a connection this key is not granted, is a 404. (A body
        may name objects in forms a path never does, an S3 URI on Bedrock: no spelling check here.)"""
        recorded = await self.store.placement(kind, object_id) if self.store is not None else None
        self._check_reach(recorded, kind, object_id, param, shown)

    async def check_named_all(self, named: Sequence[tuple[str, str, str | None]], *,
                              shown: str | None = None) -> None:
        """``check_named`` of several (kind, id, param) at once, with one registry read for those not
        cached; the first one out of reach is the 404 (``shown``: the caller's spelling, when all of them
        are spellings of one name)."""
        if self.store is None or not named:
            return
        found = await self.store.placements([(kind, object_id) for kind, object_id, _param in named])
        for kind, object_id, param in named:
            self._check_reach(found.get((kind, object_id)), kind, object_id, param, shown)

    def _check_reach(self, recorded: StoredObject | None, kind: str, object_id: str, param: str | None,
                     shown: str | None) -> None:
        if recorded is None:
            return
        granted = self.key is None or recorded.connection is None or self.key.may_use(recorded.connection)
        if not granted or not reachable(recorded, self.key, self.own_key):
            raise NotFound(f"No such {kind}: '{(shown or object_id)[:200]}'.", param=param, code=f"{kind}_not_found")

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


def _merge_options(provider: Provider, connection: Connection | None, requested: dict[str, str],
                   stored_secrets: bool) -> dict[str, Any]:
    """The provider options of a request. A connection's own options win: a header may not change what
    the operator set (project, organisation, role, bucket, endpoint …) unless the connection lists the
    option in `client_options`. With the connection's secrets in use, a value it keeps as a secret (a role
    ARN) is its own too; the options that pick the identity its credential becomes
    (`Provider.credential_options`) are locked even where it sets none; and a header may not pick the host
    either (`Provider.host_options`), or the secret would follow it. Options fixed together with one the
    connection sets (`Provider.locked_with`: a bucket's prefix) are locked to the value they take under it."""
    if connection is None:
        return dict(requested)
    stored = dict(connection.options)
    allowed = stored.get("client_options")
    allowed = {str(o) for o in allowed} if isinstance(allowed, list) else set()
    secrets = {k: str(v) for k, v in connection.secrets.items() if v not in (None, "")} if stored_secrets else {}
    sets = {k for k, v in stored.items() if v not in (None, "")} | set(secrets)
    fixed_with = {name for anchor, names in provider.locked_with.items() if anchor in sets and anchor not in allowed
                  for name in names}
    own = {**secrets, **{k: v for k, v in stored.items() if k in sets}}  # the connection's values
    for name, value in requested.items():
        if name in allowed:
            continue
        header = "x-portkey-" + name.replace("_", "-")
        identity = stored_secrets and name in provider.credential_options
        if identity and name not in sets:
            raise _locked(header, connection.name, identity)
        if name in sets:
            if not hmac.compare_digest(str(own[name]).encode(), value.encode()):
                raise _locked(header, connection.name, identity)
            continue
        if name in fixed_with and provider.effective_option(name, {**own, name: value}) != \
                provider.effective_option(name, own):
            raise _locked(header, connection.name, identity)
        if stored_secrets and name in provider.host_options:
            raise Forbidden(f"{header} would send the connection '{connection.name}''s credentials to a host "
                            "the request chose; the connection does not allow that.", param=header,
                            code="custom_host_not_allowed")
    # A value the connection keeps as a secret stays in the credentials only (never in the options).
    return {**stored, **{k: v for k, v in requested.items() if k in allowed or k not in sets}}


def _locked(header: str, connection: str, identity: bool) -> Forbidden:
    if identity:  # one answer whether the connection sets it (an option, a secret) or not: a caller learns neither
        return Forbidden(f"{header} is fixed by the connection '{connection}' (the identity its credentials act "
                         "as) and may not be chosen by a request (the operator can list it in the connection's "
                         "client_options).", param=header, code="option_locked")
    return Forbidden(f"{header} is set by the connection '{connection}' and may not be changed by a request (the "
                     "operator can list it in the connection's client_options).", param=header, code="option_locked")


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
    for name in ("provider", "virtual_key"):
        if config.get(name) is not None and not isinstance(config[name], str):
            raise InvalidRequest(f"x-portkey-config '{name}' must be a string.", param="x-portkey-config",
                                 code="invalid_config")
    if config.get("retry") is not None and not isinstance(config["retry"], dict):
        raise InvalidRequest("x-portkey-config 'retry' must be an object {attempts, on_status_codes}.",
                             param="x-portkey-config", code="invalid_config")
    timeout = config.get("request_timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float | str)):
        raise InvalidRequest("x-portkey-config 'request_timeout' must be a number of milliseconds.",
                             param="x-portkey-config", code="invalid_config")
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
                      ref: tuple[str, str] | None = None, default_provider: str | None = None,
                      before_refusal: Callable[[], Awaitable[None]] | None = None) -> RequestContext:
        """``before_refusal``: the route's own reading of its query or body, run just before another key's
        object is refused, where an unknown id's request would go on to read them: a bad query or body is
        then the same 400 for both, and the body is consumed for both (see ``api.common.context_and_input``)."""
        key, provider_key = await self._authenticate(headers)  # an anonymous caller hears 401 first
        config = _parse_config(headers.get("x-portkey-config"))
        if key is not None and (limit := key.rate_limit_per_min or self.settings.rate_limit_per_min):
            self.rates.check(key.id, limit)

        connection = await self._named_connection(headers.get("x-portkey-virtual-key") or config.get("virtual_key"),
                                                  key)
        # A provider key counts as the caller's own only where the key may use one: otherwise it is ignored
        # below (the stored secrets go out), so it must not open an orphan either.
        own_key = bool(provider_key) and (key is None or key.allow_provider_keys)
        # Another key's object is refused only at the end, after every check an unknown id goes through too
        # (provider, connection, options, host): until then both take the same path, so no earlier answer
        # tells them apart.
        recorded, refused = await self._recorded(ref, key, own_key)
        provider_name = (headers.get("x-portkey-provider") or (connection.provider if connection else None)
                         or config.get("provider") or (recorded.provider if recorded else None)
                         or default_provider or self.settings.default_provider)
        if not provider_name and refused:
            # A request that names no provider relies on the record, which it may not read: the refusal now.
            # (So this case alone still differs from an unknown id's 400; docs/security.md, rule 4.)
            assert ref is not None
            raise ownership_refusal(*ref)
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
        if ref is not None and not provider.canonical_id(*ref):
            # Not an id this provider hands out (an encoding, a second spelling): it names nothing.
            raise ownership_refusal(*ref)
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
                             store=self.store, files=self.files,
                             unrecorded_ref=ref if recorded is None else None)
        if connection is not None:
            if key is not None and not key.may_use(connection.name):
                raise Forbidden(f"This key is not granted the connection '{connection.name}'.",
                                param="x-portkey-virtual-key")
            ctx.connection = connection.name
            if not own_key:  # the caller's own key replaces the stored secrets, never mixes with them
                ctx.credentials = dict(connection.secrets)
            ctx.base_url_override = connection.base_url
        if own_key:
            assert provider_key is not None
            ctx.credentials[provider.credential_field] = provider_key
            ctx.own_key = True
        elif key is not None and connection is None:
            raise Forbidden(f"This key has no connection for provider '{provider_name}'.",
                            param="x-portkey-virtual-key" if headers.get("x-portkey-virtual-key")
                            else "x-portkey-provider", code="no_connection")
        stored_secrets = connection is not None and bool(connection.secrets) and not own_key
        ctx.options = _merge_options(provider, connection, _header_options(headers), stored_secrets)
        await self._check_options(ctx, provider, connection)
        custom_host = await self._custom_host(headers.get("x-portkey-custom-host"), connection, stored_secrets)
        if custom_host:
            ctx.policy.client_host = (urlsplit(custom_host).hostname or "").lower()
        ctx.base_url_override = (custom_host or ctx.base_url_override
                                 or _configured_base_url(self.settings, provider))
        # Once a client chose a host, every URL of the request is held to the address check: an answer from
        # that host could hand back a URL to one the operator trusts (an internal base URL, an emulator)
        # on any port.
        ctx.policy.trusted_hosts = frozenset() if ctx.policy.client_host else self._trusted_hosts(provider, connection)
        if refused:
            assert ref is not None
            if before_refusal is not None:
                await before_refusal()
            raise ownership_refusal(*ref)  # as if it did not exist, so ids cannot be probed
        return ctx

    async def caller(self, headers: Mapping[str, str]) -> ApiKey | None:
        """Only who is calling (tunegate's own routes that name no provider, such as /v1/webhooks): the
        tunegate key, or None on an open gateway; 401 and the key's rate limit as for any request."""
        key, _provider_key = await self._authenticate(headers)
        if key is not None and (limit := key.rate_limit_per_min or self.settings.rate_limit_per_min):
            self.rates.check(key.id, limit)
        return key

    async def for_job(self, recorded: StoredObject, trace_id: str) -> RequestContext:
        """A context for the gateway's own call on a recorded job (the job watcher): the job's provider,
        its stored connection, acting for its owner key — what a request by that owner naming only the
        job id would get, under the same rules (a revoked key or a connection no longer granted is a 403,
        a connection removed since is a 404; option grammar and host checks as for any request)."""
        provider = provider_named(recorded.provider)
        if provider is None:
            raise NotFound(f"Unknown provider '{recorded.provider}'.")
        key = await self.store.get_key(recorded.key_id) if recorded.key_id else None
        if recorded.key_id and (key is None or key.revoked_at is not None):
            raise Forbidden("The job's key is revoked.", code="key_revoked")
        connection = await self.store.get_connection(recorded.connection) if recorded.connection else None
        if recorded.connection and connection is None:
            raise NotFound(f"The job's connection '{recorded.connection}' no longer exists.")
        if connection is not None and key is not None and not key.may_use(connection.name):
            raise Forbidden(f"This key is not granted the connection '{connection.name}'.")
        ctx = RequestContext(trace_id=trace_id, provider=provider, upstream=self.upstream,
                             policy=self._policy({}, {}, connection), key=key, settings=self.settings,
                             store=self.store, files=self.files)
        if connection is not None:
            ctx.connection = connection.name
            ctx.credentials = dict(connection.secrets)
        ctx.options = _merge_options(provider, connection, {}, connection is not None and bool(connection.secrets))
        await self._check_options(ctx, provider, connection)
        ctx.base_url_override = (connection.base_url if connection else None) or _configured_base_url(
            self.settings, provider)
        ctx.policy.trusted_hosts = frozenset() if ctx.policy.client_host else self._trusted_hosts(provider, connection)
        return ctx

    def _trusted_hosts(self, provider: Provider, connection: Connection | None) -> frozenset[str]:
        """The hosts the operator chose for this provider: only these connect without the address check."""
        hosts = provider.operator_hosts()
        for url in (_configured_base_url(self.settings, provider), connection.base_url if connection else None):
            if url and (host := urlsplit(url).hostname):
                hosts.add(host.lower())
        return frozenset(hosts)

    async def _check_options(self, ctx: RequestContext, provider: Provider, connection: Connection | None) -> None:
        """Options that end up in a URL match their grammar; URL options a client sent pass the custom-host
        rule (the connect-time guard then holds them to it)."""
        for name, pattern in provider.option_patterns.items():
            value = ctx.options.get(name)
            if value not in (None, "") and (not isinstance(value, str) or not re.fullmatch(pattern, value)):
                raise InvalidRequest(f"'{value}' is not a valid value for x-portkey-{name.replace('_', '-')}.",
                                     param="x-portkey-" + name.replace("_", "-"), code="invalid_provider_option")
        for name in provider.url_options:
            value = ctx.options.get(name)
            if not value or (connection is not None and connection.options.get(name) == value):
                continue  # the operator's own value
            header = "x-portkey-" + name.replace("_", "-")
            checked = await check_custom_host(str(value), self.settings.allowed_custom_hosts, param=header,
                                              what=header)
            ctx.options[name] = checked
            ctx.policy.client_host = (urlsplit(checked).hostname or "").lower()

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

    async def _named_connection(self, name: Any, key: ApiKey | None) -> Connection | None:
        if not name:
            return None
        if not isinstance(name, str) or len(name) > 200:
            raise InvalidRequest("The connection name must be a string of at most 200 characters.",
                                 param="x-portkey-virtual-key", code="invalid_connection")
        if key is not None and not key.may_use(name):
            # Checked before the lookup, with one answer for "not granted" and "does not exist": a key
            # cannot learn which connection names exist.
            raise Forbidden(f"This key is not granted the connection '{name}'.", param="x-portkey-virtual-key")
        connection = await self.store.get_connection(name)
        if connection is None:
            if key is not None and "*" not in key.connections:
                raise Forbidden(f"This key is not granted the connection '{name}'.", param="x-portkey-virtual-key")
            raise InvalidRequest(f"No connection named '{name}'.", param="x-portkey-virtual-key",
                                 code="unknown_connection")
        return connection

    async def _recorded(self, ref: tuple[str, str] | None, key: ApiKey | None,
                        own_provider_key: bool) -> tuple[StoredObject | None, bool]:
        """The registry's record of the path's object and whether the ownership rule refuses it
        (docs/security.md): a key reaches its own objects and unowned ones of a connection it is granted;
        unowned ones of no connection (made on an open gateway with a caller's own provider key) only with
        a provider key of its own, which the provider then checks. A refused object is no record at all
        to the rest of the resolution, which raises the 404 once every other check has passed."""
        if ref is None:
            return None, False
        if len(ref[1]) > 512:
            raise NotFound(f"No such {ref[0]}.")
        recorded = await self.store.placement(*ref)
        if recorded is None:
            return None, False
        granted = key is None or recorded.connection is None or key.may_use(recorded.connection)
        if not granted or not reachable(recorded, key, own_provider_key):
            return None, True
        return recorded, False

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

    async def _custom_host(self, value: str | None, connection: Connection | None,
                           stored_secrets: bool) -> str | None:
        """x-portkey-custom-host, checked. With a stored connection's secrets the host is the
        connection's: a client may choose another only from the connection's `allowed_client_hosts`."""
        if not value:
            return None
        parts = split_client_url(value)
        if stored_secrets and connection is not None:
            listed = connection.options.get("allowed_client_hosts")
            if not isinstance(listed, list) or not url_listed(parts, listed):
                raise Forbidden(f"Connection '{connection.name}' sends its credentials only to its own host; "
                                "x-portkey-custom-host may not replace it (the operator can list hosts in the "
                                "connection's allowed_client_hosts).", param="x-portkey-custom-host",
                                code="custom_host_not_allowed")
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
        if raw_timeout is not None and raw_timeout != "":  # 0 is a (refused) timeout, not an absent one
            try:
                if isinstance(raw_timeout, bool):
                    raise TypeError("a boolean is not a timeout")
                seconds = float(raw_timeout) / 1000  # Portkey gives it in milliseconds
            except (TypeError, ValueError) as exc:
                raise InvalidRequest("x-portkey-request-timeout must be a number of milliseconds.",
                                     param="x-portkey-request-timeout") from exc
            if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT_SECONDS:
                raise InvalidRequest(f"x-portkey-request-timeout must be a positive number of milliseconds up to "
                                     f"{int(MAX_TIMEOUT_SECONDS * 1000)}.", param="x-portkey-request-timeout")
            timeouts = Timeouts(connect=min(timeouts.connect, seconds), first_byte=seconds, idle=seconds)
        retry = self.settings.retry
        if isinstance(config.get("retry"), dict):
            spec = config["retry"]
            try:
                # Portkey counts retries; tunegate's policy counts tries.
                attempts = retry.attempts
                if "attempts" in spec:
                    retries = spec["attempts"]
                    if (not isinstance(retries, int | float) or isinstance(retries, bool) or retries < 0
                            or not float(retries).is_integer()):
                        raise InvalidRequest("x-portkey-config retry.attempts must be a whole number of retries "
                                             "(0 or more).", param="x-portkey-config")
                    # More retries than MAX_TRIES allows are cut, not refused: Portkey cuts its own at 5 the same way.
                    attempts = min(int(retries), MAX_TRIES - 1) + 1
                codes = spec.get("on_status_codes", retry.on_status_codes)
                if not isinstance(codes, list) or len(codes) > 64 or not all(
                        isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in codes):
                    raise ValueError("on_status_codes must be a list of HTTP status codes")
                retry = RetryPolicy(attempts=attempts, on_status_codes=list(codes),
                                    backoff_base=retry.backoff_base, backoff_max=retry.backoff_max)
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidRequest("x-portkey-config retry must be {attempts, on_status_codes}.",
                                     param="x-portkey-config") from exc
        return CallPolicy(timeouts=timeouts, retry=retry)


#: Trace ids drawn from the OS per system call. One ``getrandom`` per request was ~9 % of a create's
#: main-thread samples (py-spy, c=64); the ids stay the kernel's CSPRNG output, 128 bits each.
TRACE_IDS_PER_DRAW = 256
_trace_ids: list[str] = []
os.register_at_fork(after_in_child=_trace_ids.clear)  # a forked worker must not hand out its parent's ids


def new_trace_id() -> str:
    """A fresh random 128-bit trace id in hex (W3C trace context's ``trace-id``)."""
    try:
        return _trace_ids.pop()  # atomic: callers on other threads never get the same id
    except IndexError:
        drawn = os.urandom(16 * TRACE_IDS_PER_DRAW).hex()
        _trace_ids.extend([drawn[i:i + 32] for i in range(32, len(drawn), 32)])
        return drawn[:32]
