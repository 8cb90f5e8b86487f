"""``local`` chat and models: the tuned models of local jobs (base model + the job's LoRA adapter) and
plain base models, served by the local model server (``tunegate.serving.local``: the gateway's own
transformers server, or vLLM) over OpenAI's chat wire (the :class:`OpenAIChat` mixin).

* ``ft:<base>:<suffix>:<job id>`` is the job's adapter (``<output_dir>/adapter``, see
  ``localjobs.scheduler._finalize``) over the job's base model; ``…:<job id>:ckpt-step-N`` one of its kept
  checkpoints. Only the job's key sees it: another key's tuned model is a 404 here as in the registry.
* Any other name is a base model, under the same rule as training (``localjobs.limits.model_reference``:
  a Hugging Face id in the local cache, or a directory under ``local_model_roots``).
* The request goes to the server the manager found or started, never to a host a client named
  (``x-portkey-custom-host`` is not used for ``local``: the server's token must not follow it), with the
  server's own token (a client's key is never forwarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunegate.config import Settings
from tunegate.errors import APIError, InvalidRequest, NotFound, UpstreamUnreachable
from tunegate.localjobs.db import JobDB, Row
from tunegate.localjobs.limits import model_reference, model_shape_ok
from tunegate.providers.base import JSON
from tunegate.providers.openai_chat import OpenAIChat
from tunegate.serving import shapes
from tunegate.serving.local.manager import Endpoint, LocalServers, servers_for
from tunegate.serving.local.params import check_n, check_supported
from tunegate.upstream import UpstreamResponse

if TYPE_CHECKING:
    from tunegate.context import RequestContext

CHECKPOINT = re.compile(r"ckpt-step-(\d+)")
MAX_LISTED_JOBS = 1000
MAX_SCANNED_DIRS = 2000


@dataclass(frozen=True)
class Served:
    base: str  # what the server loads: a directory or a Hugging Face id
    adapter: str | None = None  # the adapter's directory, for a tuned model


def _settings(ctx: RequestContext) -> Settings:
    return ctx.settings or Settings()


def _not_found(model: str) -> NotFound:
    return NotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model",
                    code="model_not_found")


class LocalChat(OpenAIChat):
    def canonical_id(self, kind: str, raw: str) -> bool:
        # A local base model may be a directory (an absolute path, as local training accepts it); whether
        # it lies under a model root is decided later, in the same words whatever is at that path.
        if kind == "model" and raw.startswith("/"):
            return model_shape_ok(raw) and "/../" not in raw + "/" and "/./" not in raw + "/"
        return super().canonical_id(kind, raw)

    # ---- which model, served from where ----------------------------------------------------------

    async def _job_row(self, ctx: RequestContext, name: str) -> tuple[Row, int | None]:
        """The succeeded job behind a tuned model name (and the checkpoint step it names, if any)."""
        parts = name.split(":")
        step = None
        if len(parts) >= 5 and (m := CHECKPOINT.fullmatch(parts[-1])):
            step, parts = int(m.group(1)), parts[:-1]
        job_id = parts[-1] if len(parts) >= 4 else ""
        store, _ = ctx.require_store()
        row = await JobDB(store.engine).get(job_id) if job_id.startswith("ftjob-") else None
        if (row is None or row["status"] != "succeeded" or not row["fine_tuned_model"]
                or row["fine_tuned_model"] != ":".join(parts)
                or (ctx.key is not None and row["key_id"] not in (None, ctx.key.id))):
            raise _not_found(name)
        return row, step

    async def _adapter_dir(self, ctx: RequestContext, row: Row, step: int | None, name: str) -> str:
        if step is None:
            path = os.path.join(row["output_dir"] or "", "adapter")
        else:
            store, _ = ctx.require_store()
            rows, _ = await JobDB(store.engine).list_checkpoints(row["id"], limit=10_000, after_step=None)
            path = next((r["path"] for r in rows if r["step"] == step), "")
        real = await asyncio.to_thread(_adapter_in, Path(_settings(ctx).data_dir), path)
        if real is None:
            raise _not_found(name)  # deleted, or a checkpoint that retention removed
        return real

    async def _served(self, ctx: RequestContext, model: str) -> Served:
        roots = _settings(ctx).local_model_roots
        if model.startswith("ft:"):
            row, step = await self._job_row(ctx, model)
            base = model_reference(row["model"], roots)
            if base is None:
                raise _not_found(model)
            return Served(base, await self._adapter_dir(ctx, row, step, model))
        from tunegate.localjobs.scheduler import model_available

        base = model_reference(model, roots)
        if base is None or not await asyncio.to_thread(model_available, base):
            raise _not_found(model)
        return Served(base)

    def _servers(self, ctx: RequestContext) -> LocalServers:
        return servers_for(_settings(ctx))

    async def _endpoint(self, ctx: RequestContext, body: JSON, served: Served) -> Endpoint:
        servers = self._servers(ctx)
        endpoint = await servers.endpoint(ctx.upstream, served.base)
        # The server's address is the gateway's own (or the operator's url), never a client's choice.
        ctx.policy.trusted_hosts = ctx.policy.trusted_hosts | {endpoint.host}
        if endpoint.engine == "vllm" and endpoint.model and served.base != endpoint.model:
            raise InvalidRequest(f"This gateway's vLLM server serves the base model '{endpoint.model}'; "
                                 f"'{body['model']}' needs another one (set local_serving.vllm_model, or use the "
                                 "transformers engine).", param="model", code="model_not_served")
        if served.adapter is not None:
            await servers.load_adapter(ctx.upstream, endpoint, body["model"], served.adapter, served.base)
        return endpoint

    def _wire(self, body: JSON, served: Served, endpoint: Endpoint) -> JSON:
        model = body["model"] if served.adapter is not None else (endpoint.model or served.base)
        return {**body, "model": model}

    def check(self, ctx: RequestContext, response: UpstreamResponse) -> Any:
        """The model server's 4xx answers are OpenAI errors about the request (a template without tools,
        a prompt too long): passed on with their param; anything else is mapped as for any provider."""
        if 400 <= response.status < 500 and response.status not in (401, 403):
            with contextlib.suppress(ValueError):
                err = response.json().get("error")
                if isinstance(err, dict) and isinstance(err.get("message"), str):
                    headers = {"Retry-After": "1"} if response.status == 429 else {}
                    raise APIError(err["message"][:2000], status=response.status, param=_str(err.get("param")),
                                   code=_str(err.get("code")), type=_str(err.get("type")), headers=headers)
        return super().check(ctx, response)

    async def _call(self, ctx: RequestContext, body: JSON, stream: bool) -> Any:
        check_n(body, _settings(ctx).local_chat_max_n)  # every engine, before starting anything
        if self._servers(ctx).conf.engine == "transformers":
            check_supported(body)  # before starting anything: a clear 400 naming the parameter
        served = await self._served(ctx, body["model"])
        servers = self._servers(ctx)
        for attempt in (1, 2):
            endpoint = await self._endpoint(ctx, body, served)
            url = endpoint.url + "/chat/completions"
            try:
                if stream:
                    resp = await self.open_stream(ctx, "POST", url, headers=endpoint.headers(),
                                                  json=self._wire(body, served, endpoint))
                    return self._chunks(ctx, resp, body)
                response = await ctx.upstream.request("POST", url, ctx.policy, headers=endpoint.headers(),
                                                      json=self._wire(body, served, endpoint), idempotent=True)
                ctx.upstream_status = response.status
                return self.to_completion(ctx, self.check(ctx, response), body)
            except UpstreamUnreachable:
                # Nothing was generated: the server died (or was restarted elsewhere). Find or start it again.
                servers.forget(endpoint)
                servers.drop_known(endpoint)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- OpenAIChat hooks and chat ------------------------------------------------------------------

    def to_completion(self, ctx: RequestContext, raw: JSON, body: JSON) -> JSON:
        return {**raw, "model": body["model"]}  # the name the client used, not the server's (a path, a lora)

    def to_chunk(self, ctx: RequestContext, raw: JSON, body: JSON) -> JSON:
        return {**raw, "model": body["model"]}

    async def chat(self, ctx: RequestContext, body: JSON) -> JSON:
        answer: JSON = await self._call(ctx, body, stream=False)
        return answer

    async def chat_stream(self, ctx: RequestContext, body: JSON) -> AsyncIterator[JSON]:
        chunks: AsyncIterator[JSON] = await self._call(ctx, body, stream=True)
        return chunks

    # ---- models ----------------------------------------------------------------------------------

    def _tuned_object(self, row: Row, name: str) -> JSON:
        return shapes.model_object(name, "local", row["finished_at"] or row["created_at"], parent=row["model"])

    async def list_models(self, ctx: RequestContext) -> JSON:
        settings = _settings(ctx)
        items = [shapes.model_object(ref, "local", created) for ref, created in
                 await asyncio.to_thread(base_models, settings.local_model_roots, Path(settings.data_dir))]
        store, _ = ctx.require_store()
        db = JobDB(store.engine)
        after = None
        for _ in range(MAX_LISTED_JOBS // 100):
            rows, more = await db.list_jobs(key_id=ctx.key_id, limit=100, after=after, metadata=None)
            for row in rows:
                if row["status"] == "succeeded" and row["fine_tuned_model"] and await asyncio.to_thread(
                        os.path.isfile, os.path.join(row["output_dir"] or "", "adapter", "adapter_config.json")):
                    items.append(self._tuned_object(row, row["fine_tuned_model"]))
            if not more or not rows:
                break
            after = rows[-1]["id"]
        return shapes.model_list(items)

    async def retrieve_model(self, ctx: RequestContext, model: str) -> JSON:
        served = await self._served(ctx, model)
        if served.adapter is None:
            return shapes.model_object(model, "local")
        row, _ = await self._job_row(ctx, model)
        return self._tuned_object(row, model)

    async def delete_model(self, ctx: RequestContext, model: str) -> JSON:
        if not model.startswith("ft:"):
            raise InvalidRequest(f"'{model}' is a base model; only tuned models ('ft:…') can be deleted.",
                                 param="model", code="invalid_model")
        row, step = await self._job_row(ctx, model)
        if step is not None:
            raise InvalidRequest("A checkpoint is deleted with its job's retention, not on its own.", param="model",
                                 code="invalid_model")
        path = await self._adapter_dir(ctx, row, None, model)
        await self._servers(ctx).unload_adapter(ctx.upstream, model)
        await asyncio.to_thread(shutil.rmtree, path, True)
        store, _ = ctx.require_store()
        await JobDB(store.engine).add_events(row["id"], [{"message": f"Fine-tuned model {model} deleted",
                                                          "data": {"fine_tuned_model_deleted": True}}])
        return {"id": model, "object": "model", "deleted": True}


def _str(value: Any) -> str | None:
    return str(value)[:64] if value is not None else None


def _adapter_in(data_dir: Path, path: str) -> str | None:
    """The adapter directory's real path if it is one and lies in the data directory (whatever a row
    says, nothing else on the host is served)."""
    top = os.path.realpath(data_dir)
    real = os.path.realpath(path) if path else ""
    if real.startswith(top + os.sep) and os.path.isfile(os.path.join(real, "adapter_config.json")):
        return real
    return None


def base_models(roots: list[Path], data_dir: Path) -> list[tuple[str, int]]:
    """(name, mtime) of the base models a chat may name: model directories (``config.json``) up to three
    levels under the operator's model roots, and the models in the local Hugging Face cache."""
    found: dict[str, int] = {}
    skip = os.path.realpath(data_dir)
    seen = 0
    for root in roots:
        top = os.path.realpath(root)
        for here, dirs, files in os.walk(top):
            seen += 1
            depth = here[len(top):].count(os.sep)
            if seen > MAX_SCANNED_DIRS or os.path.realpath(here) == skip:
                dirs[:] = []
                continue
            if "config.json" in files and ("tokenizer_config.json" in files or "tokenizer.json" in files):
                found[here] = int(os.path.getmtime(os.path.join(here, "config.json")))
                dirs[:] = []
            elif depth >= 3:
                dirs[:] = []
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_type == "model" and any(
                    any(f.file_name == "config.json" for f in rev.files) for rev in repo.revisions):
                found.setdefault(repo.repo_id, int(repo.last_modified))
    except Exception:  # no cache, or the hub library missing: only the directories then
        pass
    return sorted(found.items())
