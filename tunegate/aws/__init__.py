"""AWS plumbing shared by the Bedrock adapter and the S3 file store: credentials, endpoints, SigV4.

botocore is used only for its signer (``SigV4Auth``/``S3SigV4Auth`` over an ``AWSRequest``): no boto3
client ever runs on the event loop (their HTTP stack blocks). The URL we sign is the URL we send: it is
built already percent-encoded and handed to aiohttp as ``yarl.URL(..., encoded=True)`` so nothing
re-quotes it between the signature and the wire. Nothing here needs a request context.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import yarl

from tunegate.errors import NotSupported

DEFAULT_REGION = "us-east-1"
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
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


def auth_from_env() -> AwsAuth:
    """Keys from the standard ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``."""
    return AwsAuth(os.environ.get("AWS_ACCESS_KEY_ID") or None, os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
                   os.environ.get("AWS_SESSION_TOKEN") or None)


def endpoint_from_env(service: str) -> str | None:
    """The operator's endpoint override, as the AWS SDKs read it (``AWS_ENDPOINT_URL_<SERVICE>`` first)."""
    value = os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL")
    return value.rstrip("/") if value else None


def query_string(params: list[tuple[str, str]]) -> str:
    """A query string encoded as SigV4's canonical form wants it (RFC 3986 unreserved characters only)."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params)


# SigV4 signing names that accept a Bedrock API key as a bearer token (the bedrock control plane and
# bedrock-runtime both sign as "bedrock"); S3 takes only access keys.
BEARER_SERVICES = frozenset({"bedrock"})


def sign(credentials: AwsAuth, service: str, region_name: str, method: str, url: str,
         headers: Mapping[str, str], body: bytes | bytearray | None) -> dict[str, str]:
    """The headers to send: the given ones plus the SigV4 (or bearer) authorization."""
    if not credentials.sigv4:
        if service not in BEARER_SERVICES:
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


def xml(body: bytes) -> ET.Element:
    """An AWS XML answer (S3, STS), namespaces dropped: ``find("Key")`` instead of ``find("{ns}Key")``.
    Raises ``ET.ParseError`` on a body that is not XML."""
    root = ET.fromstring(body)
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith("{"):
            element.tag = element.tag.split("}", 1)[1]
    return root


def open_url(url: str) -> Any:
    """``url`` as aiohttp should send it: exactly as encoded (the signature covers it)."""
    return yarl.URL(url, encoded=True)
