"""/v1/models: the models a provider serves, tuned ones included; retrieve, delete, and deploy where a
provider needs a deployment step before a tuned model answers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tunegate.api.common import context, context_and_input, json_body, respond
from tunegate.providers.base import JSON


def _model(request: Request) -> str:
    return str(request.path_params["model"])


async def list_models(request: Request) -> Response:
    ctx = await context(request)
    listing = await ctx.provider.list_models(ctx)
    items = [m for m in listing.get("data", []) if isinstance(m, dict) and isinstance(m.get("id"), str)]
    if ctx.store is not None and items:
        # Another key's tuned models are not listed (a base model has no owner in the registry).
        owners = await ctx.store.owners("model", [m["id"] for m in items])
        items = [m for m in items if owners.get(m["id"]) in (None, ctx.key_id)]
    return respond({**listing, "data": items})


async def retrieve_model(request: Request) -> Response:
    ctx = await context(request, ("model", _model(request)))
    return respond(await ctx.provider.retrieve_model(ctx, _model(request)))


async def delete_model(request: Request) -> Response:
    ctx = await context(request, ("model", _model(request)))
    answer: JSON = await ctx.provider.delete_model(ctx, _model(request))
    if ctx.store is not None and answer.get("deleted"):
        await ctx.store.forget("model", _model(request))
    return respond(answer)


async def deploy_model(request: Request) -> Response:
    async def read_body() -> JSON:
        return await json_body(request, optional=True)

    ctx, body = await context_and_input(request, ("model", _model(request)), read_body)
    return respond(await ctx.provider.deploy_model(ctx, _model(request), body))
