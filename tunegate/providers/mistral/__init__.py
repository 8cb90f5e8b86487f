"""Mistral AI fine-tuning (``https://api.mistral.ai/v1``: ``/fine_tuning/jobs``, ``/files``), spoken
to in Mistral's own API and answered in OpenAI's. Shapes: ``../shared/specs/mistral-openapi.yaml``.
See MAPPING.md for every field, status and cursor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from tunegate import models
from tunegate.errors import InvalidRequest
from tunegate.multipart import MultipartWriter
from tunegate.providers.base import JSON, Download, IncomingFile, Page, Provider, generic_error_message
from tunegate.providers.mistral.chat import MistralChat
from tunegate.providers.paging import Cursors
from tunegate.providers.rules import DatasetRules
from tunegate.upstream import UpstreamResponse

from . import files as files_
from . import jobs as jobs_
from .paging import scan, slice_after

if TYPE_CHECKING:
    from tunegate.context import RequestContext

# Mistral lists its fine-tuning API among its deprecated features, "no longer actively supported", with
# no replacement documented (docs.mistral.ai/resources/deprecated). Its SDK (mistralai 2.5.1) does not
# mark the calls, so every fine-tuning answer says it, as a standard Warning header (code 299: a
# persistent warning).
DEPRECATION_WARNING = ('299 tunegate "Mistral has deprecated its fine-tuning API; it is no longer actively '
                       'supported: https://docs.mistral.ai/resources/deprecated"')


class Mistral(MistralChat, Provider):
    name = "mistral-ai"
    # UUIDs, lower case as Mistral hands them out.
    id_grammar = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    aliases = ("mistral",)
    # mistral-openapi.yaml, POST /v1/files: "The size of individual files can be a maximum of 512 MB".
    # No minimum example count is published (see MAPPING.md): Mistral decides.
    dataset_rules = DatasetRules(max_file_bytes=512 * 1024**2)
    default_base_url = "https://api.mistral.ai/v1"
    suffix_max_length: ClassVar[int] = 18  # JobIn.suffix: maxLength 18
    # Page size used when re-listing to find an `after` cursor (Mistral's default page_size).
    max_page_size: ClassVar[int] = 100

    # ---- plumbing ------------------------------------------------------------------------------

    def url(self, ctx: RequestContext, path: str) -> str:
        return self.base_url(ctx) + path

    async def call(self, ctx: RequestContext, method: str, path: str, *,
                   params: list[tuple[str, str]] | None = None, json: Any = None,
                   idempotent: bool | None = None) -> Any:
        response = await ctx.upstream.request(
            method, self.url(ctx, path), ctx.policy, headers=self.auth_headers(ctx), params=params, json=json,
            idempotent=method in ("GET", "DELETE") if idempotent is None else idempotent)
        ctx.upstream_status = response.status
        return self.check(ctx, response)

    def error_message(self, response: UpstreamResponse) -> tuple[str, str | None, str | None]:
        """Mistral's error bodies: ``{"message": "Unauthorized", "request_id"}``, ``{"detail": "…"}``,
        ``{"object": "error", "message", "type", "param", "code"}`` and FastAPI's validation error
        ``{"detail": [{"loc", "msg", "type"}]}`` (HTTPValidationError), sometimes wrapped in ``message``."""
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, Mapping):
            inner = data.get("message")
            detail = inner.get("detail") if isinstance(inner, Mapping) else data.get("detail")
            if isinstance(detail, list) and detail:
                parts = []
                for item in detail[:5]:
                    if isinstance(item, Mapping):
                        loc = ".".join(str(p) for p in item.get("loc") or [] if p != "body")
                        parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
                    else:
                        parts.append(str(item))
                code = data.get("code")
                return "; ".join(parts), str(data.get("type") or "invalid_request_error"), (
                    str(code) if code is not None else "validation_error")
        return generic_error_message(response)

    async def _list(self, ctx: RequestContext, path: str, page: Page, kind: str,
                    filters: list[tuple[str, str]]) -> tuple[list[JSON], bool]:
        async def fetch(number: int, size: int) -> JSON:
            raw = await self.call(ctx, "GET", path,
                                  params=[("page", str(number)), ("page_size", str(size)), *filters])
            return raw if isinstance(raw, dict) else {}

        return await scan(fetch, page, kind=kind, max_page_size=self.max_page_size,
                          cursors=Cursors(ctx, path, {"filters": filters}))

    # ---- jobs ----------------------------------------------------------------------------------

    @staticmethod
    def _deprecated(ctx: RequestContext) -> None:
        ctx.response_headers["Warning"] = DEPRECATION_WARNING

    async def create_job(self, ctx: RequestContext, body: JSON) -> JSON:
        self._deprecated(ctx)
        # A create is never replayed blindly: retried only when tunegate holds an idempotency key.
        raw = await self.call(ctx, "POST", "/fine_tuning/jobs", json=jobs_.create_body(ctx, body),
                              idempotent=ctx.idempotent_create)
        return jobs_.to_job(raw)

    async def list_jobs(self, ctx: RequestContext, page: Page) -> JSON:
        self._deprecated(ctx)
        if page.extra.get("metadata"):
            raise InvalidRequest("Mistral jobs carry no metadata to filter on.", param="metadata",
                                 code="unsupported_parameter")
        items, more = await self._list(ctx, "/fine_tuning/jobs", page, "fine-tuning job", [])
        return models.page([jobs_.to_job(j) for j in items], more)

    async def _detail(self, ctx: RequestContext, job_id: str) -> JSON:
        self._deprecated(ctx)  # retrieve, events and checkpoints
        raw = await self.call(ctx, "GET", f"/fine_tuning/jobs/{job_id}")
        return raw if isinstance(raw, dict) else {}

    async def retrieve_job(self, ctx: RequestContext, job_id: str) -> JSON:
        return jobs_.to_job(await self._detail(ctx, job_id))

    async def cancel_job(self, ctx: RequestContext, job_id: str) -> JSON:
        # Cancelling twice is harmless, so a cancel may be retried.
        self._deprecated(ctx)
        return jobs_.to_job(await self.call(ctx, "POST", f"/fine_tuning/jobs/{job_id}/cancel", idempotent=True))

    async def resume_job(self, ctx: RequestContext, job_id: str) -> JSON:
        # Mistral's start: a job created without auto_start (e.g. in Mistral's console) waits in
        # VALIDATED until started. Jobs created through tunegate start by themselves.
        self._deprecated(ctx)
        return jobs_.to_job(await self.call(ctx, "POST", f"/fine_tuning/jobs/{job_id}/start", idempotent=True))

    async def pause_job(self, ctx: RequestContext, job_id: str) -> JSON:
        raise self.unsupported("pausing fine-tuning jobs (Mistral can only cancel a running job)")

    async def list_events(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        items, more = slice_after(jobs_.events(await self._detail(ctx, job_id)), page, "event")
        return models.page(items, more)

    async def list_checkpoints(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        items, more = slice_after(jobs_.checkpoints(await self._detail(ctx, job_id)), page, "checkpoint")
        return models.page(items, more, with_ids=True)

    # ---- files ---------------------------------------------------------------------------------

    async def upload_file(self, ctx: RequestContext, upload: IncomingFile) -> JSON:
        purpose = files_.native_purpose(upload.purpose)
        files_.check_fields(upload.fields)
        errors: list[BaseException] = []
        chunks = files_.training_data(upload.chunks, errors) if purpose == "fine-tune" else upload.chunks
        writer = MultipartWriter()
        body = writer.body([("purpose", purpose)], "file", upload.filename, upload.content_type, chunks)
        try:
            response = await ctx.upstream.request(
                "POST", self.url(ctx, "/files"), ctx.policy, data=body,
                headers={**self.auth_headers(ctx), "Content-Type": writer.content_type})
        except Exception:
            if errors:  # the converter's 400, whatever the HTTP client made of it
                raise errors[0] from None
            raise
        if errors:
            raise errors[0]
        ctx.upstream_status = response.status
        return files_.to_file(self.check(ctx, response))

    async def list_files(self, ctx: RequestContext, page: Page) -> JSON:
        filters: list[tuple[str, str]] = []
        if page.extra.get("purpose"):
            filters.append(("purpose", files_.native_purpose(str(page.extra["purpose"]))))
        if page.extra.get("order") not in (None, "desc"):
            raise InvalidRequest("Mistral lists files newest first only ('order' must be 'desc').", param="order",
                                 code="unsupported_parameter")
        items, more = await self._list(ctx, "/files", page, "file", filters)
        return models.page([files_.to_file(f) for f in items], more, with_ids=True)

    async def retrieve_file(self, ctx: RequestContext, file_id: str) -> JSON:
        return files_.to_file(await self.call(ctx, "GET", f"/files/{file_id}"))

    async def delete_file(self, ctx: RequestContext, file_id: str) -> JSON:
        raw = await self.call(ctx, "DELETE", f"/files/{file_id}")
        deleted = raw.get("deleted", True) if isinstance(raw, dict) else True
        return {"id": file_id, "object": "file", "deleted": bool(deleted)}

    async def file_content(self, ctx: RequestContext, file_id: str) -> Download:
        return await self.download(ctx, self.url(ctx, f"/files/{file_id}/content"), headers=self.auth_headers(ctx))
