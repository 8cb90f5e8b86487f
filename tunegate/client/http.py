"""A small HTTP client for the CLI (urllib only: no extra dependency), speaking to a running gateway.

Every failure becomes a :class:`GatewayError` with one readable line: the gateway's OpenAI-shaped
error message and code, or why the gateway could not be reached.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

DEFAULT_URL = "http://127.0.0.1:8787"
CHUNK = 256 * 1024


class GatewayError(Exception):
    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class Client:
    url: str = DEFAULT_URL
    api_key: str | None = None
    provider: str | None = None
    connection: str | None = None
    timeout: float = 120.0

    @classmethod
    def from_env(cls, url: str | None = None, api_key: str | None = None, provider: str | None = None,
                 connection: str | None = None) -> Client:
        return cls(url=(url or os.environ.get("TUNEGATE_URL") or DEFAULT_URL).rstrip("/"),
                   api_key=api_key or os.environ.get("TUNEGATE_API_KEY") or _key_file() or None,
                   provider=provider or os.environ.get("TUNEGATE_PROVIDER") or None,
                   connection=connection or os.environ.get("TUNEGATE_CONNECTION") or None)

    def headers(self, provider: bool = True) -> dict[str, str]:
        headers = {"User-Agent": "tunegate-cli/0.1", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if provider and self.provider:
            headers["x-portkey-provider"] = self.provider
        if self.connection:
            headers["x-portkey-virtual-key"] = self.connection
        return headers

    def _url(self, path: str, params: dict[str, Any] | None) -> str:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        return f"{self.url}{path}" + (f"?{query}" if query else "")

    def open(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
             headers: dict[str, str] | None = None, provider: bool = True) -> Any:
        """Send a request; the open response (a file-like object) or a GatewayError."""
        request = urllib.request.Request(self._url(path, params), data=body, method=method,
                                         headers={**self.headers(provider), **(headers or {})})
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)  # noqa: S310 (the user's gateway URL)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except urllib.error.URLError as exc:
            reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
            raise GatewayError(f"cannot reach the gateway at {self.url}: {reason}") from None
        except TimeoutError:
            raise GatewayError(f"the gateway at {self.url} did not answer within {self.timeout:.0f}s") from None
        except (ConnectionError, OSError) as exc:
            raise GatewayError(f"connection to {self.url} failed: {exc.strerror or type(exc).__name__}") from None

    def json(self, method: str, path: str, *, params: dict[str, Any] | None = None, payload: Any = None,
             provider: bool = True) -> Any:
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        with self.open(method, path, params=params, body=body, headers=headers, provider=provider) as resp:
            raw = resp.read()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise GatewayError(f"the gateway answered {path} with something that is not JSON") from None

    def upload(self, file: Path, purpose: str, progress: Callable[[int], None] | None = None,
               headers: dict[str, str] | None = None) -> Any:
        """POST /v1/files as multipart, streaming the file from disk in chunks (never read whole); ``headers``
        adds request headers (e.g. ``x-portkey-validation-method: dpo``)."""
        boundary = "tunegate" + secrets.token_hex(16)
        name = file.name.replace('"', "%22").replace("\r", "").replace("\n", "")
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/jsonl\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = file.stat().st_size

        def body() -> Iterator[bytes]:
            yield head
            with file.open("rb") as fh:
                yield from _chunks(fh, progress)
            yield tail

        sent = {**(headers or {}), "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + size + len(tail))}
        with self.open("POST", "/v1/files", body=body(), headers=sent) as resp:
            return json.loads(resp.read())


def _key_file() -> str | None:
    """The key in the file TUNEGATE_API_KEY_FILE names (a mounted secret, say), if set."""
    path = os.environ.get("TUNEGATE_API_KEY_FILE")
    if not path:
        return None
    try:
        return Path(path).expanduser().read_text().strip() or None
    except OSError as exc:
        raise GatewayError(f"cannot read TUNEGATE_API_KEY_FILE ({path}): {exc.strerror or exc}") from None


def _chunks(fh: BinaryIO, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    while chunk := fh.read(CHUNK):
        if progress is not None:
            progress(len(chunk))
        yield chunk


def _http_error(exc: urllib.error.HTTPError) -> GatewayError:
    try:
        raw = exc.read(64 * 1024)
        body = json.loads(raw) if raw else {}
    except (ValueError, OSError):
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        code = error.get("code")
        message = " ".join(str(error["message"]).split())
        return GatewayError(f"{exc.code}{f' {code}' if code else ''}: {message}", exc.code, code)
    return GatewayError(f"{exc.code}: {exc.reason}", exc.code)
