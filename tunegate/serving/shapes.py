"""OpenAI's chat and model objects, built the same way for every provider.

Shapes: openai/openai-python v1.x ``src/openai/types/chat/chat_completion.py``, ``chat_completion_chunk.py``,
``completion_usage.py`` and ``types/model.py`` (checked against the installed SDK, openai 2.x / 3.x types).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

JSON = dict[str, Any]

# OpenAI's finish reasons; providers' own words are mapped onto these.
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "function_call")


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> JSON:
    return {"prompt_tokens": int(prompt_tokens), "completion_tokens": int(completion_tokens),
            "total_tokens": int(prompt_tokens) + int(completion_tokens)}


def message(content: str | None, tool_calls: list[JSON] | None = None) -> JSON:
    out: JSON = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        out["tool_calls"] = tool_calls
    return out


def choice(index: int, msg: JSON, finish_reason: str | None) -> JSON:
    return {"index": index, "message": msg, "finish_reason": finish_reason, "logprobs": None}


def completion(id: str, model: str, choices: list[JSON], usage_: JSON | None, *,
               created: int | None = None, system_fingerprint: str | None = None) -> JSON:
    return {"id": id, "object": "chat.completion", "created": created or int(time.time()), "model": model,
            "choices": choices, "usage": usage_, "system_fingerprint": system_fingerprint}


def chunk(id: str, model: str, created: int, choices: list[JSON], usage_: JSON | None = None) -> JSON:
    """One stream event. With ``stream_options.include_usage`` every chunk has ``usage: null`` except a
    last one with empty ``choices`` and the totals."""
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices, "usage": usage_, "system_fingerprint": None}


def delta_choice(index: int, delta: JSON, finish_reason: str | None = None) -> JSON:
    return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}


def model_object(id: str, owned_by: str, created: int | None = None, **extra: Any) -> JSON:
    return {"id": id, "object": "model", "created": int(created or 0), "owned_by": owned_by, **extra}


def model_list(items: list[JSON]) -> JSON:
    return {"object": "list", "data": items}


def max_tokens(body: JSON) -> int | None:
    """``max_completion_tokens`` (the current name) or ``max_tokens`` (the deprecated one)."""
    value = body.get("max_completion_tokens")
    return value if value is not None else body.get("max_tokens")


def stop_sequences(body: JSON) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def include_usage(body: JSON) -> bool:
    options = body.get("stream_options") or {}
    return bool(options.get("include_usage"))


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content
                   if isinstance(part, dict) and part.get("type") in ("text", "input_text"))
