"""POST /v1/chat/completions: call a model — a tuned one right after its job, or a base model — on the
provider that holds it, with OpenAI's request and answer (and its Server-Sent Events when streaming).

A ``fine_tuned_model`` a job produced through tunegate is in the registry (``api.common.remember``):
its provider, connection and owner come from there, so the request needs no provider header, and a
key never reaches another key's tuned model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from tunegate import metrics
from tunegate.api.common import context, json_body, respond
from tunegate.context import RequestContext
from tunegate.errors import APIError, UpstreamError
from tunegate.providers.base import JSON
from tunegate.serving import sse
from tunegate.serving.request import check_chat_request

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def chat_completions(request: Request) -> Response:
    body = await json_body(request)
    check_chat_request(body)
    ctx = await context(request, ("model", body["model"]))
    started = time.perf_counter()
    if not body.get("stream"):
        answer = await ctx.provider.chat(ctx, body)
        metrics.observe_chat(ctx.provider_name, body["model"], time.perf_counter() - started, None,
                             _completion_tokens(answer))
        return respond(answer)
    chunks = await ctx.provider.chat_stream(ctx, body)
    try:
        # The first chunk is awaited before the status line: a provider that fails before it says
        # anything still gets an ordinary error response (status, JSON body) rather than a broken stream.
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await _close(chunks)
        raise
    return sse.EventStream(_relay(ctx, body, chunks, first, started), headers=SSE_HEADERS)


async def _relay(ctx: RequestContext, body: JSON, chunks: AsyncIterator[JSON], first: JSON | None,
                 started: float) -> AsyncIterator[bytes]:
    """The stream as SSE, chunk by chunk as the provider sends them (nothing is held back). When the
    client goes away the response (``sse.EventStream``) cancels this generator; ``finally`` then closes
    the provider's stream, which frees the slot there (the local model server stops generating)."""
    first_at = time.perf_counter() if first is not None else None
    counted = 0
    usage_tokens: int | None = None
    try:
        if first is not None:
            counted, usage_tokens = _count(first, counted, usage_tokens)
            yield sse.encode(first)
        async for chunk in chunks:
            if first_at is None:
                first_at = time.perf_counter()
            counted, usage_tokens = _count(chunk, counted, usage_tokens)
            yield sse.encode(chunk)
    except APIError as exc:  # after the first byte nothing is retried: the client hears the error
        yield sse.error_event(exc)
        return
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - never a stack trace on the wire
        yield sse.error_event(UpstreamError("The stream failed inside the gateway.", status=500,
                                            code="stream_failed"))
        return
    finally:
        await _close(chunks)
        end = time.perf_counter()
        metrics.observe_chat(ctx.provider_name, body["model"], end - started,
                             (first_at - started) if first_at is not None else None,
                             usage_tokens if usage_tokens is not None else counted,
                             generation_seconds=(end - first_at) if first_at is not None else None)
    yield sse.DONE


def _count(chunk: JSON, counted: int, usage_tokens: int | None) -> tuple[int, int | None]:
    """Output tokens: the provider's own count when it sends usage, else one per content delta."""
    usage = chunk.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return counted, usage["completion_tokens"]
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")):
            counted += 1
    return counted, usage_tokens


def _completion_tokens(answer: JSON) -> int | None:
    usage = answer.get("usage") if isinstance(answer, dict) else None
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) else None


async def _close(chunks: AsyncIterator[JSON]) -> None:
    closer = getattr(chunks, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:  # noqa: BLE001 - closing a broken stream must not mask the real outcome
            pass
