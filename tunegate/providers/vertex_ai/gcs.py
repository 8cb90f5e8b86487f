"""Cloud Storage (JSON API v1) for the OpenAI files API: resumable uploads, objects.list/get/delete, media downloads.

A file is a GCS object; its public id is ``file-`` + base64url(``gs://bucket/object``), so every operation works
from the id alone. Uploads stream: the body is sent in ``CHUNK`` pieces of a resumable session, never held whole.
``STORAGE_EMULATOR_HOST`` (as Google's client libraries read it) points every call at an emulator.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from tunegate import models
from tunegate.errors import InvalidRequest, NotFound, UpstreamError
from tunegate.providers import ids
from tunegate.providers.base import JSON, Page
from tunegate.providers.vertex_ai.jobs import FILE_PREFIX, file_id, unix
from tunegate.upstream import UpstreamResponse

if TYPE_CHECKING:
    from tunegate.context import RequestContext
    from tunegate.providers.vertex_ai import VertexAI

GCS_ROOT = "https://storage.googleapis.com"
CHUNK = 8 * 1024 * 1024  # resumable chunks must be multiples of 256 KiB; Google recommends at least 8 MiB
DEFAULT_PREFIX = "tunegate/"
LIST_PAGE = 1000  # objects.list maxResults while walking (GCS's own maximum)
_MAX_TIME = 10**13  # names carry (this - created ms) so that GCS's lexicographic order is newest first
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")  # Cloud Storage bucket names
_RANGE = re.compile(r"bytes=0-(\d+)")


def storage_prefix(value: object) -> str:
    """The object-name prefix of ``vertex_storage_prefix`` as files are kept and listed under it: the default
    when unset, always ending in ``/``. One reading for the adapter and for the lock that fixes the prefix with
    a connection's bucket (``VertexAI.effective_option``)."""
    prefix = DEFAULT_PREFIX if value in (None, "") else str(value)
    return prefix if prefix.endswith("/") else prefix + "/"


def root() -> str:
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if not host:
        return GCS_ROOT
    return (host if "://" in host else "http://" + host).rstrip("/")


def operator_hosts() -> set[str]:
    """Cloud Storage's host, or the emulator the operator's environment names."""
    host = urlsplit(root()).hostname
    return {host.lower()} if host else set()


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return bucket, name


def object_from_id(public_id: str) -> tuple[str, str]:
    uri = ids.decode(FILE_PREFIX, public_id, "file")
    bucket, name = split_uri(uri)
    if not uri.startswith("gs://") or not _BUCKET.fullmatch(bucket) or not name or not name.isprintable():
        raise NotFound(f"No such file: '{public_id}'.")
    return bucket, name


def object_url(bucket: str, name: str) -> str:
    return f"{root()}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"


def new_object_name(prefix: str, filename: str) -> str:
    stamp = _MAX_TIME - int(time.time() * 1000)
    base = _SAFE.sub("_", os.path.basename(filename) or "upload")[-200:] or "upload"
    return f"{prefix}{stamp:013d}-{secrets.token_hex(4)}/{base}"


def to_file(obj: JSON) -> JSON:
    meta = obj.get("metadata") or {}
    name = str(obj.get("name", ""))
    return models.file(
        id=file_id(f"gs://{obj.get('bucket', '')}/{name}"),
        bytes=int(obj.get("size") or 0),
        created_at=unix(obj.get("timeCreated")) or 0,
        filename=str(meta.get("filename") or name.rsplit("/", 1)[-1]),
        purpose=str(meta.get("purpose") or "fine-tune"),
        status="processed",
    )


