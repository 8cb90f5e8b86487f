"""Azure OpenAI chat completions and models (see MAPPING.md, "Chat and models").

Chat goes to a *deployment*, never to a model name:
- GA / dated surface: ``POST {endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…``
  (Azure/azure-rest-api-specs ``specification/cognitiveservices/data-plane/AzureOpenAI/inference/stable/
  2024-10-21/inference.json``, operation ``ChatCompletions_Create``; the same routing openai-python's
  ``lib/azure.py`` does: ``/deployments/{model}/chat/completions`` for the ``_deployments_endpoints``).
- v1 surface: ``POST {endpoint}/openai/v1/chat/completions`` with ``model`` = the deployment name.
The deployment is ``x-portkey-azure-deployment-id`` or the connection option ``azure_deployment_id``.

Models: the data plane's ``GET /openai/models`` and ``GET /openai/models/{model-id}``
(azure-openai-authoring-2024-10-21.json ``Models_List`` / ``Models_Get``; v1:
azure-openai-v1-generated.yaml ``/models``, ``/models/{model}``). The data plane lists no deployments,
deletes no models and creates no deployments: those are ARM operations (``management.azure.com``), see
:meth:`AzureChat.deploy_model`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from tunegate.errors import InvalidRequest
from tunegate.providers.base import JSON
from tunegate.providers.openai_chat import OpenAIChat
from tunegate.serving import shapes

if TYPE_CHECKING:
    from tunegate.context import RequestContext

# Azure deployment names: letters, digits, '-', '_' and '.', 2–64 characters (the portal's rule); they
# become one path segment.
DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
HEADER = "x-portkey-azure-deployment-id"


class AzureChat(OpenAIChat):
    def is_v1(self, ctx: RequestContext) -> bool:  # overridden by the provider class
        raise NotImplementedError

    def deployment(self, ctx: RequestContext) -> str | None:
        name = ctx.option("azure_deployment_id")
        if name is None:
            return None
        if not DEPLOYMENT_NAME.fullmatch(str(name)):
            raise InvalidRequest(f"{HEADER} is not an Azure deployment name (letters, digits, '.', '_', '-').",
                                 param=HEADER, code="invalid_provider_option")
        return str(name)

    def chat_url(self, ctx: RequestContext, body: JSON) -> str:
        if self.is_v1(ctx):
            return self.base_url(ctx) + "/chat/completions"
        deployment = self.deployment(ctx)
        if deployment is None:
            raise InvalidRequest(
                f"Azure OpenAI serves chat from a deployment, not a model name: send {HEADER} (or use a connection "
                "with the option 'azure_deployment_id'). A fine-tuned model must be deployed first (Azure portal, "
                "or ARM Microsoft.CognitiveServices/accounts/deployments).", param=HEADER,
                code="missing_provider_option")
        return f"{self.base_url(ctx)}/deployments/{self.segment(deployment)}/chat/completions"

    def to_chat_body(self, ctx: RequestContext, body: JSON) -> JSON:
        # On v1 the deployment travels as `model`; without one the client's model is taken as the
        # deployment's name (which is how the v1 surface reads it).
        if self.is_v1(ctx) and (deployment := self.deployment(ctx)) is not None:
            return {**body, "model": deployment}
        return body

    async def chat_stream(self, ctx: RequestContext, body: JSON) -> AsyncIterator[JSON]:
        return _without_filter_preamble(await super().chat_stream(ctx, body))

    # ---- models ----------------------------------------------------------------------------------

    def to_model(self, ctx: RequestContext, raw: JSON) -> JSON:
        if self.is_v1(ctx) or raw.get("object") != "model" or "created" in raw:
            return raw
        # GA's Model: created_at, status (FineTuningState), model (the base of a tuned one), fine_tune
        # (its job), capabilities, lifecycle_status, deprecation. OpenAI's: id, object, created, owned_by.
        extra = {k: v for k, v in raw.items() if k not in ("id", "object", "created_at")}
        owner = "organization-owner" if raw.get("fine_tune") else "azure-openai"
        return shapes.model_object(str(raw.get("id")), owner, raw.get("created_at"), **extra)

    async def delete_model(self, ctx: RequestContext, model: str) -> JSON:
        raise self.unsupported(
            "deleting models: the Azure OpenAI data plane has no model delete (its 2024-10-21 and v1 specs define "
            "GET /models only); a deployment is removed in ARM")

    async def deploy_model(self, ctx: RequestContext, model: str, body: JSON) -> JSON:
        raise self.unsupported(
            "deploying models: an Azure deployment is an ARM resource (PUT https://management.azure.com/subscriptions/"
            "{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/accounts/{account}/deployments/{name}), "
            "authorised by an Entra ID token for management.azure.com, not by the resource's api-key; deploy in the "
            "Azure portal or with `az cognitiveservices account deployment create`, then send "
            f"{HEADER}")


async def _without_filter_preamble(chunks: AsyncIterator[JSON]) -> AsyncIterator[JSON]:
    """Azure opens a stream with a chunk that carries only ``prompt_filter_results`` (``id`` and
    ``model`` empty, ``object`` "", no choices): not a chunk OpenAI sends, so it is not passed on. The
    filter results on the real chunks (``content_filter_results``) stay, as extra fields."""
    try:
        async for chunk in chunks:
            if not chunk.get("choices") and not isinstance(chunk.get("usage"), dict) and not chunk.get("object"):
                continue
            yield chunk
    finally:
        closer: Any = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()
