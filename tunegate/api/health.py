"""Liveness and readiness."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tunegate.api.common import respond, services


async def healthz(request: Request) -> Response:
    return respond({"status": "ok"})


async def readyz(request: Request) -> Response:
    if await services(request).store.ping():
        return respond({"status": "ready", "database": "ok"})
    return respond({"status": "unavailable", "database": "unreachable"}, status=503)
