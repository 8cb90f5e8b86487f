"""AWS event-stream frames (``application/vnd.amazon.eventstream``), read as they arrive.

The framing is botocore's own parser (``botocore.eventstream.EventStreamBuffer``: prelude, headers, payload,
both CRC32s checked): it is fed each network chunk and hands back every frame completed so far, so nothing
waits for more than the frame at hand. Frame format and header names: boto/botocore 1.44.8
``botocore/eventstream.py`` and ``botocore/parsers.py`` (``_do_error_parse``): ``:message-type`` is ``event``
(then ``:event-type`` names the member of the stream's union and the payload is that member as JSON),
``exception`` (``:exception-type`` names a modelled exception, payload ``{"message"}``) or ``error``
(``:error-code`` / ``:error-message`` headers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from tunegate.errors import UpstreamError

# A frame larger than this is refused before it is buffered whole (ConverseStream frames are a few hundred
# bytes; botocore's own ceiling is a 24 MiB payload).
MAX_FRAME_BYTES = 4 * 1024 * 1024


@dataclass
class Frame:
    message_type: str  # event | exception | error
    name: str  # the :event-type, :exception-type or :error-code
    payload: bytes
    error_message: str = ""  # :error-message, for `error` frames

    def json(self) -> Any:
        try:
            return orjson.loads(self.payload) if self.payload else {}
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("The provider's event stream carried a frame that is not JSON.", status=502,
                                code="upstream_invalid_response") from exc


async def frames(chunks: AsyncIterator[bytes]) -> AsyncIterator[Frame]:
    from botocore.eventstream import EventStreamBuffer, ParserError

    buffer = EventStreamBuffer()
    pending = 0  # bytes handed to the buffer and not yet returned as frames
    try:
        async for piece in chunks:
            buffer.add_data(piece)
            pending += len(piece)
            try:
                for message in buffer:
                    pending -= message.prelude.total_length
                    yield _frame(message.headers, message.payload)
            except ParserError as exc:  # a CRC mismatch, an oversized header block or payload
                raise UpstreamError(f"The provider's event stream is corrupt ({type(exc).__name__}).", status=502,
                                    code="upstream_invalid_response") from None
            if pending > MAX_FRAME_BYTES:
                raise UpstreamError("The provider's event stream carried a frame larger than the gateway reads.",
                                    status=502, code="upstream_answer_too_large")
    finally:
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()  # the body's own finally releases the connection now, not at collection
    if pending:
        raise UpstreamError("The provider's event stream ended inside a frame.", status=502,
                            code="upstream_invalid_response")

def _frame(headers: dict[str, Any], payload: bytes) -> Frame:
    kind = str(headers.get(":message-type", "event"))
    if kind == "exception":
        return Frame(kind, str(headers.get(":exception-type", "")), payload)
    if kind == "error":
        return Frame(kind, str(headers.get(":error-code", "")), payload, str(headers.get(":error-message", "")))
    return Frame(kind, str(headers.get(":event-type", "")), payload)
