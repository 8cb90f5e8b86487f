"""Amazon S3 over SigV4 and aiohttp: multipart uploads, listings, HEAD/DELETE, signed GETs.

Uploads are real multipart uploads (CreateMultipartUpload, UploadPart, CompleteMultipartUpload): the
stream is cut into parts of ``part_size`` bytes (S3 wants at least 5 MiB for every part but the last),
so at most one part is held in memory. Any failure — a bad line in the stream, an S3 error, a
cancelled request — aborts the upload (AbortMultipartUpload), so no part is left billed in the bucket.
XML answers are small (one listing page, one upload id) and parsed with the standard library.

``S3Client`` is transport-agnostic: a subclass says how one signed request is sent (``_send``) and how a
failed answer becomes an error (``_fail``) — the Bedrock adapter sends through the request's context,
the gateway's S3 file store through its own session.
"""

from __future__ import annotations

import asyncio
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import quote

from tunegate import aws
from tunegate.aws import xml
from tunegate.errors import NotFound, UpstreamError
from tunegate.upstream import UpstreamResponse

MIN_PART = 5 * 1024 * 1024
PART_SIZE = 5 * 1024 * 1024  # buffered per part: never more than this in memory (the S3 minimum)


@dataclass(frozen=True)
class Bucket:
    name: str
    region: str
    endpoint: str | None  # a custom endpoint (path-style addressing), else AWS itself

    def url(self, key: str = "", query: list[tuple[str, str]] | None = None) -> str:
        if self.endpoint:  # custom endpoints (MinIO, moto, LocalStack): path-style
            base = f"{self.endpoint}/{self.name}"
        elif "." in self.name:  # dotted names break TLS on virtual hosts: path-style
            base = f"https://s3.{self.region}.amazonaws.com/{self.name}"
        else:
            base = f"https://{self.name}.s3.{self.region}.amazonaws.com"
        qs = aws.query_string(query or [])
        return f"{base}/{quote(key, safe='/-_.~')}" + (f"?{qs}" if qs else "")


def xml_error(body: bytes) -> tuple[str | None, str | None]:
    """(code, message) of an S3 ``<Error>`` body."""
    try:
        root = xml(body)
    except ET.ParseError:
        return None, None
    return root.findtext("Code"), root.findtext("Message")


@dataclass
class Uploaded:
    bytes: int
    sha256: str