class Storage:
    def __init__(self, provider: VertexAI) -> None:
        self.provider = provider

    async def _call(self, ctx: RequestContext, method: str, url: str, **kw: Any) -> UpstreamResponse:
        headers = {**await self.provider.auth(ctx), **kw.pop("headers", {})}
        resp = await ctx.upstream.request(method, url, ctx.policy, headers=headers, **kw)
        ctx.upstream_status = resp.status
        self.provider.refused(ctx, resp.status)
        return resp

    # ---- upload --------------------------------------------------------------------------------

    async def upload(self, ctx: RequestContext, bucket: str, name: str, content_type: str,
                     metadata: dict[str, str], chunks: AsyncIterator[bytes]) -> JSON:
        """A resumable upload: open a session, then PUT ``CHUNK``-sized pieces as the stream yields them."""
        init = await self._call(
            ctx, "POST", f"{root()}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
            params=[("uploadType", "resumable"), ("name", name)],
            json={"name": name, "contentType": content_type, "metadata": metadata},
            headers={"X-Upload-Content-Type": content_type}, idempotent=True)
        self.provider.check(ctx, init)
        session = init.headers.get("Location")
        if not session:
            raise UpstreamError("Cloud Storage opened no resumable session (no Location header).", status=502,
                                code="upstream_invalid_response")
        buffer = bytearray()
        offset = 0
        try:
            async for piece in chunks:
                view = memoryview(piece)
                while view:
                    if len(buffer) == CHUNK:  # full, and more follows: so not the last chunk
                        # Hand the buffer over (no copy); GCS may keep fewer bytes than sent, and the
                        # rest starts the next chunk.
                        part, buffer = buffer, bytearray()
                        persisted = await self._put(ctx, session, part, offset, None)
                        buffer += memoryview(part)[persisted - offset:]
                        offset = persisted
                        del part  # else the sent chunk stays alive while the next one fills: two in memory
                    take = min(len(view), CHUNK - len(buffer))
                    buffer += view[:take]
                    view = view[take:]
            return await self._finish(ctx, session, buffer, offset)
        except BaseException:
            await asyncio.shield(self._abandon(ctx, session))
            raise

    async def _put(self, ctx: RequestContext, session: str, data: bytes | bytearray, offset: int,
                   total: int | None) -> int:
        """One intermediate chunk; returns how many bytes GCS holds now (it may keep fewer than sent)."""
        end = offset + len(data) - 1
        resp = await self._call(ctx, "PUT", session, data=data, idempotent=True,
                                headers={"Content-Range": f"bytes {offset}-{end}/*",
                                         "Content-Type": "application/octet-stream"})
        if resp.status != 308:
            self.provider.check(ctx, resp)
            raise UpstreamError(f"Cloud Storage answered {resp.status} to an intermediate chunk.", status=502,
                                code="upstream_invalid_response")
        m = _RANGE.match(resp.headers.get("Range", ""))
        persisted = int(m.group(1)) + 1 if m else 0
        if persisted <= offset:
            raise UpstreamError("Cloud Storage kept none of an uploaded chunk.", status=502,
                                code="upstream_invalid_response")
        return min(persisted, end + 1)

    async def _finish(self, ctx: RequestContext, session: str, data: bytes | bytearray, offset: int) -> JSON:
        total = offset + len(data)
        content_range = f"bytes {offset}-{total - 1}/{total}" if data else f"bytes */{total}"
        resp = await self._call(ctx, "PUT", session, data=data, idempotent=True,
                                headers={"Content-Range": content_range,
                                         "Content-Type": "application/octet-stream"})
        if resp.status == 308:
            raise UpstreamError("Cloud Storage did not complete the upload.", status=502,
                                code="upstream_invalid_response")
        obj: JSON = self.provider.check(ctx, resp)
        return obj

    async def _abandon(self, ctx: RequestContext, session: str) -> None:
        """Cancel a resumable session (Google answers 499), so no partial object is left behind."""
        try:
            await ctx.upstream.request("DELETE", session, ctx.policy, headers=await self.provider.auth(ctx))
        except Exception:  # noqa: BLE001 - best effort: the session expires on its own after a week
            pass

    # ---- objects -------------------------------------------------------------------------------

    async def list(self, ctx: RequestContext, bucket: str, prefix: str, page: Page) -> JSON:
        """objects.list under the prefix, newest first (see new_object_name). ``after`` = the last file id of the
        previous page: its object name becomes ``startOffset`` and every name up to it is skipped, so any
        ``after`` fetches the next page with no server-side cursor."""
        if page.extra.get("order") not in (None, "desc"):
            raise InvalidRequest("Vertex AI files (Cloud Storage objects) are listed newest first only; "
                                 "'order' can only be 'desc'.", param="order", code="unsupported_parameter")
        purpose = page.extra.get("purpose")
        after_name = None
        if page.after:
            after_bucket, after_name = object_from_id(page.after)
            if after_bucket != bucket:
                raise InvalidRequest(f"'after' names a file in bucket '{after_bucket}', not '{bucket}'.",
                                     param="after")
        params: list[tuple[str, str]] = [("prefix", prefix), ("maxResults", str(min(LIST_PAGE, page.limit + 1)))]
        if after_name:
            params.append(("startOffset", after_name))
        found: list[JSON] = []
        token = None
        url = f"{root()}/storage/v1/b/{quote(bucket, safe='')}/o"
        while True:
            resp = await self._call(ctx, "GET", url, params=params + ([("pageToken", token)] if token else []),
                                    idempotent=True)
            raw = self.provider.check(ctx, resp) or {}
            for obj in raw.get("items") or []:
                name = str(obj.get("name", ""))
                if name.endswith("/") or (after_name is not None and name <= after_name):
                    continue
                f = to_file(obj)
                if purpose and f["purpose"] != purpose:
                    continue
                found.append(f)
                if len(found) > page.limit:
                    return models.page(found[:page.limit], True, with_ids=True)
            token = raw.get("nextPageToken")
            if not token:
                return models.page(found, False, with_ids=True)

    async def get(self, ctx: RequestContext, bucket: str, name: str) -> JSON:
        resp = await self._call(ctx, "GET", object_url(bucket, name), idempotent=True)
        return self.provider.check(ctx, resp)  # type: ignore[no-any-return]

    async def delete(self, ctx: RequestContext, bucket: str, name: str) -> None:
        resp = await self._call(ctx, "DELETE", object_url(bucket, name), idempotent=True)
        self.provider.check(ctx, UpstreamResponse(resp.status, resp.headers, b"{}" if resp.ok else resp.body))
