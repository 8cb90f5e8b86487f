"""Encryption at rest for connection secrets, and hashing for tunegate keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

import orjson

from tunegate.private import private_dir

KEY_PREFIX = "tg-"


class SecretBox:
    """Fernet (AES-128-CBC + HMAC-SHA256) around JSON objects of secrets.

    ``cryptography`` is imported on first use: a gateway that stores no connections never loads it."""

    def __init__(self, key: str | bytes) -> None:
        self._key = key
        self._cipher: Any = None

    @property
    def _fernet(self) -> Any:
        if self._cipher is None:
            from cryptography.fernet import Fernet

            self._cipher = Fernet(self._key)
        return self._cipher

    @classmethod
    def from_settings(cls, secret_key: str | None, data_dir: Path) -> SecretBox:
        """The key comes from the environment (TUNEGATE_SECRET_KEY); without one, a key file is made
        in the data directory, readable only by its owner, so a first run works out of the box."""
        if secret_key:
            return cls(secret_key)
        path = data_dir / "secret.key"
        if not path.exists():
            private_dir(data_dir)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(base64.urlsafe_b64encode(os.urandom(32)))  # a Fernet key
        return cls(path.read_bytes().strip())

    def seal(self, values: dict[str, str]) -> str:
        return self._fernet.encrypt(orjson.dumps(values)).decode()

    def tag(self, purpose: str, data: bytes) -> str:
        """A keyed digest (HMAC-SHA256 under a key derived from this box's key, one per ``purpose``): a
        lookup key that names secret material without storing it, and that nobody holding only the
        database can recompute from guessed credentials."""
        secret = self._key.encode() if isinstance(self._key, str) else self._key
        derived = hashlib.sha256(b"tunegate:" + purpose.encode() + b"\0" + secret).digest()
        return hmac.new(derived, data, hashlib.sha256).hexdigest()

    def open(self, token: str) -> dict[str, str]:
        from cryptography.fernet import InvalidToken

        try:
            return orjson.loads(self._fernet.decrypt(token.encode()))  # type: ignore[no-any-return]
        except InvalidToken as exc:
            raise RuntimeError("connection secrets cannot be decrypted: wrong TUNEGATE_SECRET_KEY?") from exc


def new_key() -> tuple[str, str, str]:
    """A new tunegate key: (key id, the full key to hand out once, the hash to store)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{KEY_PREFIX}{key_id}-{secret}", hash_secret(secret)


def split_key(full_key: str) -> tuple[str, str] | None:
    """``tg-<id>-<secret>`` → (id, secret); None when the string is not shaped like a tunegate key."""
    if not full_key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = full_key[len(KEY_PREFIX):].partition("-")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


def hash_secret(secret: str) -> str:
    # The secret is 256 bits of randomness, so a plain SHA-256 is enough (no password stretching needed).
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
