"""The OpenAI wire protocol, shared by providers that speak it (OpenAI itself, Azure OpenAI).

Requests go out as OpenAI defines them; answers come back through two small hooks, ``to_job`` and
``to_file``, which are the identity for OpenAI and a status/field mapping for look-alikes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunegate.multipart import MultipartWriter
from tunegate.providers.base import JSON, Download, IncomingFile, Page
from tunegate.providers.openai_chat import OpenAIChat

if TYPE_CHECKING:
    from tunegate.context import RequestContext


class OpenAICompatible(OpenAIChat):
    # ---- hooks -------------------------------------------------------------------------------

    def url(self, ctx: RequestContext, path: str) -> str:
        return self.base_url(ctx) + path

    def query(self, ctx: RequestContext) -> list[tuple[str, str]]:
        """Query parameters every call carries (e.g. Azure's api-version)."""
        return []

    def headers(self, ctx: RequestContext) -> dict[str, str]:
        return self.auth_headers(ctx)

    def to_job(self, ctx: RequestContext, raw: JSON) -> JSON:
        return raw

    def to_file(self, ctx: RequestContext, raw: JSON) -> JSON:
        return raw

    def to_create_body(self, ctx: RequestContext, body: JSON) -> JSON:
        return body

    def chat_headers(self, ctx: RequestContext) -> dict[str, str]:
        return self.headers(ctx)

    def chat_params(self, ctx: RequestContext) -> list[tuple[str, str]]:
        return self.query(ctx)

    # ---- plumbing ------------------------------------------------------------------------------

    async def call(self, ctx: RequestContext, method: str, path: str, *, params: list[tuple[str, str]] | None = None,
                   json: Any = None, idempotent: bool | None = None,
                   headers: dict[str, str] | None = None) -> Any:
        response = await ctx.upstream.request(
            method, self.url(ctx, path), ctx.policy, headers={**self.headers(ctx), **(headers or {})},
            params=self.query(ctx) + (params or []), json=json,
            idempotent=method in ("GET", "DELETE") if idempotent is None else idempotent)
        ctx.upstream_status = response.status
        return self.check(ctx, response)

    @staticmethod
    def page_params(page: Page) -> list[tuple[str, str]]:
        params = [("limit", str(page.limit))]
        if page.after:
            params.append(("after", page.after))
        for name, value in page.extra.items():
            if isinstance(value, dict):  # deepObject style, e.g. metadata[k]=v
                params.extend((f"{name}[{k}]", str(v)) for k, v in value.items())
            elif value is not None:
                params.append((name, str(value)))
        return params

    def _job_list(self, ctx: RequestContext, raw: JSON) -> JSON:
        return {**raw, "data": [self.to_job(ctx, j) for j in raw.get("data", [])],
                "has_more": bool(raw.get("has_more", False))}

    # ---- jobs ----------------------------------------------------------------------------------

    async def create_job(self, ctx: RequestContext, body: JSON) -> JSON:
        # A create is never replayed blindly: retried only when tunegate holds an idempotency key.
        # The client's Idempotency-Key goes upstream too, so a retry after a lost answer finds the job
        # the first try created instead of starting another.
        raw = await self.call(ctx, "POST", "/fine_tuning/jobs", json=self.to_create_body(ctx, body),
                              idempotent=ctx.idempotent_create,
                              headers={"Idempotency-Key": ctx.idempotency_key} if ctx.idempotency_key else None)
        return self.to_job(ctx, raw)

    async def list_jobs(self, ctx: RequestContext, page: Page) -> JSON:
        return self._job_list(ctx, await self.call(ctx, "GET", "/fine_tuning/jobs", params=self.page_params(page)))

    async def retrieve_job(self, ctx: RequestContext, job_id: str) -> JSON:
        return self.to_job(ctx, await self.call(ctx, "GET", f"/fine_tuning/jobs/{self.segment(job_id)}"))

    async def cancel_job(self, ctx: RequestContext, job_id: str) -> JSON:
        # Cancelling twice is harmless, so a cancel may be retried.
        return self.to_job(ctx, await self.call(ctx, "POST", f"/fine_tuning/jobs/{self.segment(job_id)}/cancel", idempotent=True))

    async def pause_job(self, ctx: RequestContext, job_id: str) -> JSON:
        return self.to_job(ctx, await self.call(ctx, "POST", f"/fine_tuning/jobs/{self.segment(job_id)}/pause", idempotent=True))

    async def resume_job(self, ctx: RequestContext, job_id: str) -> JSON:
        return self.to_job(ctx, await self.call(ctx, "POST", f"/fine_tuning/jobs/{self.segment(job_id)}/resume", idempotent=True))

    async def list_events(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        return await self.call(ctx, "GET", f"/fine_tuning/jobs/{self.segment(job_id)}/events",  # type: ignore[no-any-return]
                               params=self.page_params(page))

    async def list_checkpoints(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        return await self.call(ctx, "GET", f"/fine_tuning/jobs/{self.segment(job_id)}/checkpoints",  # type: ignore[no-any-return]
                               params=self.page_params(page))

    # ---- files ---------------------------------------------------------------------------------

    async def upload_file(self, ctx: RequestContext, upload: IncomingFile) -> JSON:
        writer = MultipartWriter()
        fields = [("purpose", upload.purpose), *upload.fields.items()]
        body = writer.body(fields, "file", upload.filename, upload.content_type, upload.chunks)
        response = await ctx.upstream.request(
            "POST", self.url(ctx, "/files"), ctx.policy, params=self.query(ctx), data=body,
            headers={**self.headers(ctx), "Content-Type": writer.content_type})
        ctx.upstream_status = response.status
        return self.to_file(ctx, self.check(ctx, response))

    async def list_files(self, ctx: RequestContext, page: Page) -> JSON:
        raw = await self.call(ctx, "GET", "/files", params=self.page_params(page))
        return {**raw, "data": [self.to_file(ctx, f) for f in raw.get("data", [])],
                "has_more": bool(raw.get("has_more", False))}

    async def retrieve_file(self, ctx: RequestContext, file_id: str) -> JSON:
        return self.to_file(ctx, await self.call(ctx, "GET", f"/files/{self.segment(file_id)}"))

    async def delete_file(self, ctx: RequestContext, file_id: str) -> JSON:
        return await self.call(ctx, "DELETE", f"/files/{self.segment(file_id)}")  # type: ignore[no-any-return]

    async def file_content(self, ctx: RequestContext, file_id: str) -> Download:
        return await self.download(ctx, self.url(ctx, f"/files/{self.segment(file_id)}/content"), headers=self.headers(ctx),
                                   params=self.query(ctx))

    # ---- uploads -------------------------------------------------------------------------------

    async def create_upload(self, ctx: RequestContext, body: JSON) -> JSON:
        return await self.call(ctx, "POST", "/uploads", json=body)  # type: ignore[no-any-return]

    async def add_upload_part(self, ctx: RequestContext, upload_id: str, part: IncomingFile) -> JSON:
        writer = MultipartWriter()
        body = writer.body([], "data", part.filename, part.content_type, part.chunks)
        response = await ctx.upstream.request(
            "POST", self.url(ctx, f"/uploads/{self.segment(upload_id)}/parts"), ctx.policy, params=self.query(ctx), data=body,
            headers={**self.headers(ctx), "Content-Type": writer.content_type})
        ctx.upstream_status = response.status
        return self.check(ctx, response)  # type: ignore[no-any-return]

    async def complete_upload(self, ctx: RequestContext, upload_id: str, body: JSON) -> JSON:
        raw = await self.call(ctx, "POST", f"/uploads/{self.segment(upload_id)}/complete", json=body)
        if isinstance(raw.get("file"), dict):
            raw["file"] = self.to_file(ctx, raw["file"])
        return raw  # type: ignore[no-any-return]

    async def cancel_upload(self, ctx: RequestContext, upload_id: str) -> JSON:
        return await self.call(ctx, "POST", f"/uploads/{self.segment(upload_id)}/cancel", idempotent=True)  # type: ignore[no-any-return]

    # ---- everything else under /fine_tuning/ -----------------------------------------------------

    async def passthrough(self, ctx: RequestContext, method: str, path: str,
                          query: list[tuple[str, str]], body: JSON | None) -> JSON:
        return await self.call(ctx, method, path, params=query, json=body)  # type: ignore[no-any-return]
