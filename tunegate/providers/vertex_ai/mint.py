"""Mint one OAuth access token for a Google credential JSON (service account, external account, impersonated
service account): ``python -m tunegate.providers.vertex_ai.mint``.

Runs as a short-lived child of the gateway. ``{"service_account": {...}, "allowed_hosts": [...]}`` comes on
stdin (never on the command line, where ``ps`` would show the private key); one JSON line goes to stdout:
``{"token": "...", "expires_at": 1767225600.0}`` or ``{"error": KIND, "message": "..."}`` with KIND one of
``invalid`` (the JSON is not a usable service account), ``refused`` (the token endpoint said no),
``unreachable`` (it could not be reached), ``host_not_allowed`` (the ``token_uri``'s name resolved to an
address the custom-host rule refuses) or ``missing_dependency``.

The gateway checked the ``token_uri`` before starting this process, but DNS may answer differently now
(rebinding): every connection is made to an address checked here, at connect time, with the same rule.

Why a process and not a thread: google-auth signs the JWT with ``cryptography`` (which carries its own
OpenSSL) and posts it with urllib3. Imported into the gateway for a call made once an hour per account,
they would stay resident in every worker for good (~13 MiB, measured); in a child they live for the
second the call takes, and the blocking HTTP call is nowhere near the event loop.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC
from typing import Any

import orjson

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
TOKEN_TIMEOUT = 20.0  # seconds for the token endpoint to answer (the parent also kills a child that hangs)


class _Refused(OSError):
    pass


def _pin_connections(allowed: list[str]) -> None:
    """Make urllib3 connect only to addresses the custom-host rule allows, and to exactly the address
    that was checked (TLS still verifies the name: urllib3 passes it to the handshake separately)."""
    import ipaddress
    import socket

    import urllib3.util.connection as connection

    from tunegate.hosts import address_allowed

    original = connection.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for info in infos:
            ip = str(info[4][0]).split("%")[0]
            # urllib3 does not say the scheme here: entries naming one allow nothing (fail closed).
            if not address_allowed(host.lower(), ipaddress.ip_address(ip), allowed, port):
                raise _Refused(host)
        return original((str(infos[0][4][0]), port), *args, **kwargs)

    connection.create_connection = create_connection  # type: ignore[assignment]


def _refused(exc: BaseException | None) -> _Refused | None:
    """Our refusal inside the errors urllib3 and google-auth wrapped it in, if it is there."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _Refused):
            return exc
        reason = getattr(exc, "reason", None)
        exc = exc.__cause__ or exc.__context__ or (reason if isinstance(reason, BaseException) else None)
    return None


def credentials(info: dict[str, Any]) -> Any:
    """google-auth credentials for a JSON the gateway has validated (``auth._check_kind``), built with the class
    of its type directly: ``google.auth.load_credentials_from_dict`` would, for an external account, also look
    its project up over a transport of its own choosing. Sources: google-auth 2.63.0."""
    kind = info.get("type", "service_account")
    if kind == "external_account":
        from google.auth import identity_pool

        return identity_pool.Credentials.from_info(info, scopes=SCOPES)
    if kind == "impersonated_service_account":
        return _impersonated(info)
    from google.oauth2 import service_account

    return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)


def _impersonated(info: dict[str, Any]) -> Any:
    """As google-auth's ``from_impersonated_service_account_info`` builds it (source credentials, the target
    principal from the URL, delegates), but keeping the JSON's URL as ``iam_endpoint_override``: that function
    drops it for the default IAM endpoint, and the URL is the one that passed the gateway's host check."""
    from google.auth import impersonated_credentials
    from google.oauth2 import credentials as user_credentials
    from google.oauth2 import service_account

    source_info = info["source_credentials"]
    if source_info.get("type") == "authorized_user":
        source: Any = user_credentials.Credentials.from_authorized_user_info(source_info)
    else:
        source = service_account.Credentials.from_service_account_info(source_info)
    url = str(info["service_account_impersonation_url"])
    start, end = url.rfind("/"), url.find(":generateAccessToken")
    if start == -1 or end == -1 or start > end:
        raise ValueError("no target principal in service_account_impersonation_url")
    return impersonated_credentials.Credentials(source, url[start + 1:end], SCOPES, info.get("delegates"),
                                                quota_project_id=info.get("quota_project_id"),
                                                iam_endpoint_override=url)


def mint(info: dict[str, Any], allowed_hosts: list[str] | None = None) -> dict[str, Any]:
    """The token for ``info`` (a parsed service-account JSON), or an error description. Never raises.
    With ``allowed_hosts``, connections go only to addresses the custom-host rule allows."""
    try:
        import urllib3
        from google.auth import exceptions as gexc
        from google.auth.transport.urllib3 import Request
    except ImportError:
        return {"error": "missing_dependency",
                "message": "Vertex AI service-account auth needs google-auth (pip install 'tunegate[cloud]')."}
    try:
        creds = credentials(info)
    except (ValueError, KeyError, TypeError, AttributeError, gexc.GoogleAuthError) as exc:
        # The exception's text may quote the key material: only its type leaves this process.
        return {"error": "invalid", "message": f"The credential JSON is not usable: {type(exc).__name__}."}
    if allowed_hosts is not None:
        _pin_connections(allowed_hosts)
    http = urllib3.PoolManager(num_pools=1, timeout=urllib3.Timeout(total=TOKEN_TIMEOUT), retries=False)
    try:
        creds.refresh(Request(http))
    except gexc.RefreshError as exc:
        # RefreshError carries the token endpoint's error (e.g. "invalid_grant: Invalid JWT Signature.").
        reason = str(exc.args[0]) if exc.args else "refused"
        return {"error": "refused", "message": reason[:500]}
    except gexc.TransportError as exc:
        refused = _refused(exc)
        if refused is not None:
            return {"error": "host_not_allowed", "message": str(refused.args[0])}
        return {"error": "unreachable", "message": "Could not reach the service account's token endpoint."}
    except gexc.GoogleAuthError as exc:  # OAuthError: an STS refusal (google/oauth2/utils.handle_error_response)
        reason = str(exc.args[0]) if exc.args else "refused"
        return {"error": "refused", "message": reason[:500]}
    except (ValueError, KeyError, TypeError) as exc:  # e.g. a subject token that is not what the JSON said
        return {"error": "refused", "message": f"The credential could not be refreshed: {type(exc).__name__}."}
    expiry = creds.expiry  # naive UTC datetime
    expires_at = expiry.replace(tzinfo=UTC).timestamp() if expiry is not None else time.time() + 3600
    return {"token": str(creds.token), "expires_at": expires_at}


def main() -> None:
    try:
        request = orjson.loads(sys.stdin.buffer.read())
    except orjson.JSONDecodeError:
        request = None
    info = request.get("service_account") if isinstance(request, dict) else None
    if not isinstance(info, dict):
        result: dict[str, Any] = {"error": "invalid", "message": "The service-account JSON is not an object."}
    else:
        allowed = request.get("allowed_hosts") if isinstance(request, dict) else None
        result = mint(info, [str(h) for h in allowed] if isinstance(allowed, list) else None)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()
