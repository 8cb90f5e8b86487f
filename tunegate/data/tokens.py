"""Offline token estimate for fine-tuning examples.

No tokenizer is downloaded. The estimate follows the OpenAI cookbook's
``num_tokens_from_messages`` accounting (3 tokens of overhead per message,
1 extra for a ``name``, 3 more that prime every reply) and replaces the
tokenizer by a byte heuristic: one token per 4 UTF-8 bytes of text, rounded
up. English text under cl100k/o200k averages about 4 bytes per token, so the
estimate is usually within ~25% of the real count; for code, numbers or
repetitive text it can be further off (either way). Use it for sizing and
for the "longer than the context" warning, never for billing.
"""

from __future__ import annotations

from typing import Any

import orjson

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_REPLY = 3
BYTES_PER_TOKEN = 4

#: Training context of the models we know about (tokens). The cookbook gives
#: 65,536 for gpt-4o-mini-2024-07-18 and gpt-4o-2024-08-06 and 16,385 for
#: gpt-3.5-turbo-1106/0125; every other model falls back to DEFAULT_CONTEXT.
KNOWN_CONTEXTS: dict[str, int] = {
    "gpt-4o-mini-2024-07-18": 65_536,
    "gpt-4o-2024-08-06": 65_536,
}
DEFAULT_CONTEXT = 65_536


def context_window(model: str | None) -> int:
    """Training context (tokens) for ``model``; 65,536 when unknown."""
    if not model:
        return DEFAULT_CONTEXT
    base = model
    if base.startswith("ft:"):
        # ft:gpt-4o-mini-2024-07-18:org:suffix:id -> the base model
        parts = base.split(":")
        base = parts[1] if len(parts) > 1 else base
    if base in KNOWN_CONTEXTS:
        return KNOWN_CONTEXTS[base]
    if base.startswith("gpt-3.5-turbo"):
        return 16_385
    return DEFAULT_CONTEXT


def text_tokens(text: str) -> int:
    """ceil(utf8_bytes / 4). ASCII strings skip the encode (1 byte per char)."""
    n = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return (n + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def json_tokens(value: Any) -> int:
    """Estimate for a JSON value (tool definitions, tool call arguments, ...)."""
    if isinstance(value, str):
        return text_tokens(value)
    try:
        n = len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        n = len(repr(value))
    return (n + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def content_tokens(content: Any) -> int:
    """Tokens of a message ``content``: a string or a list of content parts."""
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += text_tokens(text)
                elif part.get("type") == "image_url":
                    # OpenAI bills a low-detail image at 85 tokens; use it as a floor.
                    total += 85
        return total
    return 0


def message_tokens(message: dict[str, Any]) -> int:
    """Estimated tokens of one chat message, overhead included."""
    total = TOKENS_PER_MESSAGE + content_tokens(message.get("content"))
    name = message.get("name")
    if isinstance(name, str):
        total += TOKENS_PER_NAME + text_tokens(name)
    for key in ("tool_calls", "function_call"):
        value = message.get(key)
        if value:
            total += json_tokens(value)
    return total


def messages_tokens(messages: list[Any]) -> int:
    """Estimated tokens of a whole example (messages + reply priming)."""
    total = TOKENS_PER_REPLY
    for message in messages:
        if isinstance(message, dict):
            total += message_tokens(message)
    return total
