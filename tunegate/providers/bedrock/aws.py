"""AWS plumbing for the Bedrock adapter: credentials and region from the request, SigV4 calls over
tunegate's aiohttp upstream. The context-free parts (signing, endpoints) live in ``tunegate.aws``.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
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
    sts,
)
from tunegate.errors import APIError, Forbidden, InvalidRequest, Unauthorized, UpstreamError
from tunegate.upstream import UpstreamResponse

if TYPE_CHECKING:
    from tunegate.context import RequestContext

__all__ = ["BUCKET", "DEFAULT_REGION", "AwsAuth", "RoleSessions", "auth", "call", "endpoint_from_env", "open_url",
           "query_string", "region", "sign"]

ROLE_MARGIN = 300.0  # seconds before expiry at which assumed credentials are renewed
ROLE_CACHE_SIZE = 1024  # assumed sessions kept (oldest dropped first)


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


class RoleSessions:
    """The credentials a request signs with: its own (see :func:`auth`), or, when it names a role
    (``x-portkey-aws-role-arn``, optionally ``x-portkey-aws-external-id``), temporary ones from STS
    AssumeRole made with the request's or the connection's keys. The gateway's own AWS identity is never
    lent to a client. Assumed credentials are cached per (base keys, role, external id, region) until
    ``ROLE_MARGIN`` seconds before they expire. One per adapter."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, sts.Assumed] = OrderedDict()
        self.assumed = 0  # AssumeRole calls made (for tests and logs)

    async def credentials(self, ctx: RequestContext) -> AwsAuth:
        base = auth(ctx)
        role = _secret(ctx, "aws_role_arn")
        if not role:
            return base
        if not sts.ROLE_ARN.fullmatch(role):
            raise InvalidRequest(f"'{role[:200]}' is not an IAM role ARN.", param="x-portkey-aws-role-arn",
                                 code="invalid_provider_option")
        external_id = _secret(ctx, "aws_external_id")
        if external_id is not None and not sts.EXTERNAL_ID.fullmatch(external_id):
            raise InvalidRequest("x-portkey-aws-external-id must be 2 to 1224 characters of [\\w+=,.@:/-].",
                                 param="x-portkey-aws-external-id", code="invalid_provider_option")
        if not base.sigv4:
            raise InvalidRequest("Assuming a role needs AWS access keys to call STS with ('x-portkey-aws-access-key-id' "
                                 "and 'x-portkey-aws-secret-access-key', or a connection holding them).",
                                 param="x-portkey-aws-access-key-id", code="missing_provider_option")
        where = region(ctx)
        ident = "|".join([str(base.access_key), str(base.secret_key), base.session_token or "", role,
                          external_id or "", where])
        key = hashlib.sha256(ident.encode()).hexdigest()
        assumed = self._cache.get(key)
        if assumed is not None and assumed.expires_at - ROLE_MARGIN > time.time():
            self._cache.move_to_end(key)
        else:
            assumed = await self._assume(ctx, base, where, role, external_id)
            self._cache[key] = assumed
            while len(self._cache) > ROLE_CACHE_SIZE:
                self._cache.popitem(last=False)
        temporary = assumed.credentials
        # Known to the context, so its redaction hides them should an upstream ever echo them.
        ctx.credentials["aws_assumed_secret_access_key"] = str(temporary.secret_key)
        ctx.credentials["aws_assumed_session_token"] = str(temporary.session_token)
        return temporary

    async def _assume(self, ctx: RequestContext, base: AwsAuth, where: str, role: str,
                      external_id: str | None) -> sts.Assumed:
        async def send(method: str, url: str, headers: dict[str, str], body: bytes) -> UpstreamResponse:
            return await call(ctx, base, "sts", where, method, url, headers=headers, body=body, idempotent=True)

        try:
            assumed = await sts.assume_role(send, where, role, external_id)
        except sts.AssumeRoleError as exc:
            raise _role_error(role, exc) from None
        self.assumed += 1
        return assumed


def _role_error(role: str, exc: sts.AssumeRoleError) -> APIError:
    detail = _detail(exc)
    if exc.status == 403:
        return Forbidden(f"AWS STS refused to assume role '{role}': {detail}", code="assume_role_denied")
    if exc.status == 400:
        return InvalidRequest(f"AWS STS could not assume role '{role}': {detail}", param="x-portkey-aws-role-arn",
                              code="invalid_provider_option")
    return UpstreamError(f"AWS STS answered AssumeRole with HTTP {exc.status}: {detail}", status=502,
                         code="upstream_error")


def _detail(exc: sts.AssumeRoleError) -> str:
    return f"{exc.code}: {exc.message}" if exc.code and exc.message else (exc.message or exc.code or "no details")
