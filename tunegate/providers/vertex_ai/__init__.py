"""Vertex AI: Gemini tuning jobs (aiplatform v1 ``projects.locations.tuningJobs``) and training data in Cloud
Storage. See MAPPING.md for every field, status and the pagination scheme."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from tunegate import models
from tunegate.errors import InvalidRequest, NotFound, UpstreamError
from tunegate.providers import paging
from tunegate.providers.base import JSON, Download, IncomingFile, Page, page_in_memory
from tunegate.providers.rules import DatasetRules
from tunegate.providers.vertex_ai import gcs, jobs
from tunegate.providers.vertex_ai.auth import TokenSource, service_account_info
from tunegate.providers.vertex_ai.chat import VertexChat
from tunegate.providers.vertex_ai.gcs import (
    Storage,
    new_object_name,
    object_from_id,
    object_url,
    to_file,
)
from tunegate.upstream import UpstreamResponse

if TYPE_CHECKING:
    from tunegate.context import RequestContext

DEFAULT_REGION = "us-central1"
LIST_PAGE = 100  # the largest tuningJobs.list pageSize asked for (Vertex lowers larger ones)
CANCEL_POLLS = (0.25, 0.5, 1.0)  # re-reads after :cancel while the job is still JOB_STATE_CANCELLING
CONVERTED_PURPOSES = ("fine-tune",)
# Multi-region (mREP) locations and their hosts `aiplatform.{location}.rep.googleapis.com`: googleapis/
# python-aiplatform 1.165.1, vertexai/_genai/client.py (`location in ["us", "eu"]` → that base URL) and
# google/cloud/aiplatform/utils `mrep_endpoint` (MREP_JURISDICTIONS there lists "us" only, so far).
MULTI_REGIONS = frozenset({"us", "eu"})


class VertexAI(VertexChat):
    name = "vertex-ai"
    suffix_max_length: ClassVar[int] = 128  # tunedModelDisplayName: up to 128 characters
    # Vertex docs "About supervised fine-tuning for Gemini models", Limitations (Gemini 2.5 Flash): validation
    # dataset at most 5000 examples, training file up to 1 GB (JSONL), at most 1M text-only examples. The
    # current pages state no minimum (an older page said 16, for Gemini 1.x): not checked, Vertex decides.
    dataset_rules = DatasetRules(max_training_examples=1_000_000, max_validation_examples=5000,
                                 max_file_bytes=1024**3)
    # The region becomes part of the host (`{region}-aiplatform.googleapis.com`), the project part of
    # the path: both held to Google's grammar (project ids: 6–30 of a-z, 0-9, '-'; domain-scoped ones
    # carry `example.com:`).
    option_patterns = {"vertex_region": r"[a-z][a-z0-9-]{0,39}",
                       "vertex_project_id": r"[a-z0-9][a-z0-9.:-]{0,62}"}

    # A connection's bucket fixes the prefix too (its own, else the default): docs/security.md rule 2.
    locked_with: ClassVar[dict[str, tuple[str, ...]]] = {"vertex_storage_bucket_name": ("vertex_storage_prefix",)}

    def effective_option(self, name: str, options: Mapping[str, Any]) -> str | None:
        if name == "vertex_storage_prefix":
            return gcs.storage_prefix(options.get(name))
        return super().effective_option(name, options)

    def canonical_id(self, kind: str, raw: str) -> bool:
        try:
            if kind == "job":
                jobs.job_name(raw)
            elif kind == "file":
                gcs.object_from_id(raw)
            else:
                return super().canonical_id(kind, raw)
        except NotFound:
            return False
        return True

    def operator_hosts(self) -> set[str]:
        return super().operator_hosts() | gcs.operator_hosts()

    def __init__(self) -> None:
        self.tokens = TokenSource()
        self.storage = Storage(self)

    # ---- where and who -------------------------------------------------------------------------

    def project(self, ctx: RequestContext) -> str:
        project = ctx.option("vertex_project_id")
        if project is None:
            info = service_account_info(ctx)
            project = info.get("project_id") if info else None
        if not project:
            ctx.require_option("vertex_project_id")
        if not re.fullmatch(self.option_patterns["vertex_project_id"], str(project)):
            raise InvalidRequest(f"'{project}' is not a Google Cloud project id.", param="x-portkey-vertex-project-id",
                                 code="invalid_provider_option")
        return str(project)

    def region(self, ctx: RequestContext) -> str:
        return str(ctx.option("vertex_region", DEFAULT_REGION))

    def api_root(self, ctx: RequestContext, location: str) -> str:
        """Up to and including ``/v1``: the custom host when one is given, else the location's endpoint."""
        if ctx.base_url_override:
            return ctx.base_url_override.rstrip("/")
        if location == "global":
            return "https://aiplatform.googleapis.com/v1"
        if location in MULTI_REGIONS:  # a multi-region is served on its own host, not `{location}-aiplatform`
            return f"https://aiplatform.{location}.rep.googleapis.com/v1"
        return f"https://{location}-aiplatform.googleapis.com/v1"

    def parent(self, ctx: RequestContext) -> tuple[str, str]:
        region = self.region(ctx)
        return region, f"projects/{self.project(ctx)}/locations/{region}"

    async def auth(self, ctx: RequestContext) -> dict[str, str]:
        """The Authorization header for Vertex AI and Cloud Storage alike (cloud-platform scope)."""
        info = service_account_info(ctx)
        if info is not None:
            assert ctx.settings is not None
            token = await self.tokens.token(info, ctx.settings.allowed_custom_hosts)
            ctx.credentials["access_token"] = token  # so ctx.redact hides it should a provider echo it
            return {"Authorization": f"Bearer {token}"}
        if key := ctx.credentials.get(self.credential_field):  # an access token sent as the provider key
            return {"Authorization": f"Bearer {key}"}
        return {}

    def error_message(self, response: UpstreamResponse) -> tuple[str, str | None, str | None]:
        """Google's errors: ``{"error": {"code": 404, "message", "status": "NOT_FOUND", "errors": [{reason}]}}``."""
        try:
            data = response.json()
        except ValueError:
            data = None
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            code = err.get("status")
            if not code and isinstance(err.get("errors"), list) and err["errors"]:
                code = err["errors"][0].get("reason")
            return str(err["message"]), None, str(code).lower() if code else None
        if response.status == 404:
            return "The provider found no such object (HTTP 404).", None, "not_found"
        return super().error_message(response)

    async def call(self, ctx: RequestContext, method: str, url: str, *, params: list[tuple[str, str]] | None = None,
                   json: Any = None, idempotent: bool) -> Any:
        response = await ctx.upstream.request(method, url, ctx.policy, headers=await self.auth(ctx), params=params,
                                              json=json, idempotent=idempotent)
        ctx.upstream_status = response.status
        self.refused(ctx, response.status)
        return self.check(ctx, response)

    def refused(self, ctx: RequestContext, status: int) -> None:
        """After a 401 from Vertex or Cloud Storage, drop the cached token: the next request mints a new one
        (a revoked or rotated credential must not keep failing until the token's hour is up)."""
        if status == 401 and (info := service_account_info(ctx)) is not None:
            self.tokens.forget(info)

    # ---- jobs ----------------------------------------------------------------------------------

    async def create_job(self, ctx: RequestContext, body: JSON) -> JSON:
        native = jobs.create_body(body)
        region, parent = self.parent(ctx)
        raw = await self.call(ctx, "POST", f"{self.api_root(ctx, region)}/{parent}/tuningJobs", json=native,
                              idempotent=ctx.idempotent_create)
        return jobs.to_job(raw)

    async def _get(self, ctx: RequestContext, name: str) -> JSON:
        url = f"{self.api_root(ctx, jobs.job_location(name))}/{name}"
        return await self.call(ctx, "GET", url, idempotent=True)  # type: ignore[no-any-return]

    async def _read(self, ctx: RequestContext, job_id: str) -> JSON:
        """GET the job, with the ownership rule held on the name Vertex answers with. A job name may carry
        the project id or the project number; Vertex takes either and answers with the number, the spelling
        the registry records. A job asked for by another spelling is checked again under the name it came
        back as, so another key's job stays a 404 (docs/security.md, rule 3)."""
        raw = await self._get(ctx, jobs.job_name(job_id))
        returned = jobs.job_id(str(raw.get("name") or ""))
        if returned != job_id:
            await ctx.check_named("job", returned, shown=job_id)
        return raw

    async def retrieve_job(self, ctx: RequestContext, job_id: str) -> JSON:
        return jobs.to_job(await self._read(ctx, job_id))

    async def cancel_job(self, ctx: RequestContext, job_id: str) -> JSON:
        name = jobs.job_name(job_id)
        if ctx.key is not None and ctx.store is not None and await ctx.store.placement("job", job_id) is None:
            # A name the registry does not know may be another spelling of a recorded job: read it first,
            # and cancel only what passes the ownership check under the name Vertex answers with.
            await self._read(ctx, job_id)
        # tuningJobs.cancel answers google.protobuf.Empty and cancels asynchronously: read the job back (and again,
        # briefly, while it is still CANCELLING) to answer with it, as OpenAI does.
        await self.call(ctx, "POST", f"{self.api_root(ctx, jobs.job_location(name))}/{name}:cancel", json={},
                        idempotent=True)
        raw = await self._get(ctx, name)
        for delay in CANCEL_POLLS:
            if raw.get("state") != "JOB_STATE_CANCELLING":
                break
            await asyncio.sleep(delay)
            raw = await self._get(ctx, name)
        return jobs.to_job(raw)

    async def list_jobs(self, ctx: RequestContext, page: Page) -> JSON:
        """Vertex's own order (newest first), one tuningJobs.list call per page: the page after one served
        here continues from Vertex's nextPageToken, saved for its last job (``tunegate.providers.paging``). Any
        other ``after`` is found by walking the list from its start. ``metadata`` filters on labels here (the
        list's ``filter`` grammar for tuning jobs is undocumented)."""
        wanted = page.extra.get("metadata") or {}
        unknown = sorted(k for k in page.extra if k != "metadata")
        if unknown:
            raise InvalidRequest(f"Vertex AI cannot filter tuning jobs by '{unknown[0]}'.", param=unknown[0])
        after = jobs.job_name(page.after) if page.after else None
        keep = (lambda raw: all((raw.get("labels") or {}).get(k) == v for k, v in wanted.items())) if wanted else None
        cursors = paging.Cursors(ctx, "jobs", {"metadata": wanted})

        async def run(start: paging.Resume) -> paging.Walk:
            return await self._walk_jobs(ctx, start, page.limit, keep)

        async def relist() -> paging.Walk:
            try:
                return await run(paging.Resume(None, LIST_PAGE, after) if after else paging.Resume())
            except paging.CursorNotFound:
                raise InvalidRequest(f"'after' names a job that is not in this project's tuning job list: "
                                     f"'{page.after}'.", param="after", code="after_not_found") from None

        walked = await paging.resumed(cursors, page.after, run, relist)
        cursors.served(walked.resume)
        return models.page([jobs.to_job(raw) for raw in walked.items], walked.more)

    async def _walk_jobs(self, ctx: RequestContext, start: paging.Resume, limit: int,
                         keep: Callable[[JSON], bool] | None) -> paging.Walk:
        region, parent = self.parent(ctx)
        url = f"{self.api_root(ctx, region)}/{parent}/tuningJobs"

        async def fetch(token: str | None, size: int, _bound: tuple[tuple[str, str], ...]) -> tuple[list[JSON], str | None]:
            params = [("pageSize", str(size))] + ([("pageToken", token)] if token else [])
            raw = await self.call(ctx, "GET", url, params=params, idempotent=True) or {}
            return list(raw.get("tuningJobs") or []), raw.get("nextPageToken") or None

        return await paging.walk(fetch, start, limit, max_size=LIST_PAGE, id_of=lambda j: j.get("name"), keep=keep)

    async def list_checkpoints(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        """``tunedModel.checkpoints`` (present when the job kept intermediate checkpoints), paged locally."""
        items = jobs.checkpoints(await self._read(ctx, job_id))
        return page_in_memory(items, page, "checkpoint", with_ids=True)

    async def list_events(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        """Derived from the job itself (Vertex keeps no event log for tuning jobs): see ``jobs.events``."""
        return page_in_memory(jobs.events(await self._read(ctx, job_id)), page, "event")

    # ---- files ---------------------------------------------------------------------------------

    def bucket(self, ctx: RequestContext) -> str:
        return str(ctx.require_option("vertex_storage_bucket_name"))

    def prefix(self, ctx: RequestContext) -> str:
        return gcs.storage_prefix(ctx.option("vertex_storage_prefix"))

    async def upload_file(self, ctx: RequestContext, upload: IncomingFile) -> JSON:
        bucket = self.bucket(ctx)
        name = new_object_name(self.prefix(ctx), upload.filename)
        chunks = upload.chunks
        content_type = upload.content_type or "application/octet-stream"
        if upload.purpose in CONVERTED_PURPOSES:
            chunks = await _converted(chunks)
            content_type = "application/jsonl"
        obj = await self.storage.upload(ctx, bucket, name, content_type,
                                        {"purpose": upload.purpose, "filename": upload.filename}, chunks)
        return to_file(obj)

    async def list_files(self, ctx: RequestContext, page: Page) -> JSON:
        return await self.storage.list(ctx, self.bucket(ctx), self.prefix(ctx), page)

    async def _object(self, ctx: RequestContext, file_id: str) -> tuple[str, str]:
        """(bucket, object name) of a file id, held to what the request may reach. A file id wraps any
        ``gs://bucket/object``, so it could name anything the credential can read. With a stored connection's
        credential a key reaches by id only the objects in the request's own bucket and prefix (what
        ``GET /v1/files`` lists: the connection's unowned objects) and the objects the registry records as the
        key's own (the gateway already held a recorded id to the ownership rule); anything else is the same
        404 as a missing file, and nothing is sent (docs/security.md, rule 4). A caller's own credential, or an
        open gateway, reaches what Cloud Storage lets it."""
        bucket, name = object_from_id(file_id)
        if ctx.key is None or ctx.own_key or ctx.connection is None:
            return bucket, name
        if bucket == ctx.option("vertex_storage_bucket_name") and name.startswith(self.prefix(ctx)):
            return bucket, name
        recorded = await ctx.store.placement("file", file_id) if ctx.store is not None else None
        if recorded is None or recorded.key_id != ctx.key.id:
            raise NotFound(f"No such file: '{file_id}'.")
        return bucket, name

    async def retrieve_file(self, ctx: RequestContext, file_id: str) -> JSON:
        return to_file(await self.storage.get(ctx, *await self._object(ctx, file_id)))

    async def delete_file(self, ctx: RequestContext, file_id: str) -> JSON:
        await self.storage.delete(ctx, *await self._object(ctx, file_id))
        return models.deleted(file_id)

    async def file_content(self, ctx: RequestContext, file_id: str) -> Download:
        bucket, name = await self._object(ctx, file_id)
        try:
            return await self.download(ctx, object_url(bucket, name), headers=await self.auth(ctx),
                                       params=[("alt", "media")])
        except UpstreamError as exc:
            self.refused(ctx, exc.status)
            raise


async def _converted(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """OpenAI JSONL → Gemini JSONL, streamed. The first example decides the target: preference (DPO) lines go to
    ``vertex-gemini-preference``, everything else to ``vertex-gemini``."""
    from tunegate.data.converters import ConversionError, aconvert

    head = bytearray()
    source = chunks.__aiter__()
    exhausted = False
    while not _first_line(head):
        try:
            head += await source.__anext__()
        except StopAsyncIteration:
            exhausted = True
            break
    target = "vertex-gemini-preference" if _is_preference(_first_line(head) or bytes(head)) else "vertex-gemini"

    async def replay() -> AsyncIterator[bytes]:
        if head:
            yield bytes(head)
        if not exhausted:
            async for chunk in source:
                yield chunk

    async def guarded() -> AsyncIterator[bytes]:
        try:
            async for line in aconvert(replay(), target):
                yield line
        except ConversionError as exc:
            raise InvalidRequest(f"The training file cannot be converted to Vertex AI's Gemini format "
                                 f"({target}): line {exc.line}: {exc.message}", param="file",
                                 code="invalid_training_file") from None

    return guarded()


def _first_line(buffer: bytearray) -> bytes | None:
    """The first non-blank complete line in the buffer, if it holds one."""
    start = 0
    while (end := buffer.find(b"\n", start)) >= 0:
        line = bytes(buffer[start:end])
        if line.strip():
            return line
        start = end + 1
    return None


def _is_preference(line: bytes) -> bool:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "preferred_output" in obj and "input" in obj

