"""The gateway calls the migration commands make, over :class:`tunegate.client.http.Client`: every list
walked to its end, files streamed to disk. Nothing here talks to a provider directly."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tunegate.client.http import CHUNK, Client, GatewayError

PAGE = 100  # OpenAI's largest page for fine-tuning jobs


def q(value: str) -> str:
    return quote(value, safe=":")


def every_job(client: Client, on_page: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Every job of the provider, walking ``after`` until ``has_more`` is false."""
    after: str | None = None
    seen: set[str] = set()
    while True:
        page = client.json("GET", "/v1/fine_tuning/jobs", params={"limit": PAGE, "after": after})
        data = page.get("data") if isinstance(page, dict) else None
        if not isinstance(data, list):
            raise GatewayError("the gateway answered the job list without a 'data' list")
        fresh = [j for j in data if isinstance(j, dict) and j.get("id") not in seen]
        seen.update(str(j.get("id")) for j in fresh)
        if on_page is not None:
            on_page(len(fresh))
        yield from fresh
        # A page that brings nothing new would loop forever on a provider that ignores `after`.
        if not page.get("has_more") or not fresh:
            return
        after = str(fresh[-1]["id"])


def file_info(client: Client, file_id: str) -> dict[str, Any]:
    """The file object, or ``{"id", "status": "missing", "error"}`` when the provider no longer has it."""
    try:
        found = client.json("GET", f"/v1/files/{q(file_id)}")
    except GatewayError as exc:
        if exc.status == 404:
            return {"id": file_id, "status": "missing", "error": str(exc)}
        raise
    return found if isinstance(found, dict) else {"id": file_id, "status": "missing", "error": "not an object"}


@dataclass
class Downloaded:
    path: Path
    bytes: int
    sha256: str


def download(client: Client, file_id: str, target: Path, progress: Callable[[int], None] | None = None,
             expected_bytes: int | None = None) -> Downloaded:
    """Stream a file's content to ``target`` through ``target.part``: hashed while it is written, flushed
    to disk, then renamed into place. Whatever stops it half-way (an error, Ctrl-C, a kill) leaves at most
    a ``.part``, never a file under the final name."""
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    written = 0
    partial.unlink(missing_ok=True)  # a leftover, or a link planted there: "xb" never opens through one
    try:
        with client.open("GET", f"/v1/files/{q(file_id)}/content") as resp, partial.open("xb") as sink:
            while chunk := resp.read(CHUNK):
                sink.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                if progress is not None:
                    progress(len(chunk))
            sink.flush()
            os.fsync(sink.fileno())
        if expected_bytes is not None and written != expected_bytes:
            raise GatewayError(f"{file_id}: got {written} bytes, the file object says {expected_bytes}")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return Downloaded(target, written, digest.hexdigest())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