class S3Client:
    part_size = PART_SIZE

    def __init__(self, credentials: aws.AwsAuth, bucket: Bucket) -> None:
        self.credentials = credentials
        self.bucket = bucket

    async def _send(self, method: str, url: str, headers: dict[str, str],
                    body: bytes | bytearray | None, idempotent: bool) -> UpstreamResponse:
        raise NotImplementedError

    def _fail(self, response: UpstreamResponse) -> NoReturn:
        code, message = xml_error(response.body)
        raise UpstreamError(f"S3 answered {response.status}: {message or code or 'no details'}",
                            status=502, code="upstream_error")

    async def _call(self, method: str, key: str, query: list[tuple[str, str]] | None = None, *,
                    headers: dict[str, str] | None = None, body: bytes | bytearray | None = None,
                    idempotent: bool = True) -> UpstreamResponse:
        url = self.bucket.url(key, query)
        signed = aws.sign(self.credentials, "s3", self.bucket.region, method, url, headers or {}, body)
        return await self._send(method, url, signed, body, idempotent)

    def _check(self, response: UpstreamResponse) -> UpstreamResponse:
        if response.ok:
            return response
        self._fail(response)

    # ---- multipart upload ------------------------------------------------------------------------

    async def upload(self, key: str, chunks: AsyncIterator[bytes], metadata: dict[str, str],
                     content_type: str = "application/jsonl") -> int:
        """Stream ``chunks`` into ``key``; the object's size. Aborts the upload on any failure."""
        return (await self.upload_hashed(key, chunks, metadata, content_type)).bytes

    async def upload_hashed(self, key: str, chunks: AsyncIterator[bytes], metadata: dict[str, str],
                            content_type: str = "application/jsonl") -> Uploaded:
        """Stream ``chunks`` into ``key``: its size and SHA-256 (computed while streaming)."""
        headers = {"Content-Type": content_type, **{f"x-amz-meta-{k}": v for k, v in metadata.items()}}
        created = self._check(await self._call("POST", key, [("uploads", "")], headers=headers, idempotent=False))
        upload_id = xml(created.body).findtext("UploadId")
        if not upload_id:
            raise UpstreamError("S3 answered CreateMultipartUpload without an UploadId.", status=502,
                                code="upstream_invalid_response")
        part_size = self.part_size
        try:
            etags: list[str] = []
            size = 0
            digest = hashlib.sha256()
            buffer = bytearray()
            async for chunk in chunks:
                size += len(chunk)
                digest.update(chunk)
                view = memoryview(chunk)
                while view:  # fill the part exactly: the buffer never grows past part_size
                    take = min(len(view), part_size - len(buffer))
                    buffer += view[:take]
                    view = view[take:]
                    if len(buffer) == part_size:  # hand the full buffer over (no copy), start a new one
                        part, buffer = buffer, bytearray()
                        etags.append(await self._part(key, upload_id, len(etags) + 1, part))
                        del part
            if buffer or not etags:  # the last part may be small (or empty for an empty file)
                etags.append(await self._part(key, upload_id, len(etags) + 1, buffer))
            parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
                            for n, etag in enumerate(etags, 1))
            body = f'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{parts}' \
                   "</CompleteMultipartUpload>"
            done = self._check(await self._call("POST", key, [("uploadId", upload_id)], body=body.encode(),
                                                headers={"Content-Type": "application/xml"}))
            if b"<Error>" in done.body[:512]:  # S3 may report a failed completion inside a 200
                code, message = xml_error(done.body)
                raise UpstreamError(f"S3 could not complete the upload: {message or code}", status=502,
                                    code="upstream_error")
            return Uploaded(size, digest.hexdigest())
        except BaseException:
            await asyncio.shield(self._abort(key, upload_id))
            raise

    async def _part(self, key: str, upload_id: str, number: int, data: bytes | bytearray) -> str:
        response = self._check(await self._call(
            "PUT", key, [("partNumber", str(number)), ("uploadId", upload_id)], body=data,
            headers={"Content-Length": str(len(data))}))
        etag = response.headers.get("ETag")
        if not etag:
            raise UpstreamError("S3 answered UploadPart without an ETag.", status=502, code="upstream_invalid_response")
        return etag

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._call("DELETE", key, [("uploadId", upload_id)])
        except Exception:  # noqa: BLE001 - the original failure is the one to report
            pass

    # ---- objects ---------------------------------------------------------------------------------

    async def list(self, prefix: str, max_keys: int, start_after: str | None,
                   token: str | None) -> tuple[list[dict[str, str]], str | None]:
        """One ListObjectsV2 page: ([{Key, Size, LastModified}], continuation token or None)."""
        query = [("list-type", "2"), ("max-keys", str(max_keys)), ("prefix", prefix)]
        if token:
            query.append(("continuation-token", token))
        elif start_after:
            query.append(("start-after", start_after))
        root = xml(self._check(await self._call("GET", "", query)).body)
        objects = [{child.tag: (child.text or "") for child in item} for item in root.findall("Contents")]
        truncated = (root.findtext("IsTruncated") or "").lower() == "true"
        return objects, (root.findtext("NextContinuationToken") if truncated else None)

    async def head(self, key: str, kind: str = "file", public_id: str = "") -> UpstreamResponse:
        response = await self._call("HEAD", key)
        if response.status == 404:
            raise NotFound(f"No such {kind}: '{public_id or key}'.")
        return self._check(response)

    async def delete(self, key: str) -> None:
        self._check(await self._call("DELETE", key))

    def signed_get(self, key: str) -> tuple[str, dict[str, str]]:
        url = self.bucket.url(key)
        return url, aws.sign(self.credentials, "s3", self.bucket.region, "GET", url, {}, None)
