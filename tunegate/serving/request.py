"""The shape every chat request must have before a provider sees it.

Follows OpenAI's ``CreateChatCompletionRequest`` (``../shared/specs/openai-openapi.yaml``): the limits
below are OpenAI's own (n ≤ 128, temperature 0–2, top_p 0–1, up to 4 stop sequences, penalties −2–2,
seed an integer). A provider that lacks a feature (tools, n > 1, logprobs) refuses it in its own
adapter with :func:`unsupported_param`, naming the parameter.
"""

from __future__ import annotations

from typing import Any

from tunegate.errors import InvalidRequest, missing_param

JSON = dict[str, Any]

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_MESSAGES = 4096
MAX_N = 128
MAX_STOP = 4


def _number(body: JSON, name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number from {low:g} to {high:g}.", param=name,
                             code="invalid_value")


def _integer(body: JSON, name: str, low: int, high: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be an integer from {low} to {high}.", param=name, code="invalid_value")


def _messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array of messages.", param="messages",
                             code="invalid_value")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest(f"'messages' holds at most {MAX_MESSAGES} messages.", param="messages",
                             code="invalid_value")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"'{where}' must be an object.", param=where, code="invalid_value")
        if msg.get("role") not in ROLES:
            raise InvalidRequest(f"'{where}.role' must be one of {', '.join(ROLES)}.", param=f"{where}.role",
                                 code="invalid_value")
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(f"'{where}.content' must be a string or an array of content parts.",
                                 param=f"{where}.content", code="invalid_value")
        if isinstance(content, list) and not all(isinstance(p, dict) and isinstance(p.get("type"), str)
                                                 for p in content):
            raise InvalidRequest(f"'{where}.content' parts must be objects with a 'type'.",
                                 param=f"{where}.content", code="invalid_value")


def check_chat_request(body: JSON) -> None:
    """A 400 naming the parameter for anything outside OpenAI's request schema."""
    model = body.get("model")
    if model is None or model == "":
        raise missing_param("model")
    if not isinstance(model, str) or len(model) > 512:
        raise InvalidRequest("'model' must be a string of at most 512 characters.", param="model",
                             code="invalid_value")
    if "messages" not in body:
        raise missing_param("messages")
    _messages(body["messages"])
    for name in ("stream", "logprobs", "parallel_tool_calls", "store"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise InvalidRequest(f"'{name}' must be a boolean.", param=name, code="invalid_type")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object.", param="stream_options", code="invalid_type")
        if not body.get("stream"):
            raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.", param="stream_options",
                                 code="invalid_value")
    _integer(body, "n", 1, MAX_N)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _integer(body, "max_tokens", 1, 2**31 - 1)
    _integer(body, "max_completion_tokens", 1, 2**31 - 1)
    _integer(body, "seed", -(2**63), 2**63 - 1)
    _integer(body, "top_logprobs", 0, 20)
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (
            isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) for s in stop))):
        raise InvalidRequest(f"'stop' must be a string or an array of at most {MAX_STOP} strings.", param="stop",
                             code="invalid_value")
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise InvalidRequest("'tools' must be an array of tool objects.", param="tools", code="invalid_type")
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, str | dict):
        raise InvalidRequest("'tool_choice' must be a string or an object.", param="tool_choice",
                             code="invalid_type")
    for name in ("response_format", "metadata", "logit_bias"):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise InvalidRequest(f"'{name}' must be an object.", param=name, code="invalid_type")


def unsupported_param(provider: str, name: str, why: str = "") -> InvalidRequest:
    """The 400 an adapter answers for a parameter its backend has no equivalent of (never dropped silently)."""
    tail = f" {why}" if why else ""
    return InvalidRequest(f"Provider '{provider}' does not support '{name}' in chat completions.{tail}", param=name,
                          code="unsupported_parameter")


# Parameters every adapter handles or that the route itself consumes.
COMMON_PARAMS = frozenset({"model", "messages", "stream", "stream_options"})
# Values that ask for nothing beyond OpenAI's default: a backend lacking the feature can still honour them.
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "n": (1,), "presence_penalty": (0,), "frequency_penalty": (0,), "logprobs": (False,), "store": (False,),
    "parallel_tool_calls": (True,), "response_format": ({"type": "text"},), "service_tier": ("auto",),
    "modalities": (["text"],),
}


def refuse_unhandled(provider: str, body: JSON, handled: frozenset[str] | set[str],
                     why: dict[str, str] | None = None) -> None:
    """A 400 naming the first parameter a translating adapter does not map (``handled`` lists the ones it
    does); a parameter left at its neutral value (n=1, penalties 0, ...) asks for nothing and passes."""
    for name in sorted(body):
        value = body[name]
        if name in COMMON_PARAMS or name in handled or value is None or value in NEUTRAL_VALUES.get(name, ()):
            continue
        raise unsupported_param(provider, name, (why or {}).get(name, ""))
