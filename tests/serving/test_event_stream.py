"""tunegate.serving.sse.EventStream, the streamed chat answer: events sent from the request's own task
as they come, the stream cancelled where it waits when the client leaves (its ``finally`` runs, the
response ends quietly), and any other cancellation (a server shutting down) still propagated."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tunegate.serving.sse import EventStream


class Client:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.left = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


async def test_events_are_sent_in_order_then_the_end() -> None:
    async def events() -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"data: %d\n\n" % i

    client = Client()
    await EventStream(events(), headers={"Cache-Control": "no-cache"})({"type": "http"}, client.receive, client.send)
    start, *bodies = client.sent
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert (b"cache-control", b"no-cache") in start["headers"]
    assert [b["body"] for b in bodies] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert [b["more_body"] for b in bodies] == [True, True, True, False]


async def test_a_client_that_leaves_closes_the_stream_and_the_response_ends_quietly() -> None:
    closed = asyncio.Event()
    waiting = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"data: first\n\n"
            waiting.set()
            await asyncio.sleep(3600)  # the provider is slow: the client gives up meanwhile
            yield b"data: never\n\n"
        finally:
            closed.set()

    client = Client()
    answer = asyncio.ensure_future(EventStream(events())({"type": "http"}, client.receive, client.send))
    await waiting.wait()
    client.left.set()
    await asyncio.wait_for(answer, 2)  # returns: no CancelledError for the caller
    assert closed.is_set()
    assert [m.get("body") for m in client.sent] == [None, b"data: first\n\n"]  # nothing after the leave
    assert not answer.cancelled() and answer.exception() is None


async def test_a_cancellation_that_is_not_the_client_leaving_propagates() -> None:
    started = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        started.set()
        await asyncio.sleep(3600)
        yield b""

    client = Client()
    answer = asyncio.ensure_future(EventStream(events())({"type": "http"}, client.receive, client.send))
    await started.wait()
    answer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answer
