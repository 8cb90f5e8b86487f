"""Mistral AI chat completions and models (``POST {base}/chat/completions``, ``GET {base}/models``,
``GET|DELETE {base}/models/{model_id}``; base ``https://api.mistral.ai/v1``). Shapes:
``../shared/specs/mistral-openapi.yaml`` (mistralai/platform-docs-public@222f4ba): ChatCompletionRequest,
ChatCompletionResponse, CompletionEvent/CompletionChunk, ModelList (BaseModelCard | FTModelCard),
DeleteModelOut. The fine-tuning deprecation does not reach these calls: no Warning header here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from tunegate.errors import InvalidRequest
from tunegate.providers.base import JSON
from tunegate.providers.compat_chat import COMMON, CompatChat
from tunegate.serving import shapes

if TYPE_CHECKING:
    from tunegate.context import RequestContext

MAX_TEMPERATURE = 1.5  # ChatCompletionRequest.temperature: maximum 1.5 (OpenAI's: 2)


class MistralChat(CompatChat):
    # ChatCompletionRequest's properties that are OpenAI's too (`seed` arrives as `random_seed`).
    chat_accepts = COMMON | {"seed", "parallel_tool_calls", "prediction", "metadata", "reasoning_effort",
                             "prompt_cache_key"}
    chat_extras = frozenset({"random_seed", "safe_prompt", "prompt_mode", "guardrails"})
    chat_refused: ClassVar[dict[str, str]] = {
        "logprobs": "Mistral's chat API returns no log probabilities.",
        "top_logprobs": "Mistral's chat API returns no log probabilities.",
        "logit_bias": "Mistral's chat request has no logit_bias.",
        "functions": "Mistral takes 'tools', not 'functions'.", "function_call": "Mistral takes 'tool_choice'.",
        "store": "Mistral does not store completions.", "service_tier": "Mistral has no service tiers.",
        "user": "Mistral's chat request has no 'user'.", "modalities": "Mistral's chat answers text only.",
        "audio": "Mistral's chat answers no audio.", "web_search_options": "Mistral's chat has no web search.",
        "verbosity": "Mistral has no such setting.", "safety_identifier": "Mistral has no such field."}
    # CompletionResponseStreamChoice / ChatCompletionChoice finish_reason: stop, length, model_length,
    # error, tool_calls ("error" is raised, see CompatChat.finish).
    finish_reasons = {"model_length": "length"}

    def adjust_chat_body(self, ctx: RequestContext, native: JSON, body: JSON) -> JSON:
        temperature = native.get("temperature")
        if isinstance(temperature, int | float) and temperature > MAX_TEMPERATURE:
            raise InvalidRequest(f"Mistral's 'temperature' goes from 0 to {MAX_TEMPERATURE}.", param="temperature",
                                 code="invalid_value")
        if "seed" in native:
            seed = native.pop("seed")
            if seed < 0:
                raise InvalidRequest("Mistral's seed ('random_seed') must not be negative.", param="seed",
                                     code="invalid_value")
            native["random_seed"] = seed
        return native

    def to_message(self, message: JSON) -> JSON:
        out = {**message, "content": _text(message.get("content")), "refusal": None}
        if out.get("tool_calls"):
            out["tool_calls"] = [_tool_call(t) for t in out["tool_calls"]]
        out.pop("prefix", None)
        return out

    def to_chunk(self, ctx: RequestContext, raw: JSON, body: JSON) -> JSON:
        chunk = super().to_chunk(ctx, raw, body)
        for choice in chunk["choices"]:
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("content"), list):
                    delta["content"] = _text(delta["content"])
                if delta.get("tool_calls"):
                    delta["tool_calls"] = [_tool_call(t) for t in delta["tool_calls"]]
        return chunk

    # ---- models ----------------------------------------------------------------------------------

    def to_model(self, ctx: RequestContext, raw: JSON) -> JSON:
        extra = {k: raw[k] for k in ("type", "capabilities", "max_context_length", "root", "job", "archived",
                                     "aliases", "deprecation", "name", "description") if k in raw}
        return shapes.model_object(str(raw.get("id")), str(raw.get("owned_by") or "mistralai"), raw.get("created"),
                                   **extra)

    async def delete_model(self, ctx: RequestContext, model: str) -> JSON:
        raw = await super().delete_model(ctx, model)  # DeleteModelOut: id, object, deleted
        return {"id": str(raw.get("id") or model), "object": "model", "deleted": bool(raw.get("deleted", True))}


def _text(content: Any) -> Any:
    """Mistral's content may be a list of chunks (``text``, ``thinking`` …): OpenAI's is a string. Only
    the text parts are the answer; the reasoning traces of thinking chunks are not."""
    if not isinstance(content, list):
        return content
    return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text")


def _tool_call(call: Any) -> Any:
    # Mistral's ToolCall: id, type (default "function"), function {name, arguments}, index (default 0);
    # FunctionCall.arguments is an object or a string, OpenAI's always a JSON string.
    if not isinstance(call, dict):
        return call
    function = call.get("function")
    if isinstance(function, dict) and isinstance(function.get("arguments"), dict):
        function = {**function, "arguments": orjson.dumps(function["arguments"]).decode()}
    return {"type": "function", **call, "function": function}
