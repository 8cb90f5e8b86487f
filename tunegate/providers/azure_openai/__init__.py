"""Azure OpenAI: the authoring data plane (``{endpoint}/openai/...?api-version=2024-10-21`` and later dated
versions) and the OpenAI-compatible ``{endpoint}/openai/v1`` surface. What each api-version allows is in
``versions.py``; how fields map, and what each operation was checked against, in MAPPING.md."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from tunegate.providers.azure_openai import entra, shapes
from tunegate.providers.azure_openai.chat import AzureChat
from tunegate.providers.azure_openai.versions import GA_API_VERSION, V1_VERSIONS, Surface, surface
from tunegate.providers.base import JSON, Download, IncomingFile, Page
from tunegate.providers.openai_compatible import OpenAICompatible
from tunegate.providers.rules import DatasetRules

if TYPE_CHECKING:
    from tunegate.context import RequestContext

__all__ = ["GA_API_VERSION", "V1_VERSIONS", "AzureOpenAI"]

class AzureOpenAI(AzureChat, OpenAICompatible):
    name = "azure-openai"
    # Azure's fine-tuning how-to (MicrosoftDocs/azure-ai-docs): "Fine-tuning jobs will not proceed without at
    # least 10 training examples"; training and validation files "must be less than 512 MB". The epoch
    # range is not in the 2024-10-21 spec (FineTuningHyperParameters.n_epochs has no bounds): not checked.
    dataset_rules = DatasetRules(min_training_examples=10, max_file_bytes=512 * 1024**2)
    # The longest any surface takes (v1: 64); the authoring surfaces' 40 is checked in to_create_body.
    suffix_max_length = 64
    # Azure ids are lower-case hex (`ftjob-0f41…`): an upper-case spelling is refused, not looked up.
    id_grammar = r"[a-z0-9][a-z0-9_-]{0,127}"
    # Both pick the host the resource key goes to: a request may not set them over a stored connection.
    host_options = ("azure_endpoint", "azure_resource_name")
    url_options = ("azure_endpoint",)  # a URL a client chose: held to the custom-host rule
    # Azure resource names: letters, digits and hyphens (they become `{name}.openai.azure.com`).
    option_patterns = {"azure_resource_name": r"[A-Za-z0-9][A-Za-z0-9-]{0,62}",
                       "azure_api_version": r"[A-Za-z0-9][A-Za-z0-9.-]{0,31}"}

    # ---- surface, URL, auth --------------------------------------------------------------------

    def api_version(self, ctx: RequestContext) -> str:
        return str(ctx.option("azure_api_version", GA_API_VERSION))

    def surface(self, ctx: RequestContext) -> Surface:
        return surface(self.api_version(ctx))

    def is_v1(self, ctx: RequestContext) -> bool:
        return self.surface(ctx).v1

    def base_url(self, ctx: RequestContext) -> str:
        if ctx.base_url_override:
            return ctx.base_url_override.rstrip("/")
        endpoint = ctx.option("azure_endpoint")
        if not endpoint:
            resource = ctx.require_option("azure_resource_name")
            endpoint = f"https://{resource}.openai.azure.com"
        return endpoint.rstrip("/") + ("/openai/v1" if self.is_v1(ctx) else "/openai")

    def query(self, ctx: RequestContext) -> list[tuple[str, str]]:
        version = self.api_version(ctx)
        return [] if version == "v1" else [("api-version", version)]

    def headers(self, ctx: RequestContext) -> dict[str, str]:
        # An Entra token (minted by `authorized`, or the client's own x-portkey-azure-ad-token) replaces the key.
        if token := ctx.credentials.get(entra.TOKEN_FIELD) or ctx.option("azure_ad_token"):
            return {"Authorization": f"Bearer {token}"}
        key = ctx.credentials.get(self.credential_field)
        return {"api-key": key} if key else {}

    async def authorize(self, ctx: RequestContext) -> None:
        """Make sure an Entra token is at hand (minted or cached) before anything goes to Azure, so the
        synchronous ``headers()`` can send it. Every path to Azure below starts here."""
        if entra.TOKEN_FIELD not in ctx.credentials and (token := await entra.access_token(ctx)):
            ctx.credentials[entra.TOKEN_FIELD] = token

    async def call(self, ctx: RequestContext, method: str, path: str, **kwargs: Any) -> Any:
        await self.authorize(ctx)
        return await super().call(ctx, method, path, **kwargs)

    async def upload_file(self, ctx: RequestContext, upload: IncomingFile) -> JSON:
        await self.authorize(ctx)
        return await super().upload_file(ctx, upload)

    async def add_upload_part(self, ctx: RequestContext, upload_id: str, part: IncomingFile) -> JSON:
        await self.authorize(ctx)
        return await super().add_upload_part(ctx, upload_id, part)

    async def file_content(self, ctx: RequestContext, file_id: str) -> Download:
        await self.authorize(ctx)
        return await super().file_content(ctx, file_id)

    async def chat(self, ctx: RequestContext, body: JSON) -> JSON:
        await self.authorize(ctx)
        return await super().chat(ctx, body)

    async def chat_stream(self, ctx: RequestContext, body: JSON) -> AsyncIterator[JSON]:
        await self.authorize(ctx)
        return await super().chat_stream(ctx, body)

    async def _models_call(self, ctx: RequestContext, method: str, url: str) -> Any:
        await self.authorize(ctx)
        return await super()._models_call(ctx, method, url)

    # ---- shapes --------------------------------------------------------------------------------

    def to_create_body(self, ctx: RequestContext, body: JSON) -> JSON:
        return shapes.create_body(self.surface(ctx), body, ctx.option("azure_training_type"))

    def to_job(self, ctx: RequestContext, raw: JSON) -> JSON:
        return shapes.job(raw)

    def to_file(self, ctx: RequestContext, raw: JSON) -> JSON:
        return shapes.file(raw)

    # ---- operations that differ by api-version -------------------------------------------------

    async def list_files(self, ctx: RequestContext, page: Page) -> JSON:
        if self.surface(ctx).file_paging:
            return await super().list_files(ctx, page)
        # Files_List takes only `purpose` before 2025-04-01-preview and answers the whole list without
        # has_more: the gateway pages it with OpenAI's cursor.
        params = [("purpose", str(page.extra["purpose"]))] if page.extra.get("purpose") else []
        raw = await self.call(ctx, "GET", "/files", params=params)
        return shapes.page_files([self.to_file(ctx, f) for f in raw.get("data", [])], page)

    async def pause_job(self, ctx: RequestContext, job_id: str) -> JSON:
        self._require(ctx, self.surface(ctx).pause_resume, "pausing fine-tuning jobs")
        return await super().pause_job(ctx, job_id)

    async def resume_job(self, ctx: RequestContext, job_id: str) -> JSON:
        self._require(ctx, self.surface(ctx).pause_resume, "resuming fine-tuning jobs")
        return await super().resume_job(ctx, job_id)

    async def delete_job(self, ctx: RequestContext, job_id: str) -> JSON:
        self._require(ctx, self.surface(ctx).job_delete, "deleting fine-tuning jobs")
        await self.authorize(ctx)
        response = await ctx.upstream.request("DELETE", self.url(ctx, f"/fine_tuning/jobs/{self.segment(job_id)}"),
                                              ctx.policy, headers=self.headers(ctx), params=self.query(ctx),
                                              idempotent=True)
        ctx.upstream_status = response.status
        if 200 <= response.status < 300 and not response.body.strip():  # FineTuning_Delete answers 204 with no body
            return {"id": job_id, "object": "fine_tuning.job", "deleted": True}
        raw = self.check(ctx, response)
        return {"id": job_id, "object": "fine_tuning.job", "deleted": True, **(raw if isinstance(raw, dict) else {})}

    async def passthrough(self, ctx: RequestContext, method: str, path: str,
                          query: list[tuple[str, str]], body: JSON | None) -> JSON:
        self._require(ctx, self.is_v1(ctx), f"{method} /v1{path}")
        return await super().passthrough(ctx, method, path, query, body)

    def _require(self, ctx: RequestContext, supported: bool, operation: str) -> None:
        if not supported:
            raise self.unsupported(f"{operation} on api-version {self.api_version(ctx)} (see "
                                   "tunegate/providers/azure_openai/MAPPING.md for the versions that have it)")
