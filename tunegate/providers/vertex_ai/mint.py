"""Mint one OAuth access token for a service account: ``python -m tunegate.providers.vertex_ai.mint``.

Runs as a short-lived child of the gateway. The service-account JSON comes on stdin (never on the command
line, where ``ps`` would show the private key); one JSON line goes to stdout:
``{"token": "...", "expires_at": 1767225600.0}`` or ``{"error": KIND, "message": "..."}`` with KIND one of
``invalid`` (the JSON is not a usable service account), ``refused`` (the token endpoint said no),
``unreachable`` (it could not be reached) or ``missing_dependency``.

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


def mint(info: dict[str, Any]) -> dict[str, Any]:
    """The token for ``info`` (a parsed service-account JSON), or an error description. Never raises."""
    try:
        import urllib3
        from google.auth import exceptions as gexc
        from google.auth.transport.urllib3 import Request
        from google.oauth2 import service_account
    except ImportError:
        return {"error": "missing_dependency",
                "message": "Vertex AI service-account auth needs google-auth (pip install 'tunegate[cloud]')."}
    try:
        creds = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    except (ValueError, KeyError, TypeError) as exc:
        # The exception's text may quote the key material: only its type leaves this process.
        return {"error": "invalid", "message": f"The service-account JSON is not usable: {type(exc).__name__}."}
    http = urllib3.PoolManager(num_pools=1, timeout=urllib3.Timeout(total=TOKEN_TIMEOUT))
    try:
        creds.refresh(Request(http))
    except gexc.RefreshError as exc:
        # RefreshError carries the token endpoint's error (e.g. "invalid_grant: Invalid JWT Signature.").
        reason = str(exc.args[0]) if exc.args else "refused"
        return {"error": "refused", "message": reason[:500]}
    except gexc.TransportError:
        return {"error": "unreachable", "message": "Could not reach the service account's token endpoint."}
    expiry = creds.expiry  # naive UTC datetime
    expires_at = expiry.replace(tzinfo=UTC).timestamp() if expiry is not None else time.time() + 3600
    return {"token": str(creds.token), "expires_at": expires_at}


def main() -> None:
    try:
        info = orjson.loads(sys.stdin.buffer.read())
    except orjson.JSONDecodeError:
        info = None
    if not isinstance(info, dict):
        result: dict[str, Any] = {"error": "invalid", "message": "The service-account JSON is not an object."}
    else:
        result = mint(info)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()
