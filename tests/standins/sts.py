"""A stand-in for AWS STS ``AssumeRole`` (query protocol), as botocore's ``sts`` 2011-06-15 model describes it.

Request: a form-encoded POST with ``Action=AssumeRole``, ``Version=2011-06-15``, ``RoleArn`` (20-2048
characters), ``RoleSessionName`` (2-64 of ``[\\w+=,.@-]``), ``DurationSeconds`` (900-43200) and optionally
``ExternalId`` (2-1224 of ``[\\w+=,.@:/-]``), SigV4-signed for service ``sts`` (verified with botocore).
Answer: ``AssumeRoleResponse`` in the ``https://sts.amazonaws.com/doc/2011-06-15/`` namespace with
``AssumeRoleResult/Credentials/{AccessKeyId, SecretAccessKey, SessionToken, Expiration}`` and
``AssumedRoleUser``; errors are ``ErrorResponse/Error/{Type, Code, Message}`` (403 ``AccessDenied``,
400 ``ValidationError``), as AWS's STS API reference documents them.

Roles are declared with ``allow(role_arn, external_id)``. Issued credentials are added to the shared
``keys`` dict, so the Bedrock stand-in accepts requests signed with them (and their session token).
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

from aiohttp import web

from tests.standins.bedrock import ACCESS_KEY, SECRET, check_signature

NS = "https://sts.amazonaws.com/doc/2011-06-15/"
SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}")
EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}")


@dataclass
class StsStandIn:
    keys: dict[str, tuple[str, str | None]] = field(default_factory=lambda: {ACCESS_KEY: (SECRET, None)})
    roles: dict[str, str | None] = field(default_factory=dict)  # role ARN -> the external id it requires
    calls: list[dict[str, str]] = field(default_factory=list)  # the AssumeRole parameters received
    issued: list[str] = field(default_factory=list)  # access key ids handed out

    def allow(self, role_arn: str, external_id: str | None = None) -> None:
        self.roles[role_arn] = external_id

    @staticmethod
    def error(status: int, code: str, message: str) -> web.Response:
        body = (f'<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
                f"<Message>{message}</Message></Error><RequestId>{secrets.token_hex(8)}</RequestId></ErrorResponse>")
        return web.Response(status=status, body=body.encode(), content_type="text/xml")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = check_signature(request, body, self.keys, "sts")
        if problem is not None:
            return self.error(403, "InvalidClientTokenId" if problem == "UnrecognizedClientException"
                              else "SignatureDoesNotMatch", "The security token included in the request is invalid.")
        params = dict(parse_qsl(body.decode()))
        self.calls.append(params)
        if params.get("Action") != "AssumeRole" or params.get("Version") != "2011-06-15":
            return self.error(400, "InvalidAction", "Could not find operation.")
        role, name = params.get("RoleArn", ""), params.get("RoleSessionName", "")
        duration = int(params.get("DurationSeconds", "3600"))
        external = params.get("ExternalId")
        if not 20 <= len(role) <= 2048 or not SESSION_NAME.fullmatch(name) or not 900 <= duration <= 43200 \
                or (external is not None and not EXTERNAL_ID.fullmatch(external)):
            return self.error(400, "ValidationError", "1 validation error detected.")
        if role not in self.roles or self.roles[role] != external:
            return self.error(403, "AccessDenied", f"User: arn:aws:iam::123456789012:user/tunegate is not authorized "
                                                   f"to perform: sts:AssumeRole on resource: {role}")
        access = "ASIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
        secret, token = secrets.token_urlsafe(30), "FwoGZXIvYXdzE" + secrets.token_urlsafe(60)
        self.keys[access] = (secret, token)
        self.issued.append(access)
        expires = (datetime.now(UTC) + timedelta(seconds=duration)).strftime("%Y-%m-%dT%H:%M:%SZ")
        account = role.split(":")[4]
        body_xml = (f'<AssumeRoleResponse xmlns="{NS}"><AssumeRoleResult>'
                    f"<SourceIdentity></SourceIdentity><AssumedRoleUser>"
                    f"<AssumedRoleId>AROA{secrets.token_hex(8).upper()}:{name}</AssumedRoleId>"
                    f"<Arn>arn:aws:sts::{account}:assumed-role/{role.rsplit('/', 1)[-1]}/{name}</Arn>"
                    f"</AssumedRoleUser><Credentials><AccessKeyId>{access}</AccessKeyId>"
                    f"<SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{token}</SessionToken>"
                    f"<Expiration>{expires}</Expiration></Credentials><PackedPolicySize>6</PackedPolicySize>"
                    f"</AssumeRoleResult><ResponseMetadata><RequestId>{secrets.token_hex(8)}</RequestId>"
                    f"</ResponseMetadata></AssumeRoleResponse>")
        return web.Response(body=body_xml.encode(), content_type="text/xml")
