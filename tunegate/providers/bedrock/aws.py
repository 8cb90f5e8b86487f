"""AWS plumbing for the Bedrock adapter: credentials, endpoints and SigV4 over tunegate's aiohttp upstream.

botocore is used only for its signer (``SigV4Auth``/``S3SigV4Auth`` over an ``AWSRequest``): no boto3
client ever runs on the event loop (their HTTP stack blocks). The URL we sign is the URL we send: it is
built already percent-encoded here and handed to aiohttp as ``yarl.URL(..., encoded=True)`` so nothing
re-quotes it between the signature and the wire.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import yarl

from tunegate.errors import InvalidRequest, NotSupported, Unauthorized
from tunegate.upstream import UpstreamResponse

if TYPE_CHECKING:
    from tunegate.context import RequestContext

DEFAULT_REGION = "us-east-1"
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
# S3 bucket names as Bedrock's S3Uri pattern accepts them (no uppercase, no underscores).
BUCKET = re.compile(r"[a-z0-9][-.a-z0-9]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class AwsAuth:
    """Either SigV4 keys or a Bedrock API key (bearer); never both are used for one call."""

    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    bearer: str | None = None

    @property
    def sigv4(self) -> bool:
        return bool(self.access_key and self.secret_key)


def _secret(ctx: RequestContext, name: str) -> str | None:
    value = ctx.option(name) or ctx.credentials.get(name)
    return str(value) if value else None


def auth(ctx: RequestContext) -> AwsAuth:
    """Keys from ``x-portkey-aws-access-key-id`` / ``-secret-access-key`` / ``-session-token`` or the
    connection's secrets; else a Bedrock API key sent as ``Authorization: Bearer``."""
    access, secret = _secret(ctx, "aws_access_key_id"), _secret(ctx, "aws_secret_access_key")
    if access or secret:
        if not (access and secret):
            missing = "x-portkey-aws-secret-access-key" if access else "x-portkey-aws-access-key-id"
            raise InvalidRequest(f"Provider 'bedrock' needs both AWS keys: '{missing}' is missing.", param=missing,
                                 code="missing_provider_option")
        return AwsAuth(access, secret, _secret(ctx, "aws_session_token"))
    bearer = ctx.credentials.get("api_key")
    if bearer:
        return AwsAuth(bearer=bearer)
    raise Unauthorized("Provider 'bedrock' needs AWS credentials ('x-portkey-aws-access-key-id' and "
                       "'x-portkey-aws-secret-access-key', or a connection holding them) or a Bedrock API key "
                       "('Authorization: Bearer').", code="missing_provider_credentials")


def region(ctx: RequestContext, option: str = "aws_region") -> str:
    value = str(ctx.option(option) or ctx.option("aws_region") or DEFAULT_REGION)
    if not _REGION.fullmatch(value):
        header = "x-portkey-" + option.replace("_", "-")
        raise InvalidRequest(f"'{value}' is not an AWS region.", param=header, code="invalid_provider_option")
    return value


def endpoint_from_env(service: str) -> str | None:
    """The operator's endpoint override, as the AWS SDKs read it (``AWS_ENDPOINT_URL_<SERVICE>`` first)."""
    value = os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL")
    return value.rstrip("/") if value else None


def query_string(params: list[tuple[str, str]]) -> str:
    """A query string encoded as SigV4's canonical form wants it (RFC 3986 unreserved characters only)."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params)


def sign(credentials: AwsAuth, service: str, region_name: str, method: str, url: str,
         headers: Mapping[str, str], body: bytes | bytearray | None) -> dict[str, str]:
    """The headers to send: the given ones plus the SigV4 (or bearer) authorization."""
    if not credentials.sigv4:
        if service != "bedrock":
            raise NotSupported("Amazon S3 needs AWS access keys (a Bedrock API key only works for Bedrock "
                               "itself): send 'x-portkey-aws-access-key-id' and 'x-portkey-aws-secret-access-key'.",
                               param="x-portkey-aws-access-key-id")
        return {**headers, "Authorization": f"Bearer {credentials.bearer}"}
    try:
        from botocore.auth import S3SigV4Auth, SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
    except ImportError:  # the optional extra: tunegate[cloud]
        raise NotSupported("AWS signing needs botocore on the gateway (install 'tunegate[cloud]').",
                           code="provider_dependency_missing") from None

    creds = Credentials(credentials.access_key, credentials.secret_key, credentials.session_token)
    signer = S3SigV4Auth(creds, "s3", region_name) if service == "s3" else SigV4Auth(creds, service, region_name)
    request = AWSRequest(method=method, url=url, data=body or b"", headers=dict(headers))
    signer.add_auth(request)
    return {k: str(v) for k, v in request.headers.items()}


async def call(ctx: RequestContext, credentials: AwsAuth, service: str, region_name: str, method: str, url: str, *,
               headers: Mapping[str, str] | None = None, body: bytes | bytearray | None = None,
               idempotent: bool = False) -> UpstreamResponse:
    """Sign and send one request (``url`` fully percent-encoded, query included)."""
    signed = sign(credentials, service, region_name, method, url, headers or {}, body)
    # aiohttp accepts a yarl.URL; `encoded=True` keeps our exact encoding (the signature covers it).
    target = cast(str, yarl.URL(url, encoded=True))
    response = await ctx.upstream.request(method, target, ctx.policy, headers=signed, data=body,
                                          idempotent=idempotent)
    ctx.upstream_status = response.status
    return response


def open_url(url: str) -> Any:
    return yarl.URL(url, encoded=True)
