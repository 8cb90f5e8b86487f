"""Service endpoints: liveness, readiness, and the API description."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tunegate.api.common import respond, services
from tunegate.openapi import document


async def healthz(request: Request) -> Response:
    return respond({"status": "ok"})


async def readyz(request: Request) -> Response:
    if await services(request).store.ping():
        return respond({"status": "ready", "database": "ok"})
    return respond({"status": "unavailable", "database": "unreachable"}, status=503)


_DOCUMENT = None


async def openapi(request: Request) -> Response:
    global _DOCUMENT
    if _DOCUMENT is None:
        _DOCUMENT = respond(document()).body  # built once: it never changes while running
    return Response(_DOCUMENT, media_type="application/json")
