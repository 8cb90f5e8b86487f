"""OpenAI's chat wire on backends that speak it *almost*: Together, Mistral, Fireworks.

Their chat endpoints take OpenAI's request and answer OpenAI's shapes, with differences each adapter
declares in data rather than code:

- which of OpenAI's parameters the backend has (``chat_accepts``), which native extras a client may
  send as they are (``chat_extras``), and which it lacks (``chat_refused``, name → why). Anything
  else is a 400 naming the parameter: nothing is dropped on the way.
- ``stream_options`` is OpenAI's alone. These backends send the usage on their own (in the last
  chunk, choices and all); :func:`openai_usage` turns that into OpenAI's contract: ``usage: null`` on
  every chunk, then one chunk with empty ``choices`` and the totals when the client asked for them.
- finish reasons in their own words (``finish_reasons``), mapped onto OpenAI's.

Nothing here names a provider; each one's table lives in its own ``chat.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from tunegate.errors import InvalidRequest
from tunegate.providers.base import JSON
from tunegate.providers.openai_chat import OpenAIChat, stream_error
from tunegate.serving import shapes
from tunegate.serving.request import unsupported_param

if TYPE_CHECKING:
    from tunegate.context import RequestContext

# Parameters every backend here reads the way OpenAI does (the route checked their shape already).
COMMON = frozenset({"model", "messages", "stream", "temperature", "top_p", "n", "stop", "presence_penalty",
                    "frequency_penalty", "response_format", "tools", "tool_choice"})
# Parameters tunegate itself consumes: never sent on.
CONSUMED = frozenset({"stream_options", "max_tokens", "max_completion_tokens"})


class CompatChat(OpenAIChat):
    chat_accepts: ClassVar[frozenset[str]] = COMMON
    chat_extras: ClassVar[frozenset[str]] = frozenset()
    chat_refused: ClassVar[dict[str, str]] = {}
    finish_reasons: ClassVar[dict[str, str]] = {}
    # Roles the backend lacks → the role it reads the same way (OpenAI's `developer` is a system prompt).
    chat_roles: ClassVar[dict[str, str]] = {"developer": "system"}

    # ---- request ---------------------------------------------------------------------------------

    def chat_model(self, ctx: RequestContext, body: JSON) -> str:
        return str(body["model"])

    def check_chat_params(self, body: JSON) -> None:
        for name, value in body.items():
            if value is None or name in CONSUMED:
                continue
            if name in self.chat_refused:
                raise unsupported_param(self.name, name, self.chat_refused[name])
            if name not in self.chat_accepts and name not in self.chat_extras:
                raise InvalidRequest(f"'{name}' is not a chat-completions parameter of provider '{self.name}' "
                                     "(neither one of OpenAI's it has nor one of its own).", param=name,
                                     code="unsupported_parameter")

    def to_chat_body(self, ctx: RequestContext, body: JSON) -> JSON:
        self.check_chat_params(body)
        native = {k: v for k, v in body.items() if v is not None and k not in CONSUMED}
        native["model"] = self.chat_model(ctx, body)
        if (limit := shapes.max_tokens(body)) is not None:
            native["max_tokens"] = limit
        if self.chat_roles:
            native["messages"] = [self._role(m) for m in body["messages"]]
        return self.adjust_chat_body(ctx, native, body)

    def _role(self, message: JSON) -> JSON:
        role = self.chat_roles.get(message.get("role", ""))
        return {**message, "role": role} if role else message

    def adjust_chat_body(self, ctx: RequestContext, native: JSON, body: JSON) -> JSON:
        """The backend's own spelling of what is left (a renamed seed, a narrower range)."""
        return native

    # ---- answers ---------------------------------------------------------------------------------

    def finish(self, ctx: RequestContext, reason: Any) -> Any:
        if reason == "error":  # the backend stopped on an error of its own: never passed off as an answer
            raise stream_error(ctx, {"message": f"Provider '{self.name}' ended the completion with an error.",
                                     "code": "upstream_generation_error"})
        return self.finish_reasons.get(reason, reason) if isinstance(reason, str) else reason

    def to_completion(self, ctx: RequestContext, raw: JSON, body: JSON) -> JSON:
        choices = []
        for choice in raw.get("choices") or []:
            if isinstance(choice, dict):
                msg = choice.get("message") or {}
                choices.append({**choice, "message": self.to_message(msg) if isinstance(msg, dict) else msg,
                                "finish_reason": self.finish(ctx, choice.get("finish_reason")),
                                "logprobs": choice.get("logprobs")})
        out = {**raw, "object": "chat.completion", "choices": choices}
        out.setdefault("system_fingerprint", None)
        return out

    def to_message(self, message: JSON) -> JSON:
        return message

    def to_chunk(self, ctx: RequestContext, raw: JSON, body: JSON) -> JSON:
        choices = [{**c, "finish_reason": self.finish(ctx, c.get("finish_reason"))}
                   for c in raw.get("choices") or [] if isinstance(c, dict)]
        return {**raw, "object": "chat.completion.chunk", "choices": choices}

    async def chat_stream(self, ctx: RequestContext, body: JSON) -> AsyncIterator[JSON]:
        return openai_usage(await super().chat_stream(ctx, body), shapes.include_usage(body))


async def openai_usage(chunks: AsyncIterator[JSON], wanted: bool) -> AsyncIterator[JSON]:
    """A stream whose usage rides on its last chunks, in OpenAI's ``stream_options.include_usage``
    contract: every chunk ``usage: null``; at the end, when asked for, one chunk with no choices and the
    totals. A chunk that carried nothing but usage is not passed on (its totals come at the end)."""
    usage: JSON | None = None
    last: JSON | None = None
    try:
        async for chunk in chunks:
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
            last = chunk
            if chunk.get("choices"):
                yield {**chunk, "usage": None}
        if wanted and usage is not None and last is not None:
            yield shapes.chunk(str(last.get("id") or shapes.completion_id()), str(last.get("model") or ""),
                               int(last.get("created") or 0), [], shapes.usage(
                                   usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0))
    finally:
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()  # the provider's connection goes back however the client's stream ended
