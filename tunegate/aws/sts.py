"""AWS STS ``AssumeRole``: temporary credentials for a role, from base keys (query protocol, XML answer).

Shapes from botocore's ``sts`` 2011-06-15 model: a form-encoded POST of ``Action=AssumeRole``,
``Version``, ``RoleArn``, ``RoleSessionName``, ``DurationSeconds`` and optionally ``ExternalId``; the answer's
``AssumeRoleResult/Credentials`` holds ``AccessKeyId``, ``SecretAccessKey``, ``SessionToken`` and
``Expiration`` (ISO 8601); an error is ``ErrorResponse/Error/{Code, Message}``.
Like ``S3Client``, this module does not send anything itself: the caller passes ``send``.
"""

from __future__ import annotations

import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from tunegate import aws
from tunegate.upstream import UpstreamResponse

API_VERSION = "2011-06-15"
SESSION_SECONDS = 3600
# IAM role ARNs as STS's RoleArn accepts them (the partition may be aws, aws-cn, aws-us-gov, ...).
ROLE_ARN = re.compile(r"arn:aws(-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}")

# (method, url, headers, body) -> the answer; the caller signs and sends.
Send = Callable[[str, str, dict[str, str], bytes], Awaitable[UpstreamResponse]]


@dataclass(frozen=True)
class Assumed:
    credentials: aws.AwsAuth
    expires_at: float  # unix seconds


class AssumeRoleError(Exception):
    def __init__(self, status: int, code: str | None, message: str | None) -> None:
        super().__init__(message or code or f"HTTP {status}")
        self.status, self.code, self.message = status, code, message


def endpoint(region: str) -> str:
    """The regional STS endpoint, or ``AWS_ENDPOINT_URL_STS`` / ``AWS_ENDPOINT_URL``."""
    return (aws.endpoint_from_env("sts") or f"https://sts.{region}.amazonaws.com") + "/"


async def assume_role(send: Send, region: str, role_arn: str, external_id: str | None) -> Assumed:
    params = [("Action", "AssumeRole"), ("Version", API_VERSION), ("RoleArn", role_arn),
              ("RoleSessionName", "tunegate-" + secrets.token_hex(6)), ("DurationSeconds", str(SESSION_SECONDS))]
    if external_id:
        params.append(("ExternalId", external_id))
    response = await send("POST", endpoint(region), {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
                          aws.query_string(params).encode())
    try:
        root = aws.xml(response.body)
    except ET.ParseError:
        raise AssumeRoleError(response.status, None, None) from None
    if not response.ok:
        raise AssumeRoleError(response.status, root.findtext("Error/Code"), root.findtext("Error/Message"))
    found = root.find("AssumeRoleResult/Credentials")
    values = {name: (found.findtext(name) if found is not None else None)
              for name in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")}
    if not all(values.values()):
        raise AssumeRoleError(502, "InvalidResponse", "STS answered AssumeRole without credentials.")
    expires = datetime.fromisoformat(str(values["Expiration"]).replace("Z", "+00:00")).timestamp()
    return Assumed(aws.AwsAuth(values["AccessKeyId"], values["SecretAccessKey"], values["SessionToken"]), expires)
