"""Fireworks AI chat completions and models.

Chat is Fireworks's OpenAI-compatible inference API, ``POST https://api.fireworks.ai/inference/v1/chat/
completions``, with ``model`` = the model's resource name ``accounts/{account}/models/{model}`` (a tuned
model's is the job's ``fine_tuned_model``). Request: fireworks-ai (fw-ai-external/python-sdk@271c181)
``types/chat/completion_create_params.py``; stream chunks ``types/chat/chat_completion_chunk.py``
(``usage`` on a chunk, no ``stream_options`` in the request).

A tuned model (a LoRA addon) answers only once it is deployed: loaded onto a running deployment of its
base model (``POST /v1/accounts/{a}/deployedModels``, the SDK's ``lora.load``; python-sdk@1c69ee2
``resources/lora.py``, ``types/deployed_model*.py``), or given a dedicated deployment. Inference answers
404 for an undeployed model; the gateway then asks the control plane (``GET /v1/accounts/{a}/models/{m}``,
``types/model.py``) whether the model exists, and a model that does is a 400 that says how to deploy it.
Models: ``GET /v1/accounts/{a}/models`` (``models``, ``nextPageToken``), ``GET|DELETE …/models/{m}``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from tunegate.errors import InvalidRequest, NotFound, UpstreamError
from tunegate.providers.base import JSON
from tunegate.providers.compat_chat import COMMON, CompatChat
from tunegate.providers.fireworks import wire
from tunegate.serving import shapes

if TYPE_CHECKING:
    from tunegate.context import RequestContext

MODEL = re.compile(r"accounts/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})/models/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})")
DEPLOYMENT = re.compile(r"(?:accounts/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})/deployments/)?([A-Za-z0-9][A-Za-z0-9_.-]{0,127})")
MAX_TOP_LOGPROBS = 5  # completion_create_params.top_logprobs: "Required range: 0 <= x <= 5"
MODEL_PAGES = 10  # at most 10 pages of 200 models per listing
# DeployedModelRef.state / DeployedModel.state → the model's deployment_status.
DEPLOY_STATES = {"DEPLOYED": "deployed", "DEPLOYING": "deploying", "UPDATING": "deploying",
                 "UNDEPLOYING": "undeploying"}


class FireworksChat(CompatChat):
    chat_accepts = COMMON | {"seed", "logit_bias", "logprobs", "top_logprobs", "parallel_tool_calls", "prediction",
                             "metadata", "reasoning_effort", "user", "function_call", "functions"}
    chat_extras = frozenset({"top_k", "min_p", "typical_p", "repetition_penalty", "mirostat_lr", "mirostat_target",
                             "context_length_exceeded_behavior", "prompt_truncate_len", "echo", "echo_last",
                             "ignore_eos", "raw_output", "perf_metrics_in_response", "return_token_ids",
                             "speculation", "prompt_cache_isolation_key", "prompt_cache_max_len"})
    chat_refused: ClassVar[dict[str, str]] = {
        "store": "Fireworks does not store completions.", "service_tier": "Fireworks has no service tiers.",
        "modalities": "Fireworks's chat answers text only.", "audio": "Fireworks's chat answers no audio.",
        "web_search_options": "Fireworks's chat has no web search.", "verbosity": "Fireworks has no such setting.",
        "safety_identifier": "Fireworks has no such field.",
        "prompt_cache_key": "Fireworks's equivalent is its own 'prompt_cache_isolation_key'."}

    def account_id(self, ctx: RequestContext) -> str:
        return wire.account(ctx.require_option("fireworks_account_id"))

    # ---- where things are ------------------------------------------------------------------------

    def inference_url(self, ctx: RequestContext) -> str:
        """``https://api.fireworks.ai/v1`` (the control plane, and what a custom host names) →
        ``https://api.fireworks.ai/inference/v1``: the same host, the inference prefix."""
        base = self.base_url(ctx)
        return (base[:-3] if base.endswith("/v1") else base) + "/inference/v1"

    def chat_url(self, ctx: RequestContext, body: JSON) -> str:
        return self.inference_url(ctx) + "/chat/completions"

    def resource(self, ctx: RequestContext, model: str) -> tuple[str, str]:
        """(account, model id) of a model name: a resource name, or an id in the caller's account."""
        if found := MODEL.fullmatch(model):
            return found.group(1), found.group(2)
        if "/" not in model and wire.PUBLIC_ID_RE.match(model):
            return self.account_id(ctx), model
        raise NotFound(f"'{model}' is not a Fireworks model name (accounts/{{account}}/models/{{model}}).",
                       param="model", code="model_not_found")

    async def owned_resource(self, ctx: RequestContext, model: str, param: str | None = None) -> tuple[str, str]:
        """``resource``, with the ownership rule held on the canonical name. The gateway checked the
        spelling the client sent; the registry knows tuned models by their full name (a job's
        ``fine_tuned_model``), so a bare id, which names ``accounts/{account}/models/{id}`` upstream, is
        checked again under that name, and so is its lowercase spelling (``accounts/TEAM/models/ALICE-FT``),
        before anything is sent (docs/security.md, rule 3)."""
        account, model_id = self.resource(ctx, model)
        await self.check_spellings(ctx, "model", "models", account, model_id, param, shown=model)
        return account, model_id

    async def check_spellings(self, ctx: RequestContext, kind: str, collection: str, account: str, object_id: str,
                              param: str | None, *, shown: str) -> None:
        """The ownership rule on every id the registry may know this object by (``wire.registry_ids``):
        another key's object is a 404 under any of them (``shown``: the client's spelling)."""
        own = ctx.option("fireworks_account_id")  # a full name needs no account of the request's own
        spellings = wire.registry_ids(account, collection, object_id, str(own) if own is not None else None)
        await ctx.check_named_all([(kind, spelling, param) for spelling in spellings], shown=shown)

    def model_url(self, ctx: RequestContext, model: str) -> str:
        account, model_id = self.resource(ctx, model)
        return f"{self.base_url(ctx)}/accounts/{account}/models/{model_id}"

    # ---- chat ------------------------------------------------------------------------------------

    def chat_model(self, ctx: RequestContext, body: JSON) -> str:
        account, model_id = self.resource(ctx, str(body["model"]))
        return f"accounts/{account}/models/{model_id}"

    def adjust_chat_body(self, ctx: RequestContext, native: JSON, body: JSON) -> JSON:
        if (top := native.get("top_logprobs")) is not None and top > MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"Fireworks returns at most {MAX_TOP_LOGPROBS} top_logprobs.", param="top_logprobs",
                                 code="invalid_value")
        return native

    async def chat(self, ctx: RequestContext, body: JSON) -> JSON:
        await self.owned_resource(ctx, str(body["model"]), "model")
        try:
            return await super().chat(ctx, body)
        except UpstreamError as exc:
            raise await self._not_deployed(ctx, body, exc) from None

    async def chat_stream(self, ctx: RequestContext, body: JSON) -> AsyncIterator[JSON]:
        await self.owned_resource(ctx, str(body["model"]), "model")
        try:
            return await super().chat_stream(ctx, body)
        except UpstreamError as exc:
            raise await self._not_deployed(ctx, body, exc) from None

    async def _not_deployed(self, ctx: RequestContext, body: JSON, exc: UpstreamError) -> UpstreamError | InvalidRequest:
        """Inference's 404 means "not found, inaccessible, and/or not deployed": the control plane tells
        which. A model that exists is a 400 saying how to deploy it (and what Fireworks answered)."""
        if exc.status != 404:
            return exc
        model = self.chat_model(ctx, body)
        try:
            raw = await self._control(ctx, "GET", self.model_url(ctx, model))
        except UpstreamError:
            return exc  # not in the control plane either (or not readable with this key): the 404 stands
        refs = [r.get("deployment") for r in raw.get("deployedModelRefs") or [] if isinstance(r, dict)]
        where = f" It is loaded on {', '.join(str(r) for r in refs)}, not yet serving." if refs else ""
        return InvalidRequest(
            f"The Fireworks model '{model}' exists but is not deployed, so it cannot answer yet.{where} Deploy it: "
            f"POST /v1/models/{model}/deploy with {{\"deployment\": \"<a running deployment of its base model>\"}} "
            "loads it there as a LoRA addon, or create a dedicated deployment for it in Fireworks (firectl create "
            f"deployment {model}). Fireworks answered: {exc.message}", param="model", code="model_not_deployed")

    # ---- models ----------------------------------------------------------------------------------

    async def _control(self, ctx: RequestContext, method: str, url: str, *, params: list[tuple[str, str]] | None = None,
                       json: Any = None, idempotent: bool | None = None) -> Any:
        response = await ctx.upstream.request(method, url, ctx.policy, headers=self.auth_headers(ctx), params=params,
                                              json=json, idempotent=method in ("GET", "DELETE")
                                              if idempotent is None else idempotent)
        ctx.upstream_status = response.status
        return self.check(ctx, response) or {}

    def to_model(self, ctx: RequestContext, raw: JSON) -> JSON:
        name = str(raw.get("name") or "")
        found = MODEL.fullmatch(name)
        account = found.group(1) if found else self.account_id(ctx)
        refs = [{"deployment": r.get("deployment"), "state": r.get("state"), "default": bool(r.get("default"))}
                for r in raw.get("deployedModelRefs") or [] if isinstance(r, dict)]
        states = [DEPLOY_STATES.get(str(r["state"]), "not_deployed") for r in refs]
        status = next((s for s in ("deployed", "deploying", "undeploying") if s in states), "not_deployed")
        return shapes.model_object(name, account, wire.unix(raw.get("createTime")), kind=raw.get("kind"),
                                   state=raw.get("state"), display_name=raw.get("displayName"),
                                   base_model=(raw.get("peftDetails") or {}).get("baseModel"),
                                   fine_tuning_job=raw.get("fineTuningJob"), deployments=refs,
                                   deployment_status=status)

    async def list_models(self, ctx: RequestContext) -> JSON:
        url = f"{self.base_url(ctx)}/accounts/{self.account_id(ctx)}/models"
        items: list[JSON] = []
        token: str | None = None
        for _ in range(MODEL_PAGES):
            raw = await self._control(ctx, "GET", url, params=[("pageSize", "200")] + (
                [("pageToken", token)] if token else []))
            items += [self.to_model(ctx, m) for m in raw.get("models") or [] if isinstance(m, dict)]
            if not (token := raw.get("nextPageToken")):
                break
        return shapes.model_list(items)

    async def retrieve_model(self, ctx: RequestContext, model: str) -> JSON:
        await self.owned_resource(ctx, model)
        return self.to_model(ctx, await self._control(ctx, "GET", self.model_url(ctx, model)))

    async def delete_model(self, ctx: RequestContext, model: str) -> JSON:
        await self.owned_resource(ctx, model)
        await self._control(ctx, "DELETE", self.model_url(ctx, model))
        return {"id": model, "object": "model", "deleted": True}

    async def deploy_model(self, ctx: RequestContext, model: str, body: JSON) -> JSON:
        """Load a tuned model (LoRA addon) onto a running deployment of its base model: the SDK's
        ``lora.load`` (``POST /v1/accounts/{a}/deployedModels`` {model, deployment, default})."""
        account, model_id = await self.owned_resource(ctx, model)
        target = (body or {}).get("deployment")
        found = DEPLOYMENT.fullmatch(target) if isinstance(target, str) else None
        if found is None:
            raise InvalidRequest(
                "Fireworks deploys a tuned model onto a running deployment of its base model: send {\"deployment\": "
                "\"accounts/{account}/deployments/{id}\"} (or the deployment's id). A dedicated deployment (its own "
                "GPUs, billed while up) is created in Fireworks itself (firectl create deployment "
                f"accounts/{account}/models/{model_id}).", param="deployment", code="missing_required_parameter")
        deployment = f"accounts/{found.group(1) or self.account_id(ctx)}/deployments/{found.group(2)}"
        name = f"accounts/{account}/models/{model_id}"
        raw = await self._control(ctx, "POST", f"{self.base_url(ctx)}/accounts/{self.account_id(ctx)}/deployedModels",
                                  json={"model": name, "deployment": deployment,
                                        "default": bool((body or {}).get("default", True))}, idempotent=False)
        state = str(raw.get("state") or "DEPLOYING")
        return {**await self.retrieve_model(ctx, name),
                "deployment_status": DEPLOY_STATES.get(state, "deploying"),
                "deployed_model": {"name": raw.get("name"), "deployment": raw.get("deployment") or deployment,
                                   "state": state, "status": raw.get("status")}}
