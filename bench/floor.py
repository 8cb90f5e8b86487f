"""The floor of tunegate's design: the least a proxy built from the gateway's own parts costs.

uvicorn (httptools, uvloop, one worker, access log off, as ``tunegate serve`` runs it) serving a bare
ASGI callable that forwards each request to the upstream named by ``x-portkey-custom-host`` through one
shared aiohttp ``ClientSession`` set up as tunegate's ``Upstream`` sets up its own (no cookie jar, a
keep-alive pool, no User-Agent), and sends the answer back unchanged. Nothing else: no routing, no key
or ownership check, no JSON, no database, no request log, no metrics.

bench/run.py runs it beside tunegate and the Portkey gateway in the same interleaved rounds. What it
spends per request is what asyncio + uvicorn + aiohttp cost for those bytes, which nothing done inside
tunegate can remove; what tunegate spends above it is tunegate's own work. So a target the floor misses
cannot be met in this design (Python, asyncio, uvicorn, aiohttp), only by changing the design.

    python bench/floor.py --port 9002

Bodies up to 1 MiB are read whole (as tunegate reads a create); larger ones (an upload) are streamed in
both directions, chunk by chunk as they arrive.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import uvicorn

WHOLE = 1 << 20  # bodies at most this long are read at once, longer ones streamed
FORWARDED = {b"authorization", b"content-type", b"content-length", b"accept"}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Floor:
    """The ASGI app: one session, made on the first request (it must belong to the running loop)."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        headers = dict(scope["headers"])
        if scope["path"] in ("/", "/healthz"):
            await _answer(send, 200, b'{"status":"ok"}')
            return
        base = headers.get(b"x-portkey-custom-host", b"").decode().rstrip("/")
        if not base:
            await _answer(send, 400, b'{"error":{"message":"x-portkey-custom-host is required"}}')
            return
        path = scope["path"].removeprefix("/v1")
        query = scope["query_string"].decode()
        url = base + path + ("?" + query if query else "")
        out_headers = {k.decode(): v.decode() for k, v in headers.items() if k in FORWARDED}
        length = int(headers.get(b"content-length", b"0") or 0)
        body: bytes | AsyncIterator[bytes]
        if length > WHOLE or b"transfer-encoding" in headers:
            out_headers.pop("content-length", None)  # aiohttp sends the stream chunked
            body = _body_chunks(receive)
        else:
            body = await _body_whole(receive)
        session = self._session()
        async with session.request(scope["method"], url, data=body, headers=out_headers) as resp:
            answer_headers = [(b"content-type", resp.headers.get("Content-Type", "application/json").encode())]
            if resp.content_length is not None and resp.content_length <= WHOLE:
                data = await resp.read()
                await _answer(send, resp.status, data, answer_headers)
                return
            await send({"type": "http.response.start", "status": resp.status, "headers": answer_headers})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=512, ttl_dns_cache=300, enable_cleanup_closed=True)
            self.session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",),
                                                 cookie_jar=aiohttp.DummyCookieJar())
        return self.session

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _body_whole(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body"):
            return


async def _answer(send: Send, status: int, body: bytes,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": headers or [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    uvicorn.run(Floor(), host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", ws="none",
                lifespan="on", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
