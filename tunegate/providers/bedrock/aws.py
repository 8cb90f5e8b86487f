"""AWS plumbing for the Bedrock adapter: credentials and region from the request, SigV4 calls over
tunegate's aiohttp upstream. The context-free parts (signing, endpoints) live in ``tunegate.aws``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

from tunegate.aws import (
    BUCKET,
    DEFAULT_REGION,
    REGION,
    AwsAuth,
    endpoint_from_env,
    open_url,
    query_string,
    sign,
)
from tunegate.errors import InvalidRequest, Unauthorized
from tunegate.upstream import UpstreamResponse

if TYPE_CHECKING:
    from tunegate.context import RequestContext

__all__ = ["BUCKET", "DEFAULT_REGION", "AwsAuth", "auth", "call", "endpoint_from_env", "open_url", "query_string",
           "region", "sign"]


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
    if not REGION.fullmatch(value):
        header = "x-portkey-" + option.replace("_", "-")
        raise InvalidRequest(f"'{value}' is not an AWS region.", param=header, code="invalid_provider_option")
    return value


async def call(ctx: RequestContext, credentials: AwsAuth, service: str, region_name: str, method: str, url: str, *,
               headers: Mapping[str, str] | None = None, body: bytes | bytearray | None = None,
               idempotent: bool = False) -> UpstreamResponse:
    """Sign and send one request (``url`` fully percent-encoded, query included)."""
    signed = sign(credentials, service, region_name, method, url, headers or {}, body)
    # aiohttp accepts a yarl.URL; `encoded=True` keeps our exact encoding (the signature covers it).
    target = cast(str, open_url(url))
    response = await ctx.upstream.request(method, target, ctx.policy, headers=signed, data=body,
                                          idempotent=idempotent)
    ctx.upstream_status = response.status
    return response
