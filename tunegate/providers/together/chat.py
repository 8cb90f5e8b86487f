"""Together AI chat completions and models, on its OpenAI-compatible inference API
(``POST {base}/chat/completions``, ``GET {base}/models``; base ``https://api.together.ai/v1``, the same
service as ``api.together.xyz``). Request and answer shapes: ``../shared/specs/together-openapi.yaml``
(togethercomputer/openapi@090263a) ChatCompletionRequest, ChatCompletionResponse, ChatCompletionChunk,
FinishReason, ModelInfoList. A tuned model is called by its ``model_output_name`` (the job's
``fine_tuned_model``); see MAPPING.md "Chat and models" for what needs a dedicated endpoint first."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from tunegate.errors import NotFound
from tunegate.providers.base import JSON
from tunegate.providers.compat_chat import COMMON, CompatChat
from tunegate.serving import shapes

if TYPE_CHECKING:
    from tunegate.context import RequestContext


class TogetherChat(CompatChat):
    # ChatCompletionRequest's properties that are OpenAI's too.
    chat_accepts = COMMON | {"seed", "logit_bias", "function_call", "reasoning_effort"}
    # Together's own (ChatCompletionRequest), sent as the client gave them.
    chat_extras = frozenset({"top_k", "repetition_penalty", "min_p", "context_length_exceeded_behavior",
                             "safety_model", "chat_template_kwargs", "reasoning", "compliance", "echo"})
    chat_refused: ClassVar[dict[str, str]] = {
        "logprobs": "Together's 'logprobs' is an integer with answers in its own shape (LogprobsPart), not "
                    "OpenAI's per-token objects.",
        "top_logprobs": "Together has no equivalent of OpenAI's per-token top_logprobs.",
        "parallel_tool_calls": "Together's chat request has no such switch.",
        "functions": "Together takes 'tools' (and the old 'function_call'), not 'functions'.",
        "store": "Together does not store completions.", "metadata": "Together's chat request has no metadata.",
        "service_tier": "Together has no service tiers.", "user": "Together's chat request has no 'user'.",
        "modalities": "Together's chat completions are text only.", "audio": "Together's chat answers no audio.",
        "prediction": "Together has no predicted outputs.", "web_search_options": "Together has no web search.",
        "verbosity": "Together has no such setting.", "safety_identifier": "Together has no such field.",
        "prompt_cache_key": "Together has no prompt cache key."}
    finish_reasons = {"eos": "stop"}  # FinishReason: stop, eos, length, tool_calls, function_call

    def adjust_chat_body(self, ctx: RequestContext, native: JSON, body: JSON) -> JSON:
        if isinstance(native.get("stop"), str):
            native["stop"] = [native["stop"]]  # Together's `stop` is an array only
        return native

    def to_completion(self, ctx: RequestContext, raw: JSON, body: JSON) -> JSON:
        out = super().to_completion(ctx, raw, body)
        if not out.get("prompt"):
            out.pop("prompt", None)  # `prompt` only means something with `echo`
        return out

    # ---- models ----------------------------------------------------------------------------------

    def to_model(self, ctx: RequestContext, raw: JSON) -> JSON:
        extra = {k: raw[k] for k in ("type", "display_name", "context_length", "link", "license") if k in raw}
        return shapes.model_object(str(raw.get("id")), str(raw.get("organization") or "together"),
                                   raw.get("created"), **extra)

    async def retrieve_model(self, ctx: RequestContext, model: str) -> JSON:
        # Together has no GET /models/{id}: the model is looked up in the list (ModelInfoList, a bare array).
        for item in (await self.list_models(ctx))["data"]:
            if item.get("id") == model:
                return item
        raise NotFound(f"Together lists no model '{model}'.", param="model", code="model_not_found")

    async def delete_model(self, ctx: RequestContext, model: str) -> JSON:
        raise self.unsupported("deleting models (its API has GET and POST /models only; a tuned model is removed in "
                               "Together's console)")
