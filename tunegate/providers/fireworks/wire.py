"""Fireworks wire details shared by the job and dataset mappings: resource names ↔ public ids,
RFC 3339 timestamps, and error bodies. Source: ``shared/specs/fireworks-finetuning-contract.md``."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tunegate.errors import InvalidRequest, NotFound
from tunegate.providers.base import short_error_text
from tunegate.upstream import UpstreamResponse

# Fireworks resource ids (the last segment of `accounts/{a}/datasets/{id}`): lowercase letters, digits
# and hyphens, at most 63 characters. Ids made elsewhere (a random UUID when none is given) fit too.
NEW_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")
# What tunegate accepts as a public id in a URL path before putting it into an upstream path: no
# '/', ':' or '%', so a public id can never reach another resource or a custom verb.
PUBLIC_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
# A full resource name a body may give instead of an id: exactly `accounts/{account}/{collection}/{id}`.
RESOURCE_NAME = re.compile(r"accounts/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})/([A-Za-z]+)/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})")

# google.rpc.Code numbers, as gRPC-gateway error bodies carry them.
GRPC_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
              "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
              "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 409: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error"}


def account(ctx_option: Any) -> str:
    value = str(ctx_option)
    if not PUBLIC_ID_RE.match(value):
        raise InvalidRequest("x-portkey-fireworks-account-id is not a valid Fireworks account id.",
                             param="x-portkey-fireworks-account-id", code="invalid_provider_option")
    return value


def public_id(public: str, kind: str) -> str:
    """A public id from the client's URL, checked before it goes into an upstream path."""
    if not PUBLIC_ID_RE.match(public):
        raise NotFound(f"No such {kind}: '{public}'.")
    return public


def short_id(name: str | None, account_id: str, collection: str) -> str | None:
    """`accounts/{account_id}/{collection}/{id}` → `id`; a name in another account stays whole (it is a
    field value, never a path id, so it may keep its slashes)."""
    if not name:
        return None
    prefix = f"accounts/{account_id}/{collection}/"
    return name[len(prefix):] if name.startswith(prefix) else name


def split_name(value: str, account_id: str, collection: str, param: str) -> tuple[str, str]:
    """(account, id) of what a body names: a bare id (in ``account_id``) or the full resource name
    ``accounts/{account}/{collection}/{id}``. Any other shape (another collection, a trailing slash,
    more segments, ``Accounts/…``) is a 400: it would reach Fireworks under a spelling nobody checked."""
    if "/" not in value and PUBLIC_ID_RE.match(value):
        return account_id, value
    found = RESOURCE_NAME.fullmatch(value)
    if found is None or found.group(2) != collection:
        kind = {"models": "model", "datasets": "dataset"}.get(collection, collection)
        raise InvalidRequest(f"'{value[:200]}' is not a Fireworks {kind} id or name (accounts/{{account}}/"
                             f"{collection}/{{id}}).", param=param, code="invalid_value")
    return found.group(1), found.group(3)


def resource_name(value: str, account_id: str, collection: str, param: str) -> str:
    """A client's id (or full resource name) → the full resource name Fireworks expects."""
    account, object_id = split_name(value, account_id, collection, param)
    return f"accounts/{account}/{collection}/{object_id}"


def registry_ids(account: str, collection: str, object_id: str, own_account: str | None) -> list[str]:
    """Every id the registry may know one Fireworks object by, so the ownership rule can be held on each:
    a model by its resource name (a job's ``fine_tuned_model``); a dataset or job of the request's own
    account by its bare id (``short_id``: what a create or a listing recorded), one elsewhere by its name.
    Each also lowercased: Fireworks ids are lowercase, and an upstream lenient about case is assumed."""
    name = f"accounts/{account}/{collection}/{object_id}"
    found = [name]
    if collection != "models" and own_account is not None and account.lower() == own_account.lower():
        found.append(object_id)
    return list(dict.fromkeys([*found, *(spelling.lower() for spelling in found)]))


def new_id(hint: str, *, prefix: str = "ft") -> str:
    """A fresh resource id that satisfies NEW_ID_RE: the hint slugified, plus 8 random characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"{prefix}-{slug}".rstrip("-")
    slug = slug[:54].rstrip("-")
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return f"{slug}-{''.join(secrets.choice(alphabet) for _ in range(8))}"


# Dataset encryption states that mean plaintext storage (fireworks-ai 1.2.30 lib/dataset_upload.py; the
# field is not declared on the Dataset type).
PLAINTEXT_ENCRYPTION = frozenset({"", "ENCRYPTION_STATE_UNSPECIFIED", "ENCRYPTION_STATE_PLAINTEXT"})


def check_plaintext(dataset: Any) -> None:
    """A signed-URL PUT stores the bytes as sent: Fireworks's own upload helper refuses a dataset that
    needs client-side (CMEK) encryption rather than store it in plaintext, and so does the gateway."""
    state = dataset.get("encryptionState") if isinstance(dataset, Mapping) else None
    if (state or "") not in PLAINTEXT_ENCRYPTION:
        raise InvalidRequest(f"This Fireworks dataset needs client-side encryption ({state}); files over the "
                             "single-request limit go through a signed URL that would store them unencrypted, so the "
                             "upload is refused. Upload it with Fireworks's firectl, or as files of at most "
                             "150,000,000 bytes.", param="file", code="unsupported_dataset_encryption")


_FRACTION = re.compile(r"\.\d+")


def unix(value: Any) -> int | None:
    """RFC 3339 (``2023-11-07T05:31:56.123456789Z``) → unix seconds; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub("", value, count=1).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _code_name(code: Any) -> str | None:
    if isinstance(code, str) and code:
        return code.lower()
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code < len(GRPC_CODES):
        return GRPC_CODES[code].lower()
    return None  # an HTTP number (Google style) adds nothing to the response status


def error_message(response: UpstreamResponse) -> tuple[str, str | None, str | None]:
    """(message, type, code) from the bodies Fireworks's control plane may send: gRPC-gateway
    ``{"code": 5, "message": ..., "details": []}``, Google ``{"error": {"code": 404, "status":
    "NOT_FOUND", "message": ...}}``, OpenAI-like ``{"error": {"message", "type", "code"}}`` or text."""
    err_type = ERROR_TYPES.get(response.status)
    fallback = f"Fireworks answered with HTTP {response.status}."
    try:
        data = response.json()
    except ValueError:
        # An HTML error page gives its <title> only, plain text its first line (never a stack trace).
        text = short_error_text(response.body, response.headers.get("Content-Type", ""))
        return (f"{fallback} {text}" if text else fallback), err_type, None
    if not isinstance(data, Mapping):
        return fallback, err_type, None
    err: Any = data.get("error", data)
    if isinstance(err, str):
        return err or fallback, err_type, None
    if not isinstance(err, Mapping):
        return fallback, err_type, None
    message = err.get("message") or data.get("message") or data.get("detail")
    if isinstance(message, list | dict):
        message = str(message)[:500]
    code = _code_name(err.get("status")) or _code_name(err.get("code"))
    if isinstance(err.get("type"), str) and err_type is None:
        err_type = err["type"]
    return (str(message) if message else fallback), err_type, code
