"""``S3Store``: managed files in an S3-compatible bucket, for deployments with several gateway instances.

- ``write`` streams into a multipart upload (PART_SIZE parts, at most one part in memory) and hashes the
  bytes as they pass; any failure — an S3 error, a bad upload, a client that disconnects — aborts the
  multipart upload, so no object and no dangling parts are left behind.
- ``read`` streams GetObject; ``delete`` is DeleteObject.
- ``local_path`` downloads the object once into ``<data_dir>/files/s3-cache`` (atomically: a temporary
  file, then rename) for the ``local`` trainer, which reads training files from disk; ``path`` answers only
  for objects already cached there. Objects never change once written (ids are unique), so the cache
  never goes stale; ``delete`` drops the cached copy on this instance. The cache is bounded
  (``file_store_s3_cache_bytes``, 20 GiB by default): after each download the least recently used copies
  are removed until it fits, except copies used in the last ``CACHE_GRACE`` seconds (a trainer may be about
  to open them; one that has a copy open keeps reading it after the unlink).
- Requests are signed with SigV4 (``tunegate.aws``) and sent over the store's own aiohttp session
  (an ``Upstream`` created in the app's lifespan), with the gateway's timeouts and retry policy.

Settings: ``file_store = "s3"``, ``file_store_s3_bucket``, ``file_store_s3_prefix``, ``file_store_s3_region``;
keys from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``; a custom endpoint
(MinIO, LocalStack, moto) from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (path-style addressing).
The location kept in the database is the object's full key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from tunegate import aws
from tunegate.aws.s3 import Bucket, S3Client, xml_error
from tunegate.errors import NotFound, UpstreamError
from tunegate.files import CHUNK, Stored
from tunegate.private import create_private, private_dir
from tunegate.upstream import CallPolicy, Upstream, UpstreamResponse

if TYPE_CHECKING:
    from tunegate.config import Settings


class _Client(S3Client):
    def __init__(self, upstream: Upstream, policy: CallPolicy, credentials: aws.AwsAuth, bucket: Bucket) -> None:
        super().__init__(credentials, bucket)
        self.upstream = upstream
        self.policy = policy

    async def _send(self, method: str, url: str, headers: dict[str, str],
                    body: bytes | bytearray | None, idempotent: bool) -> UpstreamResponse:
        return await self.upstream.request(method, cast(str, aws.open_url(url)), self.policy, headers=headers,
                                           data=body, idempotent=idempotent)


CACHE_GRACE = 15 * 60  # seconds a cached copy is kept after its last use, whatever the bound


class S3Store:
    def __init__(self, upstream: Upstream, policy: CallPolicy, credentials: aws.AwsAuth, bucket: Bucket,
                 prefix: str, cache_dir: Path, cache_bytes: int = 20 * 1024**3) -> None:
        self.client = _Client(upstream, policy, credentials, bucket)
        self.upstream = upstream
        self.policy = policy
        self.prefix = prefix.strip("/")
        self.cache = cache_dir
        self.tmp = cache_dir / "tmp"
        self.cache_bytes = cache_bytes

    @classmethod
    def from_settings(cls, settings: Settings, upstream: Upstream) -> S3Store:
        bucket = settings.file_store_s3_bucket
        if not bucket or not aws.BUCKET.fullmatch(bucket):
            raise ValueError("file_store = 's3' needs file_store_s3_bucket (TUNEGATE_FILE_STORE_S3_BUCKET), "
                             f"a valid S3 bucket name (got {bucket!r}).")
        credentials = aws.auth_from_env()
        if not credentials.sigv4:
            raise ValueError("file_store = 's3' needs AWS keys in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.")
        region = (settings.file_store_s3_region or os.environ.get("AWS_REGION")
                  or os.environ.get("AWS_DEFAULT_REGION") or aws.DEFAULT_REGION)
        endpoint = aws.endpoint_from_env("s3")
        # The store's endpoint is the operator's (environment): it may be a private address (MinIO).
        trusted = frozenset({host.lower()}) if endpoint and (host := urlsplit(endpoint).hostname) else frozenset()
        return cls(upstream, CallPolicy(settings.timeouts, settings.retry, trusted_hosts=trusted), credentials,
                   Bucket(bucket, region, endpoint), settings.file_store_s3_prefix,
                   settings.data_dir / "files" / "s3-cache", settings.file_store_s3_cache_bytes)

    def prepare(self) -> None:
        """Create the cache folders and sweep temporaries a crashed process left behind."""
        private_dir(self.cache)  # 0700: copies of training data
        private_dir(self.tmp)
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    async def write(self, name: str, chunks: AsyncIterator[bytes]) -> Stored:
        key = self._key(name)
        uploaded = await self.client.upload_hashed(key, chunks, {}, "application/octet-stream")
        return Stored(location=key, bytes=uploaded.bytes, sha256=uploaded.sha256)

    async def read(self, location: str) -> AsyncIterator[bytes]:
        url, headers = self.client.signed_get(location)
        response = await self.upstream.open("GET", cast(str, aws.open_url(url)), self.policy, headers=headers)
        try:
            if response.status == 404:
                raise NotFound(f"The stored file '{location}' is missing from the bucket.", code="file_not_found")
            if response.status >= 400:
                code, message = xml_error(await response.read())
                raise UpstreamError(f"S3 answered {response.status}: {message or code or 'no details'}",
                                    status=502, code="upstream_error")
            async for chunk in response.content.iter_chunked(CHUNK):
                yield chunk
        finally:
            response.release()

    def _cached(self, location: str) -> Path:
        return self.cache / hashlib.sha256(location.encode()).hexdigest()

    def path(self, location: str) -> Path:
        """The cached local copy; only after ``local_path`` fetched it (a remote store cannot read here)."""
        cached = self._cached(location)
        if not cached.exists():
            raise FileNotFoundError(f"'{location}' is in S3 and not cached on this instance: "
                                    "use `await store.local_path(location)`.")
        return cached

    async def local_path(self, location: str) -> Path:
        cached = self._cached(location)
        if await asyncio.to_thread(_touch, cached):
            return cached
        temp = self.tmp / f"{cached.name}.{secrets.token_hex(4)}.part"
        handle = await asyncio.to_thread(create_private, temp)
        try:
            async for chunk in self.read(location):
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.replace, temp, cached)
        except BaseException:
            with contextlib.suppress(OSError):
                handle.close()
            temp.unlink(missing_ok=True)
            raise
        await asyncio.to_thread(self._trim)
        return cached

    def _trim(self) -> None:
        """Remove the least recently used copies until the cache fits its bound (blocking: run in a thread)."""
        copies = []
        for entry in os.scandir(self.cache):
            if entry.is_file(follow_symlinks=False):
                stat = entry.stat()
                copies.append((stat.st_mtime, stat.st_size, entry.path))
        total = sum(size for _, size, _ in copies)
        recent = time.time() - CACHE_GRACE
        for used, size, path in sorted(copies):
            if total <= self.cache_bytes or used >= recent:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size

    async def delete(self, location: str) -> None:
        await self.client.delete(location)
        await asyncio.to_thread(self._cached(location).unlink, True)


def _touch(path: Path) -> bool:
    """Mark a cached copy as just used (its mtime orders the cache); False when there is none."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True
