"""``/v1/webhooks``: webhook endpoints per gateway key (tunegate's own routes), and their delivery log.

Objects follow OpenAI's webhook endpoint API in the ``openai`` SDK (3.57.0,
``openai/types/webhooks/webhook_endpoint*.py``, ``deleted_webhook_endpoint.py``,
``webhook_endpoint_test_result.py``); the same handlers also answer under OpenAI's path,
``/v1/webhook_endpoints``, so ``client.webhooks.create/list/retrieve/delete/test`` work against the
gateway. The signing secret is in the create answer only.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tunegate.api.common import json_body, respond, services
from tunegate.errors import InvalidRequest, NotFound, missing_param
from tunegate.hosts import check_custom_host
from tunegate.store import ApiKey
from tunegate.webhooks import allowed_hosts
from tunegate.webhooks.outbox import DEFAULT_EVENT_TYPES, EVENT_TYPES, payload
from tunegate.webhooks.registry import Endpoint, Endpoints

MAX_URL = 2048


async def _caller(request: Request) -> ApiKey | None:
    return await services(request).resolver.caller(request.headers)


def _endpoints(request: Request) -> Endpoints:
    return Endpoints(services(request).store)


async def _found(request: Request, key: ApiKey | None) -> Endpoint:
    endpoint_id = request.path_params["endpoint_id"]
    found = await _endpoints(request).get(key.id if key else None, endpoint_id) if len(endpoint_id) <= 64 else None
    if found is None:
        raise NotFound(f"No such webhook endpoint: '{endpoint_id[:64]}'.", param="endpoint_id")
    return found


def _event_types(body: dict[str, Any]) -> list[str]:
    types = body.get("event_types", DEFAULT_EVENT_TYPES)
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise InvalidRequest("'event_types' must be a non-empty list of event types.", param="event_types",
                             code="invalid_event_types")
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise InvalidRequest(f"Unknown event type '{unknown[0]}'; known: {', '.join(EVENT_TYPES)}.",
                             param="event_types", code="invalid_event_types")
    return list(dict.fromkeys(types))


async def create_webhook(request: Request) -> Response:
    key = await _caller(request)
    body = await json_body(request)
    url = body.get("url")
    if not url:
        raise missing_param("url")
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise InvalidRequest(f"'url' must be a string of at most {MAX_URL} characters.", param="url",
                             code="invalid_url")
    name = body.get("name") or url.split("//", 1)[-1].split("/", 1)[0]
    if not isinstance(name, str) or len(name) > 200:
        raise InvalidRequest("'name' must be a string of at most 200 characters.", param="name", code="invalid_name")
    event_types = _event_types(body)
    svc = services(request)
    # The custom-host rule, worded for this field; the connect-time guard holds every attempt to it too.
    url = await check_custom_host(url, allowed_hosts(svc.settings), param="url", what="The webhook url")
    store = _endpoints(request)
    owner = key.id if key else None
    if await store.count(owner) >= svc.settings.webhooks.max_endpoints_per_key:
        raise InvalidRequest(f"A key may register at most {svc.settings.webhooks.max_endpoints_per_key} webhook "
                             "endpoints.", param="url", code="too_many_webhook_endpoints")
    endpoint, secret = await store.create(owner, name, url, event_types)
    return respond({**endpoint.public(), "signing_secret": secret})


async def list_webhooks(request: Request) -> Response:
    key = await _caller(request)
    found = await _endpoints(request).of_key(key.id if key else None)
    data = [e.public() for e in found]
    return respond({"object": "list", "data": data, "has_more": False,
                    "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


async def retrieve_webhook(request: Request) -> Response:
    return respond((await _found(request, await _caller(request))).public())


async def delete_webhook(request: Request) -> Response:
    key = await _caller(request)
    endpoint = await _found(request, key)
    await _endpoints(request).delete(key.id if key else None, endpoint.id)
    return respond({"id": endpoint.id, "object": "webhook_endpoint.deleted", "deleted": True})


async def list_deliveries(request: Request) -> Response:
    endpoint = await _found(request, await _caller(request))
    rows = await _endpoints(request).deliveries(endpoint.id)
    return respond({"object": "list", "data": rows, "has_more": False})


async def test_webhook(request: Request) -> Response:
    """Send one signed sample event now (not through the outbox; not retried) and say what came back."""
    key = await _caller(request)
    endpoint = await _found(request, key)
    body = await json_body(request, optional=True)
    event_type = body.get("event_type", endpoint.event_types[0])
    if event_type not in EVENT_TYPES:
        raise InvalidRequest(f"Unknown event type '{str(event_type)[:64]}'.", param="event_type",
                             code="invalid_event_types")
    import secrets

    event_id = "evt_test_" + secrets.token_hex(12)
    sample = payload(event_id, event_type, int(time.time()), {"id": "ftjob-test"})
    status, error = await request.app.state.webhooks.deliverer.send_once(
        endpoint.id, "wh_test_" + secrets.token_hex(12), sample)
    # A success only when the receiver answered 2xx (the sender's rule for a delivery); otherwise the
    # sender's short reason (a code or "HTTP 500", never the secret or the receiver's answer) says why.
    return respond({"object": "webhook_endpoint.test", "webhook_endpoint_id": endpoint.id, "event_type": event_type,
                    "status_code": status, "success": error is None, "error": error})


def routes() -> list[Route]:
    out = []
    for base in ("/v1/webhooks", "/v1/webhook_endpoints"):
        suffix = "" if base == "/v1/webhooks" else "_openai"
        out += [
            Route(base, create_webhook, methods=["POST"], name="create_webhook" + suffix),
            Route(base, list_webhooks, methods=["GET"], name="list_webhooks" + suffix),
            Route(base + "/{endpoint_id}", retrieve_webhook, methods=["GET"], name="retrieve_webhook" + suffix),
            Route(base + "/{endpoint_id}", delete_webhook, methods=["DELETE"], name="delete_webhook" + suffix),
            Route(base + "/{endpoint_id}/test", test_webhook, methods=["POST"], name="test_webhook" + suffix),
            Route(base + "/{endpoint_id}/deliveries", list_deliveries, methods=["GET"],
                  name="list_webhook_deliveries" + suffix),
        ]
    return out


ROUTES = routes()


def openapi_paths(op: Any, json: Any, path_id: Any) -> dict[str, Any]:
    """The routes above for ``/openapi.json`` (``op``, ``json``, ``path_id``: tunegate.openapi's helpers)."""
    endpoint = {"type": "object", "required": ["id", "object", "name", "url", "event_types", "created_at"],
                "properties": {"id": {"type": "string"}, "object": {"const": "webhook_endpoint"},
                               "name": {"type": "string"}, "url": {"type": "string"},
                               "event_types": {"type": "array", "items": {"enum": list(EVENT_TYPES)}},
                               "signing_secret_hint": {"type": "string"}, "signing_secret": {"type": "string"},
                               "created_at": {"type": "integer"}, "updated_at": {"type": "integer"}}}
    create = json({"type": "object", "required": ["url"], "properties": {
        "url": {"type": "string", "maxLength": MAX_URL}, "name": {"type": "string", "maxLength": 200},
        "event_types": {"type": "array", "items": {"enum": list(EVENT_TYPES)}}}})
    ident = [path_id("endpoint_id")]
    listing = {"type": "object", "properties": {"object": {"const": "list"}, "data": {"type": "array"},
                                                "has_more": {"type": "boolean"}}}
    paths: dict[str, Any] = {}
    for base, suffix in (("/v1/webhooks", ""), ("/v1/webhook_endpoints", "OpenAIPath")):
        paths[base] = {"post": op("createWebhookEndpoint" + suffix, json(endpoint), body=create),
                       "get": op("listWebhookEndpoints" + suffix, json(listing))}
        paths[base + "/{endpoint_id}"] = {
            "get": op("retrieveWebhookEndpoint" + suffix, json(endpoint), params=ident),
            "delete": op("deleteWebhookEndpoint" + suffix, json({"type": "object", "properties": {
                "id": {"type": "string"}, "object": {"const": "webhook_endpoint.deleted"},
                "deleted": {"type": "boolean"}}}), params=ident)}
        paths[base + "/{endpoint_id}/test"] = {"post": op("testWebhookEndpoint" + suffix, json({"type": "object"}),
                                                          params=ident)}
        paths[base + "/{endpoint_id}/deliveries"] = {"get": op("listWebhookDeliveries" + suffix, json(listing),
                                                               params=ident)}
    return paths
