"""Fireworks AI: supervised fine-tuning jobs and datasets under ``{base}/accounts/{account_id}/...``,
with ``Authorization: Bearer <key>`` and camelCase JSON. The base URL (and a custom host) is the URL up
to and including the version segment: ``https://api.fireworks.ai/v1``. The account comes from
``x-portkey-fireworks-account-id`` or the connection option ``fireworks_account_id``. See MAPPING.md.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from tunegate import models
from tunegate.errors import APIError, InvalidRequest, NotFound, UpstreamError
from tunegate.multipart import MultipartWriter
from tunegate.providers import paging
from tunegate.providers.base import JSON, Download, IncomingFile, Page, Provider
from tunegate.providers.fireworks import wire
from tunegate.providers.fireworks.chat import FireworksChat
from tunegate.providers.fireworks.datasets import Spool, to_file, upload_name
from tunegate.providers.fireworks.jobs import PUBLIC_MODELS, create_body, to_job
from tunegate.providers.rules import DatasetRules
from tunegate.upstream import UpstreamResponse

if TYPE_CHECKING:
    from tunegate.context import RequestContext

JOBS = "supervisedFineTuningJobs"
DATASETS = "datasets"


class Fireworks(FireworksChat, Provider):
    name = "fireworks-ai"
    # Fireworks resource ids: lower-case letters, digits and hyphens, at most 63.
    id_grammar = r"[a-z0-9][a-z0-9-]{0,62}"
    aliases = ("fireworks",)
    # docs.fireworks.ai "Fine-tuning models" (SFT), "Prepare a dataset": minimum 3, maximum 3 million examples.
    dataset_rules = DatasetRules(min_training_examples=3, max_training_examples=3_000_000)
    default_base_url = "https://api.fireworks.ai/v1"
    # The suffix becomes part of the job id (with 8 random characters; ids are at most 63 long).
    suffix_max_length = 40
    # Fireworks's single-request `:upload` "can handle file sizes up to 150Mb" (fireworks-ai 1.2.30
    # resources/datasets.py `upload`; lib/dataset_upload.py: "limited to 150 MB per request"). The unit
    # is not pinned down, so the smaller reading, 150 * 10**6 bytes; larger files go through a signed URL,
    # which takes any size.
    small_upload_max: ClassVar[int] = 150 * 1000 * 1000
    page_size_max: ClassVar[int] = 200

    # ---- plumbing ------------------------------------------------------------------------------

    def error_message(self, response: UpstreamResponse) -> tuple[str, str | None, str | None]:
        return wire.error_message(response)

    def account_id(self, ctx: RequestContext) -> str:
        return wire.account(ctx.require_option("fireworks_account_id"))

    def url(self, ctx: RequestContext, path: str) -> str:
        return f"{self.base_url(ctx)}/accounts/{self.account_id(ctx)}{path}"

    async def call(self, ctx: RequestContext, method: str, path: str, *, params: list[tuple[str, str]] | None = None,
                   json: Any = None, idempotent: bool | None = None) -> Any:
        response = await ctx.upstream.request(
            method, self.url(ctx, path), ctx.policy, headers=self.auth_headers(ctx), params=params, json=json,
            idempotent=method in ("GET", "DELETE") if idempotent is None else idempotent)
        ctx.upstream_status = response.status
        return self.check(ctx, response)

    async def scan(self, ctx: RequestContext, path: str, key: str, page: Page, order_by: str,
                   public_id: Callable[[JSON], str | None]) -> tuple[list[JSON], bool]:
        """One OpenAI page from a pageToken listing, one call per page: the page after one served here
        continues from Fireworks's nextPageToken, saved for its last item (``tunegate.providers.paging``; the
        SDK: "all other parameters … must match the call that provided the page token", so the order is part
        of the saved scope). Any other `after` is found by re-listing from the start in the same order."""
        cursors = paging.Cursors(ctx, key, {"orderBy": order_by})

        async def fetch(token: str | None, size: int, _bound: tuple[tuple[str, str], ...]) -> tuple[list[JSON], str | None]:
            params = [("pageSize", str(size)), ("orderBy", order_by)] + ([("pageToken", token)] if token else [])
            raw = await self.call(ctx, "GET", path, params=params) or {}
            return list(raw.get(key) or []), raw.get("nextPageToken") or None

        async def run(start: paging.Resume) -> paging.Walk:
            return await paging.walk(fetch, start, page.limit, max_size=self.page_size_max, id_of=public_id)

        async def relist() -> paging.Walk:
            try:
                return await run(paging.Resume(None, self.page_size_max, page.after) if page.after else paging.Resume())
            except paging.CursorNotFound:
                raise InvalidRequest(f"'after' names no item of this list: '{page.after}'.", param="after",
                                     code="invalid_cursor") from None

        walked = await paging.resumed(cursors, page.after, run, relist)
        cursors.served(walked.resume)
        return walked.items, walked.more

    # ---- jobs ----------------------------------------------------------------------------------

    def _job(self, ctx: RequestContext, raw: JSON) -> JSON:
        return to_job(raw, self.account_id(ctx))

    async def _check_named_in_body(self, ctx: RequestContext, body: JSON, account_id: str) -> None:
        """A create's base model and datasets, by id or by full resource name, under the ownership rule on
        every spelling the registry may know them by (a tuned model of another key is no base model here,
        nor is its dataset by ``accounts/{account}/datasets/{id}``). A name of any other shape is a 400."""
        named = (("model", "model", "models", PUBLIC_MODELS), ("training_file", "file", DATASETS, account_id),
                 ("validation_file", "file", DATASETS, account_id))
        for param, kind, collection, default_account in named:
            value = body.get(param)
            if isinstance(value, str) and value:
                account, object_id = wire.split_name(value, default_account, collection, param)
                await self.check_spellings(ctx, kind, collection, account, object_id, param, shown=value)

    async def create_job(self, ctx: RequestContext, body: JSON) -> JSON:
        account_id = self.account_id(ctx)
        await self._check_named_in_body(ctx, body, account_id)
        hint = body.get("suffix") or str(body["model"]).rsplit("/", 1)[-1]
        job_id = wire.new_id(hint)
        wandb_key = ctx.credentials.get("wandb_api_key") or ctx.option("wandb_api_key")
        native = create_body(body, account_id, job_id, wandb_api_key=str(wandb_key) if wandb_key else None)
        # The job id travels in the query string, so a replay (retried only under an Idempotency-Key)
        # is refused as ALREADY_EXISTS instead of creating a second job.
        attempts_before = ctx.policy.stats["attempts"]
        try:
            raw = await self.call(ctx, "POST", f"/{JOBS}", params=[("supervisedFineTuningJobId", job_id)],
                                  json=native, idempotent=ctx.idempotent_create)
        except UpstreamError as exc:
            # A retried create whose first try did reach Fireworks: the job exists under our id.
            if exc.status != 409 or ctx.policy.stats["attempts"] - attempts_before < 2:
                raise
            return await self.retrieve_job(ctx, job_id)
        return self._job(ctx, raw)

    async def list_jobs(self, ctx: RequestContext, page: Page) -> JSON:
        account_id = self.account_id(ctx)
        items, more = await self.scan(ctx, f"/{JOBS}", JOBS, page, "createTime desc",
                                      lambda j: wire.short_id(j.get("name"), account_id, JOBS))
        return models.page([self._job(ctx, j) for j in items], more)

    async def retrieve_job(self, ctx: RequestContext, job_id: str) -> JSON:
        job_id = wire.public_id(job_id, "fine-tuning job")
        return self._job(ctx, await self.call(ctx, "GET", f"/{JOBS}/{job_id}"))

    async def _verb(self, ctx: RequestContext, job_id: str, verb: str) -> JSON:
        job_id = wire.public_id(job_id, "fine-tuning job")
        # Custom verbs on the job (never DELETE, which would remove the job and its history).
        raw = await self.call(ctx, "POST", f"/{JOBS}/{job_id}:{verb}", json={}, idempotent=True)
        if isinstance(raw, dict) and raw.get("name") and raw.get("state"):
            return self._job(ctx, raw)
        return await self.retrieve_job(ctx, job_id)  # the contract types the answer as an empty object

    async def cancel_job(self, ctx: RequestContext, job_id: str) -> JSON:
        return await self._verb(ctx, job_id, "cancel")

    async def resume_job(self, ctx: RequestContext, job_id: str) -> JSON:
        return await self._verb(ctx, job_id, "resume")

    async def pause_job(self, ctx: RequestContext, job_id: str) -> JSON:
        raise self.unsupported("pausing fine-tuning jobs (the Fireworks API has no pause; JOB_STATE_PAUSED is "
                               "set by Fireworks itself)")

    async def list_events(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        raise self.unsupported("fine-tuning job events (the Fireworks job API publishes no event list)")

    async def list_checkpoints(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        raise self.unsupported("fine-tuning job checkpoints (the Fireworks job API publishes no checkpoint list)")

    # ---- files (datasets) ----------------------------------------------------------------------

    def _file(self, ctx: RequestContext, raw: JSON, size: int | None = None) -> JSON:
        return to_file(raw, self.account_id(ctx), size=size)

    async def upload_file(self, ctx: RequestContext, upload: IncomingFile) -> JSON:
        if upload.purpose != "fine-tune":
            raise InvalidRequest(f"Fireworks datasets hold training data only: purpose must be 'fine-tune', not "
                                 f"'{upload.purpose}'.", param="purpose", code="unsupported_purpose")
        if upload.fields:
            name = sorted(upload.fields)[0]
            raise InvalidRequest(f"Fireworks datasets take no '{name}'.", param=name, code="unsupported_parameter")
        spool = Spool()
        try:
            await spool.fill(upload.chunks)
            if spool.size == 0:
                raise InvalidRequest("The file is empty.", param="file", code="empty_file")
            stem = os.path.splitext(os.path.basename(upload.filename))[0]
            dataset_id = wire.new_id(f"file-{stem}")
            created = await self.call(ctx, "POST", f"/{DATASETS}", idempotent=False, json={
                "datasetId": dataset_id,
                "dataset": {"displayName": upload.filename, "format": "CHAT", "userUploaded": {},
                            "exampleCount": str(spool.examples)}})
            try:
                if spool.size <= self.small_upload_max:
                    await self._upload_small(ctx, dataset_id, upload.filename, spool)
                else:
                    wire.check_plaintext(created)
                    await self._upload_signed(ctx, dataset_id, upload.filename, spool)
            except BaseException:
                with contextlib.suppress(APIError):  # leave no half-made dataset behind
                    await self.call(ctx, "DELETE", f"/{DATASETS}/{dataset_id}")
                raise
        finally:
            spool.close()
        return self._file(ctx, await self.call(ctx, "GET", f"/{DATASETS}/{dataset_id}"), spool.size)

    async def _upload_small(self, ctx: RequestContext, dataset_id: str, filename: str, spool: Spool) -> None:
        writer = MultipartWriter()
        body = writer.body([], "file", upload_name(filename), "application/jsonl", spool.chunks())
        response = await ctx.upstream.request(
            "POST", self.url(ctx, f"/{DATASETS}/{dataset_id}:upload"), ctx.policy, data=body,
            headers={**self.auth_headers(ctx), "Content-Type": writer.content_type})
        ctx.upstream_status = response.status
        self.check(ctx, response)

    def _signed_url(self, ctx: RequestContext, url: Any) -> str:
        allowed = ("https", "http") if self.base_url(ctx).startswith("http://") else ("https",)
        if not isinstance(url, str) or urlsplit(url).scheme not in allowed:
            raise UpstreamError("Fireworks answered without a usable signed URL.", status=502,
                                code="upstream_invalid_response")
        return url

    async def _upload_signed(self, ctx: RequestContext, dataset_id: str, filename: str, spool: Spool) -> None:
        name = upload_name(filename)
        raw = await self.call(ctx, "POST", f"/{DATASETS}/{dataset_id}:getUploadEndpoint", idempotent=True,
                              json={"filenameToSize": {name: str(spool.size)}})
        url = self._signed_url(ctx, (raw.get("filenameToSignedUrls") or {}).get(name))
        # The signed PUT carries no Fireworks credential; both headers below are part of the signature.
        response = await ctx.upstream.request(
            "PUT", url, ctx.policy, data=spool.chunks(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(spool.size),
                     "X-Goog-Content-Length-Range": f"{spool.size},{spool.size}"})
        ctx.upstream_status = response.status
        if not response.ok:
            self.check(ctx, response)
        await self.call(ctx, "POST", f"/{DATASETS}/{dataset_id}:validateUpload", json={}, idempotent=True)

    async def list_files(self, ctx: RequestContext, page: Page) -> JSON:
        if page.extra.get("purpose") not in (None, "fine-tune"):
            return models.page([], False, with_ids=True)  # every Fireworks dataset is training data
        order = page.extra.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order")
        account_id = self.account_id(ctx)
        items, more = await self.scan(ctx, f"/{DATASETS}", DATASETS, page,
                                      "createTime desc" if order == "desc" else "createTime",
                                      lambda d: wire.short_id(d.get("name"), account_id, DATASETS))
        return models.page([self._file(ctx, d) for d in items], more, with_ids=True)

    async def retrieve_file(self, ctx: RequestContext, file_id: str) -> JSON:
        file_id = wire.public_id(file_id, "file")
        return self._file(ctx, await self.call(ctx, "GET", f"/{DATASETS}/{file_id}"))

    async def delete_file(self, ctx: RequestContext, file_id: str) -> JSON:
        file_id = wire.public_id(file_id, "file")
        await self.call(ctx, "DELETE", f"/{DATASETS}/{file_id}")
        return models.deleted(file_id)

    async def file_content(self, ctx: RequestContext, file_id: str) -> Download:
        file_id = wire.public_id(file_id, "file")
        raw = await self.call(ctx, "GET", f"/{DATASETS}/{file_id}:getDownloadEndpoint")
        urls = [self._signed_url(ctx, u) for _n, u in sorted((raw.get("filenameToSignedUrls") or {}).items())]
        if not urls:
            raise NotFound(f"The Fireworks dataset '{file_id}' holds no file yet.")
        first = await self.download(ctx, urls[0])  # no credential: the URLs are signed

        async def chained() -> AsyncIterator[bytes]:
            async for chunk in first.chunks:
                yield chunk
            for url in urls[1:]:
                more = await self.download(ctx, url)
                async for chunk in more.chunks:
                    yield chunk

        media = first.media_type if len(urls) == 1 else "application/octet-stream"
        return Download(chained(), media_type=media)
