"""The OpenAI error shape and the exceptions that map to it.

Every error tunegate answers is ``{"error": {"message", "type", "param", "code"}}`` with a
meaningful HTTP status. Code anywhere in the gateway raises :class:`APIError` (or a subclass);
the application's exception handler turns it into that body. Messages must never contain
secrets: they are built from the request's *shape*, not its credentials.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class APIError(Exception):
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, extra_headers: dict[str, str] | None = None) -> Response:
        headers = {**self.headers, **(extra_headers or {})}
        return Response(orjson.dumps(self.body()), status_code=self.status, headers=headers,
                        media_type="application/json")


class InvalidRequest(APIError):
    status = 400


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(APIError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(APIError):
    status = 404
    code = "not_found"


class MethodNotAllowed(APIError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(APIError):
    status = 413
    code = "payload_too_large"


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class NotSupported(APIError):
    """The provider has no such operation: a client error, not a gateway fault."""

    status = 400
    code = "unsupported_operation"


class UpstreamUnreachable(APIError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamTimeout(APIError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class UpstreamError(APIError):
    """The provider answered with an error; its status and message travel on."""

    type = "upstream_error"


def missing_param(name: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
