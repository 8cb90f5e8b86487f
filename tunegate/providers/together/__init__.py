"""Together AI fine-tuning (``https://api.together.ai/v1``, ``Authorization: Bearer``): jobs under
``/fine-tunes``, files under ``/files``. Mapping tables in MAPPING.md; transforms in ``jobs.py``
and ``files.py``; ``limit``/``after`` over Together's whole lists in ``paging.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunegate.errors import InvalidRequest, UpstreamError
from tunegate.multipart import MultipartWriter
from tunegate.providers.base import JSON, Download, IncomingFile, Page, Provider
from tunegate.providers.rules import DatasetRules
from tunegate.providers.together import files as tfiles
from tunegate.providers.together import jobs as tjobs
from tunegate.providers.together.chat import TogetherChat
from tunegate.providers.together.paging import after_index, cursor_number, envelope

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tunegate.context import RequestContext

SortKey = tuple[int, str]


def _sort_key(obj: JSON) -> SortKey:
    return int(obj.get("created_at") or 0), str(obj.get("id"))


class Together(TogetherChat, Provider):
    name = "together-ai"
    # `ft-<uuid>` and `file-<uuid>`, lower case as Together hands them out.
    id_grammar = r"(ft|file)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    aliases = ("together",)
    default_base_url = "https://api.together.ai/v1"
    # together-python 1.5.34 (src/together/constants.py): MIN_SAMPLES = 1, MAX_FILE_SIZE_GB = 50.1 (GiB).
    dataset_rules = DatasetRules(min_training_examples=1, max_file_bytes=int(50.1 * 2**30))
    # "up to 40 character suffix" (FinetuneRequest.suffix in both Python SDKs; the spec states none).
    suffix_max_length = 40

    # ---- plumbing ------------------------------------------------------------------------------

    def url(self, ctx: RequestContext, path: str) -> str:
        return self.base_url(ctx) + path

    async def call(self, ctx: RequestContext, method: str, path: str, *, json: Any = None,
                   idempotent: bool | None = None) -> Any:
        response = await ctx.upstream.request(
            method, self.url(ctx, path), ctx.policy, headers=self.auth_headers(ctx), json=json,
            idempotent=method in ("GET", "DELETE") if idempotent is None else idempotent)
        ctx.upstream_status = response.status
        return self.check(ctx, response)

    @staticmethod
    def _data(raw: Any) -> list[Any]:
        """The `data` array of a Together list (FinetuneTruncatedList, FileList, FinetuneListEvents,
        FinetuneListCheckpoints)."""
        if isinstance(raw, dict) and isinstance(raw.get("data"), list):
            return raw["data"]  # type: ignore[no-any-return]
        if raw is None or (isinstance(raw, dict) and raw.get("data") is None):
            return []
        raise UpstreamError("Together answered a list without a 'data' array.", status=502,
                            code="upstream_invalid_response")

    @staticmethod
    def _start(items: list[JSON], page: Page, kind: str) -> int:
        """Where the page starts: after the cursor's id in the ordered list. A cursor that is not in
        the list (deleted since the last page) cannot be placed: a 400 rather than a wrong page."""
        start = after_index([i["id"] for i in items], page.after)
        if start is None:
            raise InvalidRequest(f"'after' names no {kind} in Together's list: '{page.after}' (deleted since the "
                                 "previous page?).", param="after")
        return start

    # ---- jobs ----------------------------------------------------------------------------------

    def _wandb_key(self, ctx: RequestContext) -> str | None:
        key = ctx.credentials.get("wandb_api_key") or ctx.option("wandb_api_key")
        return str(key) if key else None

    async def create_job(self, ctx: RequestContext, body: JSON) -> JSON:
        native = tjobs.create_body(body, wandb_api_key=self._wandb_key(ctx))
        # A create is never replayed blindly: retried only when tunegate holds an idempotency key.
        raw = await self.call(ctx, "POST", "/fine-tunes", json=native, idempotent=ctx.idempotent_create)
        return tjobs.to_job(raw)

    async def list_jobs(self, ctx: RequestContext, page: Page) -> JSON:
        if page.extra.get("metadata"):
            raise InvalidRequest("Together fine-tuning jobs have no metadata to filter on.", param="metadata",
                                 code="unsupported_parameter")
        raw = await self.call(ctx, "GET", "/fine-tunes")
        # Newest first, on Together's full-precision creation time (the id breaks ties).
        natives = sorted((j for j in self._data(raw) if isinstance(j, dict) and j.get("id")),
                         key=lambda j: (tjobs.timestamp(j.get("created_at")) or 0.0, str(j["id"])), reverse=True)
        jobs = [tjobs.to_job(j) for j in natives]
        return envelope(jobs, self._start(jobs, page, "job"), page.limit)

    async def retrieve_job(self, ctx: RequestContext, job_id: str) -> JSON:
        return tjobs.to_job(await self.call(ctx, "GET", f"/fine-tunes/{job_id}"))

    async def cancel_job(self, ctx: RequestContext, job_id: str) -> JSON:
        # Cancelling twice is harmless, so a cancel may be retried.
        return tjobs.to_job(await self.call(ctx, "POST", f"/fine-tunes/{job_id}/cancel", idempotent=True))

    async def list_events(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        raw = await self.call(ctx, "GET", f"/fine-tunes/{job_id}/events")
        events = tjobs.to_events(job_id, self._data(raw))  # newest first
        start = after_index([e["id"] for e in events], page.after)
        if start is None:
            # The id carries the event's position: go on with the older ones.
            prefix = tjobs.event_id(job_id, 0)[:-1]
            number = cursor_number(page.after[len(prefix):]) if page.after and page.after.startswith(prefix) else None
            if number is None:
                raise InvalidRequest(f"'after' is not an event of job '{job_id}'.", param="after")
            start = next((i for i, e in enumerate(events) if int(e["id"][len(prefix):]) < number), len(events))
        return envelope(events, start, page.limit)

    async def list_checkpoints(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        raw = await self.call(ctx, "GET", f"/fine-tunes/{job_id}/checkpoints")
        checkpoints = tjobs.to_checkpoints(job_id, self._data(raw))  # highest step first
        start = after_index([c["id"] for c in checkpoints], page.after)
        if start is None:
            prefix = f"ftckpt-{job_id}-"
            step = (cursor_number(page.after[len(prefix):].split("-", 1)[0])
                    if page.after and page.after.startswith(prefix) else None)
            if step is None:
                raise InvalidRequest(f"'after' is not a checkpoint of job '{job_id}'.", param="after")
            start = next((i for i, c in enumerate(checkpoints) if c["step_number"] < step), len(checkpoints))
        return envelope(checkpoints, start, page.limit, with_ids=True)

    # ---- files ---------------------------------------------------------------------------------

    async def upload_file(self, ctx: RequestContext, upload: IncomingFile) -> JSON:
        purpose = tfiles.together_purpose(upload.purpose)
        if upload.fields:
            name = sorted(upload.fields)[0]
            raise InvalidRequest(f"Together's file upload has no equivalent for '{name}'.", param=name,
                                 code="unsupported_parameter")
        ftype = tfiles.file_type(upload.filename, purpose)
        converted: tfiles.ConvertedChunks | None = None
        chunks: AsyncIterator[bytes] = upload.chunks
        if purpose == "fine-tune" and ftype == "jsonl" and str(ctx.option("together_convert", "true")).lower() != "false":
            converted = tfiles.ConvertedChunks(upload.chunks)
            chunks = converted.__aiter__()
        writer = MultipartWriter()
        fields = [("purpose", purpose), ("file_name", upload.filename), ("file_type", ftype)]
        body = writer.body(fields, "file", upload.filename, upload.content_type or "application/octet-stream", chunks)
        try:
            response = await ctx.upstream.request(
                "POST", self.url(ctx, "/files/upload"), ctx.policy, data=body,
                headers={**self.auth_headers(ctx), "Content-Type": writer.content_type})
        except BaseException:
            if converted is not None and converted.error is not None:
                raise converted.error from None
            raise
        if converted is not None and converted.error is not None:
            raise converted.error
        ctx.upstream_status = response.status
        return tfiles.to_file(self.check(ctx, response))

    async def list_files(self, ctx: RequestContext, page: Page) -> JSON:
        raw = await self.call(ctx, "GET", "/files")
        files = [tfiles.to_file(f) for f in self._data(raw) if isinstance(f, dict) and f.get("id")]
        if page.extra.get("purpose"):
            files = [f for f in files if f["purpose"] == page.extra["purpose"]]
        order = str(page.extra.get("order") or "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order")
        files.sort(key=_sort_key, reverse=order == "desc")
        return envelope(files, self._start(files, page, "file"), page.limit, with_ids=True)

    async def retrieve_file(self, ctx: RequestContext, file_id: str) -> JSON:
        return tfiles.to_file(await self.call(ctx, "GET", f"/files/{file_id}"))

    async def delete_file(self, ctx: RequestContext, file_id: str) -> JSON:
        raw = await self.call(ctx, "DELETE", f"/files/{file_id}")
        deleted = not isinstance(raw, dict) or raw.get("deleted", True) is not False
        return {"id": str((raw or {}).get("id") or file_id), "object": "file", "deleted": deleted}

    async def file_content(self, ctx: RequestContext, file_id: str) -> Download:
        return await self.download(ctx, self.url(ctx, f"/files/{file_id}/content"), headers=self.auth_headers(ctx))
