"""Amazon S3 over SigV4 and aiohttp: the few calls the Bedrock adapter needs for training files.

Uploads are real multipart uploads (CreateMultipartUpload, UploadPart, CompleteMultipartUpload): the
stream is cut into parts of ``PART_SIZE`` bytes (S3 wants at least 5 MiB for every part but the last),
so at most one part is held in memory. Any failure — a bad line in the stream, a provider error, a
cancelled request — aborts the upload (AbortMultipartUpload), so no part is left billed in the bucket.
XML answers are small (one listing page, one upload id) and parsed with the standard library.
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from tunegate.errors import InvalidRequest, NotFound, UpstreamError
from tunegate.providers.bedrock import aws
from tunegate.upstream import UpstreamResponse

if TYPE_CHECKING:
    from tunegate.context import RequestContext
    from tunegate.providers.base import Provider

# A key segment Bedrock's S3Uri pattern accepts.
SEGMENT = re.compile(r"[-!_*'().a-zA-Z0-9]+")
MIN_PART = 5 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024  # buffered per part: never more than this in memory


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


def parse_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(uri)
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not aws.BUCKET.fullmatch(bucket):
        raise ValueError(uri)
    return bucket, key


def _xml(body: bytes) -> ET.Element:
    root = ET.fromstring(body)
    for element in root.iter():  # drop the S3 namespace: find("Key") instead of find("{ns}Key")
        if isinstance(element.tag, str) and element.tag.startswith("{"):
            element.tag = element.tag.split("}", 1)[1]
    return root


def xml_error(body: bytes) -> tuple[str | None, str | None]:
    """(code, message) of an S3 ``<Error>`` body."""
    try:
        root = _xml(body)
    except ET.ParseError:
        return None, None
    return root.findtext("Code"), root.findtext("Message")


class S3:
    def __init__(self, provider: Provider, ctx: RequestContext, credentials: aws.AwsAuth, bucket: Bucket) -> None:
        self.provider = provider
        self.ctx = ctx
        self.credentials = credentials
        self.bucket = bucket

    async def _call(self, method: str, key: str, query: list[tuple[str, str]] | None = None, *,
                    headers: dict[str, str] | None = None, body: bytes | bytearray | None = None,
                    idempotent: bool = True) -> UpstreamResponse:
        return await aws.call(self.ctx, self.credentials, "s3", self.bucket.region, method,
                              self.bucket.url(key, query), headers=headers, body=body, idempotent=idempotent)

    def _check(self, response: UpstreamResponse) -> UpstreamResponse:
        if response.ok:
            return response
        self.provider.check(self.ctx, response)  # raises the mapped error
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- multipart upload ------------------------------------------------------------------------

    async def upload(self, key: str, chunks: AsyncIterator[bytes], metadata: dict[str, str],
                     content_type: str = "application/jsonl") -> int:
        """Stream ``chunks`` into ``key``; the object's size. Aborts the upload on any failure."""
        headers = {"Content-Type": content_type, **{f"x-amz-meta-{k}": v for k, v in metadata.items()}}
        created = self._check(await self._call("POST", key, [("uploads", "")], headers=headers, idempotent=False))
        upload_id = _xml(created.body).findtext("UploadId")
        if not upload_id:
            raise UpstreamError("S3 answered CreateMultipartUpload without an UploadId.", status=502,
                                code="upstream_invalid_response")
        try:
            etags: list[str] = []
            size = 0
            buffer = bytearray()
            async for chunk in chunks:
                size += len(chunk)
                view = memoryview(chunk)
                while view:  # fill the part exactly: the buffer never grows past PART_SIZE
                    take = min(len(view), PART_SIZE - len(buffer))
                    buffer += view[:take]
                    view = view[take:]
                    if len(buffer) == PART_SIZE:  # hand the full buffer over (no copy), start a new one
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
            return size
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
        root = _xml(self._check(await self._call("GET", "", query)).body)
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


def bucket_for(ctx: RequestContext) -> tuple[Bucket, str]:
    """(bucket, key prefix) from ``x-portkey-aws-s3-bucket`` (``bucket`` or ``bucket/prefix``) and
    ``x-portkey-aws-s3-prefix``, or the connection's options."""
    raw = str(ctx.require_option("aws_s3_bucket")).strip()
    raw = raw.removeprefix("s3://")
    name, _, prefix = raw.partition("/")
    if not aws.BUCKET.fullmatch(name):
        raise InvalidRequest(f"'{name}' is not an S3 bucket name.", param="x-portkey-aws-s3-bucket",
                             code="invalid_provider_option")
    prefix = str(ctx.option("aws_s3_prefix") or prefix or "tunegate").strip("/")
    if not all(SEGMENT.fullmatch(part) for part in prefix.split("/")):
        raise InvalidRequest("The S3 prefix may hold only letters, digits and -_.!*'() between slashes "
                             "(Bedrock's S3Uri pattern).", param="x-portkey-aws-s3-prefix", code="invalid_provider_option")
    return Bucket(name, aws.region(ctx, "aws_s3_region"), aws.endpoint_from_env("s3")), prefix


