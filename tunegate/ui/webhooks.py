"""The dashboard's webhooks page (``/ui/webhooks``): the viewer's endpoints and each one's delivery
log (state, attempts, last status, latency), read from the database — no call to any receiver."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tunegate.api.common import services
from tunegate.ui.data import Viewer
from tunegate.ui.pages import _render, page
from tunegate.webhooks.registry import Endpoints


@page
async def ui_webhooks(request: Request, who: Viewer) -> Response:
    endpoints = Endpoints(services(request).store)
    found = await endpoints.of_key(who.key.id if who.key else None)
    rows = [(e, await endpoints.deliveries(e.id, limit=20)) for e in found]
    return _render(request, "webhooks.html", {"viewer": who, "endpoints": rows, "open": who.key is None})
