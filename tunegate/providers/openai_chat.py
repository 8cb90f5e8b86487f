"""OpenAI's chat-completions wire, for every backend that speaks it: OpenAI and Azure OpenAI, Together,
Fireworks and Mistral (OpenAI-compatible inference APIs), and the ``local`` model servers (our CPU
server and vLLM both serve OpenAI's routes).

A provider mixes :class:`OpenAIChat` in and fills the hooks: where chat goes (``chat_url``), with which
headers and query, and how its request and answers differ from OpenAI's (``to_chat_body``,
``to_completion``, ``to_chunk``). Streams are read event by event and handed on as they arrive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp

from tunegate.errors import UpstreamError
from tunegate.providers.base import JSON, Provider
from tunegate.serving import sse

if TYPE_CHECKING:
    from tunegate.context import RequestContext


class OpenAIChat(Provider):
    # ---- hooks -------------------------------------------------------------------------------

    def chat_url(self, ctx: RequestContext, body: JSON) -> str:
        return self.base_url(ctx) + "/chat/completions"

    def chat_headers(self, ctx: RequestContext) -> dict[str, str]:
        return self.auth_headers(ctx)

    def chat_params(self, ctx: RequestContext) -> list[tuple[str, str]]:
        return []

    def to_chat_body(self, ctx: RequestContext, body: JSON) -> JSON:
        """The request as this backend wants it (refuse what it lacks with serving.request.unsupported_param)."""
        return body

    def to_completion(self, ctx: RequestContext, raw: JSON, body: JSON) -> JSON:
        return raw

    def to_chunk(self, ctx: RequestContext, raw: JSON, body: JSON) -> JSON:
        return raw

    # ---- chat ----------------------------------------------------------------------------------

    async def chat(self, ctx: RequestContext, body: JSON) -> JSON:
        # A chat completion changes nothing upstream, so it may be retried under the policy like a GET.
        response = await ctx.upstream.request("POST", self.chat_url(ctx, body), ctx.policy,
                                              headers=self.chat_headers(ctx), params=self.chat_params(ctx),
                                              json=self.to_chat_body(ctx, body), idempotent=True)
        ctx.upstream_status = response.status
        return self.to_completion(ctx, self.check(ctx, response), body)

    async def chat_stream(self, ctx: RequestContext, body: JSON) -> AsyncIterator[JSON]:
        resp = await self.open_stream(ctx, "POST", self.chat_url(ctx, body), headers=self.chat_headers(ctx),
                                      params=self.chat_params(ctx), json=self.to_chat_body(ctx, body))
        return self._chunks(ctx, resp, body)

    async def _chunks(self, ctx: RequestContext, resp: aiohttp.ClientResponse, body: JSON) -> AsyncIterator[JSON]:
        async for event in sse.events(self.body_chunks(resp)):
            if event.data.strip() == "[DONE]":
                return
            raw = event.json()
            if not isinstance(raw, dict):
                continue
            if "error" in raw:  # an error the provider sent inside the stream
                raise stream_error(ctx, raw["error"])
            yield self.to_chunk(ctx, raw, body)

    # ---- models ----------------------------------------------------------------------------------

    def models_url(self, ctx: RequestContext) -> str:
        return self.base_url(ctx) + "/models"

    def to_model(self, ctx: RequestContext, raw: JSON) -> JSON:
        return raw

    async def _models_call(self, ctx: RequestContext, method: str, url: str) -> Any:
        response = await ctx.upstream.request(method, url, ctx.policy, headers=self.chat_headers(ctx),
                                              params=self.chat_params(ctx), idempotent=True)
        ctx.upstream_status = response.status
        return self.check(ctx, response)

    async def list_models(self, ctx: RequestContext) -> JSON:
        raw = await self._models_call(ctx, "GET", self.models_url(ctx))
        items = raw.get("data", []) if isinstance(raw, dict) else raw if isinstance(raw, list) else []
        return {"object": "list", "data": [self.to_model(ctx, m) for m in items if isinstance(m, dict)]}

    async def retrieve_model(self, ctx: RequestContext, model: str) -> JSON:
        return self.to_model(ctx, await self._models_call(ctx, "GET", f"{self.models_url(ctx)}/{model_segment(model)}"))

    async def delete_model(self, ctx: RequestContext, model: str) -> JSON:
        return await self._models_call(ctx, "DELETE", f"{self.models_url(ctx)}/{model_segment(model)}")  # type: ignore[no-any-return]


def model_segment(model: str) -> str:
    """A model name in a path. The name passed MODEL_NAME (letters, digits, ``:._/@+-``, no ``..``
    segment), so it cannot reach the query or climb; ``/`` stays as is (``org/model`` names)."""
    return model


def stream_error(ctx: RequestContext, raw: Any) -> UpstreamError:
    message = raw.get("message") if isinstance(raw, dict) else raw
    code = raw.get("code") if isinstance(raw, dict) else None
    return UpstreamError(ctx.redact(str(message or "The provider reported an error in the stream."))[:2000],
                         status=502, code=ctx.redact(str(code or "upstream_stream_error"))[:64])
