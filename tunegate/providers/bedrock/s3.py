"""S3 for the Bedrock adapter: the generic client (``tunegate.aws.s3``) sending through the request's
context, with the provider's error mapping, plus the bucket/prefix options and S3 URIs Bedrock uses.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NoReturn

from tunegate.aws.s3 import MIN_PART, PART_SIZE, Bucket, S3Client, xml_error
from tunegate.errors import InvalidRequest
from tunegate.providers.bedrock import aws
from tunegate.upstream import UpstreamResponse

if TYPE_CHECKING:
    from tunegate.context import RequestContext
    from tunegate.providers.base import Provider

__all__ = ["MIN_PART", "PART_SIZE", "S3", "SEGMENT", "Bucket", "bucket_for", "parse_uri", "xml_error"]

# A key segment Bedrock's S3Uri pattern accepts.
SEGMENT = re.compile(r"[-!_*'().a-zA-Z0-9]+")


def parse_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(uri)
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not aws.BUCKET.fullmatch(bucket):
        raise ValueError(uri)
    return bucket, key


class S3(S3Client):
    def __init__(self, provider: Provider, ctx: RequestContext, credentials: aws.AwsAuth, bucket: Bucket) -> None:
        super().__init__(credentials, bucket)
        self.provider = provider
        self.ctx = ctx

    async def _call(self, method: str, key: str, query: list[tuple[str, str]] | None = None, *,
                    headers: dict[str, str] | None = None, body: bytes | bytearray | None = None,
                    idempotent: bool = True) -> UpstreamResponse:
        return await aws.call(self.ctx, self.credentials, "s3", self.bucket.region, method,
                              self.bucket.url(key, query), headers=headers, body=body, idempotent=idempotent)

    def _fail(self, response: UpstreamResponse) -> NoReturn:
        self.provider.check(self.ctx, response)  # raises the mapped error
        raise AssertionError("unreachable")  # pragma: no cover


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
