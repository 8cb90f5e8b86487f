"""Azure OpenAI: the GA data plane (``{endpoint}/openai/...?api-version=2024-10-21``) and the newer
OpenAI-compatible ``{endpoint}/openai/v1`` surface. See MAPPING.md."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunegate.errors import InvalidRequest
from tunegate.providers.base import JSON
from tunegate.providers.openai_compatible import OpenAICompatible
from tunegate.providers.rules import DatasetRules

if TYPE_CHECKING:
    from tunegate.context import RequestContext

GA_API_VERSION = "2024-10-21"
V1_VERSIONS = ("v1", "preview")  # api-version values that select the /openai/v1 surface

# Azure's FineTuningState → OpenAI's job status. `created` is "exposed only for compatibility";
# `notRunning` appears on jobs waiting for capacity.
JOB_STATUS = {
    "created": "validating_files",
    "validating_files": "validating_files",
    "pending": "queued",
    "notRunning": "queued",
    "queued": "queued",
    "paused": "queued",
    "pausing": "running",
    "resuming": "running",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
    "canceled": "cancelled",
    "cancelling": "running",
}
# Azure's FileState → OpenAI's (deprecated but required) file status.
FILE_STATUS = {"uploaded": "uploaded", "pending": "uploaded", "running": "uploaded", "processed": "processed",
               "error": "error", "deleting": "processed", "deleted": "processed"}
# What the GA create (FineTuningJobCreation) accepts.
GA_CREATE_FIELDS = {"model", "training_file", "validation_file", "hyperparameters", "suffix", "seed"}


class AzureOpenAI(OpenAICompatible):
    name = "azure-openai"
    # Azure's fine-tuning how-to (MicrosoftDocs/azure-ai-docs): "Fine-tuning jobs will not proceed without at
    # least 10 training examples"; training and validation files "must be less than 512 MB". The epoch
    # range is not in the 2024-10-21 spec (FineTuningHyperParameters.n_epochs has no bounds): not checked.
    dataset_rules = DatasetRules(min_training_examples=10, max_file_bytes=512 * 1024**2)
    suffix_max_length = 64
    # Azure ids are lower-case hex (`ftjob-0f41…`): an upper-case spelling is refused, not looked up.
    id_grammar = r"[a-z0-9][a-z0-9_-]{0,127}"
    # Both pick the host the resource key goes to: a request may not set them over a stored connection.
    host_options = ("azure_endpoint", "azure_resource_name")
    url_options = ("azure_endpoint",)  # a URL a client chose: held to the custom-host rule
    # Azure resource names: letters, digits and hyphens (they become `{name}.openai.azure.com`).
    option_patterns = {"azure_resource_name": r"[A-Za-z0-9][A-Za-z0-9-]{0,62}",
                       "azure_api_version": r"[A-Za-z0-9][A-Za-z0-9.-]{0,31}"}

    def api_version(self, ctx: RequestContext) -> str:
        return str(ctx.option("azure_api_version", GA_API_VERSION))

    def is_v1(self, ctx: RequestContext) -> bool:
        return self.api_version(ctx) in V1_VERSIONS

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
        if token := ctx.option("azure_ad_token"):  # Entra ID token instead of a resource key
            return {"Authorization": f"Bearer {token}"}
        key = ctx.credentials.get(self.credential_field)
        return {"api-key": key} if key else {}

    def to_create_body(self, ctx: RequestContext, body: JSON) -> JSON:
        if self.is_v1(ctx):
            return body
        body = dict(body)
        method = body.pop("method", None)
        if method is not None:
            # GA has no `method`: a supervised method's hyperparameters become the top-level ones.
            if not isinstance(method, dict) or method.get("type") != "supervised":
                raise InvalidRequest("Azure OpenAI api-version 2024-10-21 supports only supervised fine-tuning; "
                                     "use x-portkey-azure-api-version: v1 for other methods.", param="method")
            hp = (method.get("supervised") or {}).get("hyperparameters")
            if hp:
                body["hyperparameters"] = hp
        unknown = sorted(k for k, v in body.items() if k not in GA_CREATE_FIELDS and v is not None)
        if unknown:
            raise InvalidRequest(f"Azure OpenAI api-version {self.api_version(ctx)} does not accept "
                                 f"'{unknown[0]}' on job creation.", param=unknown[0], code="unsupported_parameter")
        return body

    def to_job(self, ctx: RequestContext, raw: JSON) -> JSON:
        job: dict[str, Any] = dict(raw)
        native = job.get("status", "")
        job["status"] = JOB_STATUS.get(native, "running" if native else "queued")
        if native != job["status"]:
            job["provider_status"] = native
        job["object"] = "fine_tuning.job"
        job.setdefault("organization_id", job.pop("organisation_id", ""))
        for field in ("fine_tuned_model", "finished_at", "trained_tokens", "validation_file", "error",
                      "estimated_finish"):
            job.setdefault(field, None)
        job.setdefault("result_files", [])
        job.setdefault("seed", 0)
        hp = job.get("hyperparameters") or {}
        job["hyperparameters"] = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto", **hp}
        if job.get("error") and not job["error"].get("message"):
            job["error"] = None  # Azure sends an empty error object on healthy jobs
        return job

    def to_file(self, ctx: RequestContext, raw: JSON) -> JSON:
        f = dict(raw)
        f["object"] = "file"
        f["status"] = FILE_STATUS.get(f.get("status", "processed"), "processed")
        f["bytes"] = f.get("bytes") or 0
        return f

    async def pause_job(self, ctx: RequestContext, job_id: str) -> JSON:
        if not self.is_v1(ctx):
            raise self.unsupported("pausing fine-tuning jobs on api-version 2024-10-21 (use the v1 surface)")
        return await super().pause_job(ctx, job_id)

    async def resume_job(self, ctx: RequestContext, job_id: str) -> JSON:
        if not self.is_v1(ctx):
            raise self.unsupported("resuming fine-tuning jobs on api-version 2024-10-21 (use the v1 surface)")
        return await super().resume_job(ctx, job_id)

    async def passthrough(self, ctx: RequestContext, method: str, path: str,
                          query: list[tuple[str, str]], body: JSON | None) -> JSON:
        if not self.is_v1(ctx):
            raise self.unsupported(f"{method} /v1{path} on api-version 2024-10-21")
        return await super().passthrough(ctx, method, path, query, body)
