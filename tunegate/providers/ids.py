"""URL-safe, reversible ids for providers whose native ids are ARNs, resource names or URIs.

``encode("ftjob", "arn:aws:bedrock:…")`` → ``"ftjob-YXJuOmF3czpi…"``; ``decode`` gives the native id
back. Ids that are already URL-safe and OpenAI-shaped are never wrapped (adapters pass them as is).
"""

from __future__ import annotations

import base64
import binascii

from tunegate.errors import NotFound


def encode(prefix: str, native: str) -> str:
    token = base64.urlsafe_b64encode(native.encode()).rstrip(b"=").decode()
    return f"{prefix}-{token}"


def decode(prefix: str, public_id: str, kind: str = "object") -> str:
    """The native id inside a public id; a 404 when it is not one of ours."""
    head, sep, token = public_id.partition("-")
    if head != prefix or not sep or not token:
        raise NotFound(f"No such {kind}: '{public_id}'.")
    try:
        native = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise NotFound(f"No such {kind}: '{public_id}'.") from None
    # Python's decoder is lenient: it drops characters outside the alphabet and ignores unused low bits
    # of the last character, so many spellings decode to one native id. Only the one spelling that
    # ``encode`` produces is ours; any other would pass the ownership check under a different string.
    if encode(prefix, native) != public_id:
        raise NotFound(f"No such {kind}: '{public_id}'.")
    return native
