"""Server-Sent Events: reading a provider's stream and writing OpenAI's.

The reader follows the WHATWG event-stream grammar (``data:`` lines joined with newlines, an empty
line ends an event, ``:`` starts a comment) — what openai-python's ``_streaming.SSEDecoder`` parses.
Each event is bounded: a provider that never ends a line costs at most ``MAX_EVENT_BYTES``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

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
