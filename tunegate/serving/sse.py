"""Server-Sent Events: reading a provider's stream and writing OpenAI's.

The reader follows the WHATWG event-stream grammar (``data:`` lines joined with newlines, an empty
line ends an event, ``:`` starts a comment) — what openai-python's ``_streaming.SSEDecoder`` parses.
Each event is bounded: a provider that never ends a line costs at most ``MAX_EVENT_BYTES``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tunegate.errors import APIError, UpstreamError

MAX_EVENT_BYTES = 4 * 1024 * 1024
DONE = b"data: [DONE]\n\n"


@dataclass
class Event:
    data: str
    event: str | None = None

    def json(self) -> Any:
        try:
            return orjson.loads(self.data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("The provider's stream carried an event that is not JSON.", status=502,
                                code="upstream_invalid_response") from exc


async def events(chunks: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """The events of a byte stream, as they complete (nothing waits for more than the event at hand)."""
    buffer = b""
    data: list[str] = []
    name: str | None = None
    async for piece in chunks:
        buffer += piece
        while True:
            cut = buffer.find(b"\n")
            if cut < 0:
                break
            line, buffer = buffer[:cut].rstrip(b"\r"), buffer[cut + 1:]
            if not line:
                if data:
                    yield Event("\n".join(data), name)
                data, name = [], None
                continue
            field, _, value = line.decode("utf-8", "replace").partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                name = value
        if len(buffer) > MAX_EVENT_BYTES or sum(len(d) for d in data) > MAX_EVENT_BYTES:
            raise UpstreamError("The provider's stream carried an event larger than the gateway reads.",
                                status=502, code="upstream_answer_too_large")
    if data:
        yield Event("\n".join(data), name)


def encode(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_event(error: APIError) -> bytes:
    """An error after the stream started: the status line is already sent, so it travels as an event
    (openai-python's Stream raises APIError on an event whose data holds ``error``)."""
    return encode(error.body())


class EventStream(Response):
    """A ``text/event-stream`` answer, sent as its events come: what Starlette's StreamingResponse does,
    without its per-response anyio task group. Under uvicorn (ASGI spec 2.3) StreamingResponse opens a
    task group and starts the stream in a second task, so its first byte waits a loop turn behind the
    disconnect listener: ~0.2 ms of the time to first token (measured, issue 16). Here the status line
    and every event are sent from the request's own task, and a plain asyncio task listens for the
    client leaving; when it does, the stream is cancelled where it waits (its ``finally`` closes the
    provider's stream) and the response ends quietly, as StreamingResponse's does."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        self.events = events
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        streaming = True
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if streaming:  # the request's task is suspended inside the stream: cancelled right there
                gone = True
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            streaming = False
            watcher.cancel()  # once the response is complete, receive() answers http.disconnect at once
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # the client went away: nothing more to send, nobody to tell
        finally:
            streaming = False
            watcher.cancel()
