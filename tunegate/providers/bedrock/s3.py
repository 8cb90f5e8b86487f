"""S3 for the Bedrock adapter: the generic client (``tunegate.aws.s3``) sending through the request's
context, with the provider's error mapping, plus the bucket/prefix options and S3 URIs Bedrock uses.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NoReturn

from tunegate.aws.s3 import MIN_PART, PART_SIZE, Bucket, S3Client, xml_error
from tunegate.errors import InvalidRequest, UpstreamError
from tunegate.providers.base import clean_retry_after
from tunegate.providers.bedrock import aws
from tunegate.upstream import UpstreamResponse

if TYPE_CHECKING:
    from tunegate.context import RequestContext
    from tunegate.providers.base import Provider

__all__ = ["MIN_PART", "PART_SIZE", "S3", "SEGMENT", "Bucket", "bucket_for", "parse_uri", "split_bucket", "xml_error"]

SSE_OPTION = "amz_server_side_encryption"
KMS_KEY_OPTION = "amz_server_side_encryption_aws_kms_key_id"
# botocore s3 ServerSideEncryption enum, less aws:fsx / aws:backup (not for general-purpose bucket uploads).
SSE_MODES = ("AES256", "aws:kms", "aws:kms:dsse")
KMS_KEY = re.compile(r"[A-Za-z0-9:/_.+=@-]{1,2048}")
# A key segment Bedrock's S3Uri pattern accepts.
SEGMENT = re.compile(r"[-!_*'().a-zA-Z0-9]+")
DEFAULT_PREFIX = "tunegate"  # the key prefix when neither the bucket option nor aws_s3_prefix names one


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
        if method == "POST" and query == [("uploads", "")]:  # CreateMultipartUpload: where S3 takes SSE
            headers = {**(headers or {}), **encryption_headers(self.ctx)}
        return await aws.call(self.ctx, self.credentials, "s3", self.bucket.region, method,
                              self.bucket.url(key, query), headers=headers, body=body, idempotent=idempotent)

    def _fail(self, response: UpstreamResponse) -> NoReturn:
        raise s3_error(self.ctx, response)


def encryption_headers(ctx: RequestContext) -> dict[str, str]:
    """Server-side encryption for uploads, Portkey's options: ``x-portkey-amz-server-side-encryption``
    (``AES256``, ``aws:kms``, ``aws:kms:dsse``) and ``x-portkey-amz-server-side-encryption-aws-kms-key-id``
    (a key id, ARN or alias; alone it means ``aws:kms``). botocore's s3 2006-03-01 model takes them on
    CreateMultipartUpload only (UploadPart has no such members: S3 refuses them there). Buckets whose
    policy requires SSE-KMS refuse every upload without them."""
    mode = ctx.option(SSE_OPTION)
    key_id = ctx.option(KMS_KEY_OPTION)
    if mode is None and key_id is None:
        return {}
    mode = str(mode or "aws:kms")
    if mode not in SSE_MODES:
        raise InvalidRequest(f"'{mode[:64]}' is not a server-side encryption S3 takes here (one of: "
                             f"{', '.join(SSE_MODES)}).", param=_header(SSE_OPTION), code="invalid_provider_option")
    headers = {"x-amz-server-side-encryption": mode}
    if key_id is not None:
        if mode == "AES256":
            raise InvalidRequest("A KMS key id goes with 'aws:kms' or 'aws:kms:dsse' encryption, not 'AES256'.",
                                 param=_header(KMS_KEY_OPTION), code="invalid_provider_option")
        if not KMS_KEY.fullmatch(str(key_id)):
            raise InvalidRequest("The KMS key id must be a key id, key ARN or alias (letters, digits and "
                                 ":/_-.+=@, up to 2048).", param=_header(KMS_KEY_OPTION),
                                 code="invalid_provider_option")
        headers["x-amz-server-side-encryption-aws-kms-key-id"] = str(key_id)
    return headers


def _header(option: str) -> str:
    return "x-portkey-" + option.replace("_", "-")


def s3_error(ctx: RequestContext, response: UpstreamResponse) -> UpstreamError:
    """An S3 failure named as S3's: the message says it came from Amazon S3 and ``code`` is S3's own
    (``AccessDenied``, ``NoSuchBucket``…), so a bucket problem is not mistaken for a Bedrock one. A HEAD
    answer carries no body, so there only the status is known (botocore names such errors by it too)."""
    code, message = xml_error(response.body) if response.body.lstrip().startswith(b"<") else (None, None)
    status = response.status if 400 <= response.status < 600 else 502  # S3 redirects: a wrong region
    text = named_message(response.status, code, message)
    headers = {}
    if response.status in (429, 503) and (retry := clean_retry_after(response.headers.get("Retry-After", ""))):
        headers["Retry-After"] = retry
    return UpstreamError(ctx.redact(text), status=status, code=ctx.redact(code or f"upstream_{status}")[:64],
                         headers=headers)


def named_message(status: int, code: str | None, message: str | None) -> str:
    if code or message:
        return f"Amazon S3 answered HTTP {status} {code or ''}: {message or 'no details'}".replace(" :", ":")
    return f"Amazon S3 answered HTTP {status} with no details."


def split_bucket(bucket: object, prefix: object) -> tuple[str, str]:
    """(bucket name, key prefix) from the options ``aws_s3_bucket`` (``bucket`` or ``bucket/prefix``, maybe
    as ``s3://…``) and ``aws_s3_prefix``: the prefix option wins over one inside the bucket option, else the
    default ``tunegate``; unchecked. One reading for the adapter and for the lock that fixes the prefix
    with a connection's bucket (``Bedrock.effective_option``)."""
    name, _, inside = str(bucket or "").strip().removeprefix("s3://").partition("/")
    return name, str(prefix or inside or DEFAULT_PREFIX).strip("/")


def bucket_for(ctx: RequestContext) -> tuple[Bucket, str]:
    """(bucket, key prefix) from ``x-portkey-aws-s3-bucket`` (``bucket`` or ``bucket/prefix``) and
    ``x-portkey-aws-s3-prefix``, or the connection's options."""
    name, prefix = split_bucket(ctx.require_option("aws_s3_bucket"), ctx.option("aws_s3_prefix"))
    if not aws.BUCKET.fullmatch(name):
        raise InvalidRequest(f"'{name}' is not an S3 bucket name.", param="x-portkey-aws-s3-bucket",
                             code="invalid_provider_option")
    if not all(SEGMENT.fullmatch(part) for part in prefix.split("/")):
        raise InvalidRequest("The S3 prefix may hold only letters, digits and -_.!*'() between slashes "
                             "(Bedrock's S3Uri pattern).", param="x-portkey-aws-s3-prefix", code="invalid_provider_option")
    return Bucket(name, aws.region(ctx, "aws_s3_region"), aws.endpoint_from_env("s3")), prefix
