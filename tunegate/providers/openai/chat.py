"""OpenAI's chat completions and models: passed through as OpenAI defines them
(openai/openai-python ``resources/chat/completions``, ``resources/models.py``; shapes in
``../shared/specs/openai-openapi.yaml``: CreateChatCompletionRequest/Response, ListModelsResponse,
Model, DeleteModelResponse). The inherited :class:`~tunegate.providers.openai_chat.OpenAIChat` does the
calls; what is added here is what OpenAI itself would only refuse after a round trip."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunegate.errors import InvalidRequest
from tunegate.providers.base import JSON
from tunegate.providers.openai_chat import OpenAIChat

if TYPE_CHECKING:
    from tunegate.context import RequestContext


class OpenAIModels(OpenAIChat):
    async def delete_model(self, ctx: RequestContext, model: str) -> JSON:
        # `DELETE /v1/models/{model}`: "Delete a fine-tuned model" (the spec's deleteModel). A base model
        # is OpenAI's; refusing here keeps the call from ever reaching OpenAI with someone else's model.
        if not model.startswith("ft:"):
            raise InvalidRequest(f"Only fine-tuned models ('ft:…') can be deleted on OpenAI; '{model}' is not one.",
                                 param="model", code="model_not_deletable")
        return await super().delete_model(ctx, model)
