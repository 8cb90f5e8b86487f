"""``tunegate``: files kept by the gateway itself, usable as training files on every provider.

A file uploaded here is validated (by the upload route), written atomically to the managed store
and recorded with its content hash. When a job on another provider names it, the gateway pushes a
copy there (converted by that provider's own upload) once per content hash and reuses it after.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from tunegate import models
from tunegate.errors import InvalidRequest, NotFound
from tunegate.files import new_file_id
from tunegate.localjobs.limits import stored_bytes, within_quota
from tunegate.providers.base import FILE_PURPOSES, JSON, Download, IncomingFile, Page, Provider

if TYPE_CHECKING:
    from tunegate.context import RequestContext

# OpenAI's bounds for ``expires_after[seconds]`` (openai SDK, types/file_create_params.py): 1 hour to 30 days.
MIN_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 2592000
_DIGITS = re.compile(r"[0-9]{1,8}")  # ASCII only: str.isdigit() takes "³", which int() refuses


def expires_in(fields: dict[str, str]) -> int | None:
    """Seconds from ``expires_after[anchor]`` / ``expires_after[seconds]``, as OpenAI checks them; None
    when neither is sent (the file does not expire)."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("'expires_after[anchor]' must be 'created_at'.", param="expires_after[anchor]",
                             code="invalid_value")
    if seconds is None or not _DIGITS.fullmatch(seconds) \
            or not MIN_EXPIRY_SECONDS <= int(seconds) <= MAX_EXPIRY_SECONDS:
        raise InvalidRequest(f"'expires_after[seconds]' must be an integer from {MIN_EXPIRY_SECONDS} to "
                             f"{MAX_EXPIRY_SECONDS}.", param="expires_after[seconds]", code="invalid_value")
    return int(seconds)


def file_object(row: dict[str, Any]) -> JSON:
    return models.file(id=row["id"], bytes=row["bytes"], created_at=row["created_at"], filename=row["filename"],
                       purpose=row["purpose"], status="processed", expires_at=row["expires_at"])


class ManagedFiles(Provider):
    """File operations over the managed store; shared by providers that keep files in tunegate."""

    keeps_files = True

    async def upload_file(self, ctx: RequestContext, upload: IncomingFile) -> JSON:
        # Checked before a byte is stored. A purpose of invalid UTF-8 arrives with U+FFFD in it, so it
        # fails here too.
        if upload.purpose not in FILE_PURPOSES:
            raise InvalidRequest(f"'purpose' must be one of {', '.join(FILE_PURPOSES)}.", param="purpose",
                                 code="invalid_value")
        expires = expires_in(upload.fields)
        store, files = ctx.require_store()
        file_id = new_file_id()
        limit = ctx.settings.managed_files_max_bytes_per_key if ctx.settings else None
        used = await stored_bytes(store.engine, ctx.key_id) if limit is not None else 0
        stored = await files.write(file_id, within_quota(upload.chunks, used, limit))  # 429 past the key's quota
        now = int(time.time())
        row = dict(id=file_id, key_id=ctx.key_id, filename=upload.filename, purpose=upload.purpose,
                   bytes=stored.bytes, sha256=stored.sha256, location=stored.location, report=None,
                   created_at=now, expires_at=now + expires if expires is not None else None)
        await store.add_managed_file(row)
        return file_object(row)

    async def _row(self, ctx: RequestContext, file_id: str) -> dict[str, Any]:
        store, _ = ctx.require_store()
        row = await store.get_managed_file(file_id)
        if row is None or (ctx.key is not None and row["key_id"] not in (None, ctx.key.id)):
            raise NotFound(f"No such File object: '{file_id}'.", code="file_not_found")
        return row

    async def list_files(self, ctx: RequestContext, page: Page) -> JSON:
        store, _ = ctx.require_store()
        rows, more = await store.list_managed_files(
            limit=page.limit, after=page.after, purpose=page.extra.get("purpose"),
            ascending=page.extra.get("order") == "asc", key_id=ctx.key_id)
        return models.page([file_object(r) for r in rows], more, with_ids=True)

    async def retrieve_file(self, ctx: RequestContext, file_id: str) -> JSON:
        return file_object(await self._row(ctx, file_id))

    async def delete_file(self, ctx: RequestContext, file_id: str) -> JSON:
        row = await self._row(ctx, file_id)
        store, files = ctx.require_store()
        await store.delete_managed_file(file_id)
        await files.delete(row["location"])
        return models.deleted(file_id)

    async def file_content(self, ctx: RequestContext, file_id: str) -> Download:
        row = await self._row(ctx, file_id)
        _, files = ctx.require_store()
        return Download(files.read(row["location"]), media_type="application/octet-stream",
                        headers={"Content-Length": str(row["bytes"])})


class Tunegate(ManagedFiles):
    name = "tunegate"

    async def create_job(self, ctx: RequestContext, body: JSON) -> JSON:
        raise self.unsupported("fine-tuning jobs (it only keeps files: create the job on a provider, e.g. "
                               "x-portkey-provider: local or openai, with this file id as training_file)")
