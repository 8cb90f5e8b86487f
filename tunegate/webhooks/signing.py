"""Standard Webhooks signatures, as OpenAI sends them and its SDK verifies them.

Checked against the ``openai`` package (``openai/lib/_webhooks.py``, 3.57.0, used by
``client.webhooks.unwrap`` / ``verify_signature``): the secret is ``whsec_`` + base64 of the key bytes;
the signed content is ``"{webhook-id}.{webhook-timestamp}.{body}"``; ``webhook-signature`` is ``v1,`` +
base64 of its HMAC-SHA256 (several may be sent, space-separated); a timestamp more than 300 s from the
receiver's clock is refused, so every attempt is signed anew with its own time, under the same id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks: 24 to 64 bytes


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_hint(secret: str) -> str:
    """What the API shows of a secret after it was created (OpenAI's ``signing_secret_hint``)."""
    return f"{secret[:len(SECRET_PREFIX) + 2]}…{secret[-4:]}"


def _key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a signing secret starts with whsec_")
    return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()


def headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, webhook_id, timestamp, body)}


def verify(secret: str, headers: dict[str, str], body: bytes, *, now: int, tolerance: int = 300) -> bool:
    """The receiver's side (for ``tunegate webhooks test`` and tests): any v1 signature matches, in time."""
    try:
        timestamp = int(headers["webhook-timestamp"])
        expected = signature(secret, headers["webhook-id"], timestamp, body)
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return any(hmac.compare_digest(expected, "v1," + part.removeprefix("v1,"))
               for part in headers.get("webhook-signature", "").split())
