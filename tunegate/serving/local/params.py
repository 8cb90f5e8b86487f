"""What the local model server answers and what it refuses by name: shared by the server (in its own
process) and the gateway's ``local`` adapter, which checks before starting anything. Kept apart from
``server`` so the gateway never imports the server's module."""

from __future__ import annotations

from typing import Any

from tunegate.errors import InvalidRequest
from tunegate.serving.request import unsupported_param

PROVIDER = "local"
# Accepted and without effect on a single greedy/sampled stream of this engine; every other parameter
# that changes the answer is refused by name (never dropped).
NEUTRAL = {"model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens",
           "max_completion_tokens", "stop", "seed", "n", "tools", "tool_choice", "user", "metadata", "store",
           "parallel_tool_calls", "response_format", "logprobs", "top_logprobs", "presence_penalty",
           "frequency_penalty"}


def check_n(body: dict[str, Any], max_n: int) -> None:
    """``n`` within the operator's cap (``local_chat_max_n``, given by the gateway's ``local`` adapter; the
    request's shape, ``n`` from 1 to ``request.MAX_N``, is checked before)."""
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > max_n:
        raise InvalidRequest(f"'n' must be an integer from 1 to {max_n}: this gateway serves at most {max_n} "
                             "choice(s) per local chat completion (local_chat_max_n).", param="n",
                             code="invalid_value")


def check_supported(body: dict[str, Any]) -> None:
    """What this server cannot do, refused by name (the gateway runs the same check before sending)."""
    for name in body:
        if name not in NEUTRAL and body[name] is not None:
            raise unsupported_param(PROVIDER, name)
    if body.get("logprobs") or body.get("top_logprobs"):
        raise unsupported_param(PROVIDER, "logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name):
            raise unsupported_param(PROVIDER, name, "Only 0 (the default) is served here.")
    fmt = body.get("response_format")
    if fmt is not None and fmt.get("type") != "text":
        raise unsupported_param(PROVIDER, "response_format", "Only {'type': 'text'} is served here.")
    if (body.get("n") or 1) > 1 and body.get("stream"):
        raise unsupported_param(PROVIDER, "n", "With 'stream', n must be 1 here.")
    if body.get("tool_choice") not in (None, "auto", "none") and not body.get("tools"):
        raise InvalidRequest("'tool_choice' needs 'tools'.", param="tool_choice")
    if isinstance(body.get("tool_choice"), dict) or body.get("tool_choice") == "required":
        raise unsupported_param(PROVIDER, "tool_choice", "Only 'auto' and 'none' are served here.")
