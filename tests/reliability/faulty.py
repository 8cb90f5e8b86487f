"""A fault-injecting upstream: an aiohttp server on a loopback socket whose every answer can be made to
break in one precise way, and which counts the requests it receives (per method and path).

Faults (``FaultyUpstream.fault``):

``refused``       no server at all: the URL points at a closed port (use ``closed_url()``)
``drop``          the request is read, then the connection is closed without a byte of answer
``reset``         status line and part of the body sent, then a TCP RST (SO_LINGER 0 + abort)
``truncated``     ``Content-Length`` larger than what is sent, then a clean FIN
``slow_first``    the first byte comes after ``delay`` seconds (beyond the gateway's timeout)
``stall``         headers and part of the body sent, then silence for ``delay`` seconds (idle timeout)
``500`` / ``503`` an OpenAI-shaped error with that status
``429``           an OpenAI-shaped rate-limit error with ``Retry-After: <retry_after>``
``invalid_json``  200 with a body that is not JSON

``times`` limits the fault to the first N requests; later ones get ``ok_body`` (200 JSON).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.standins.openai_like import ServerThread, free_port

FAULTS = ("refused", "drop", "reset", "truncated", "slow_first", "stall", "500", "503", "429", "invalid_json")
# A Retry-After in HTTP-date form that lies in the past: distinctive (so a test can see it was passed on)
# and worth zero seconds of waiting (so retry matrices stay fast).
PAST_RETRY_AFTER = "Wed, 21 Oct 2015 07:28:00 GMT"


@dataclass
class FaultyUpstream:
    fault: str | None = None
    times: int | None = None  # None: every request
    delay: float = 3.0
    retry_after: str = PAST_RETRY_AFTER
    ok_body: dict[str, Any] = field(default_factory=lambda: {"object": "list", "data": [], "has_more": False,
                                                              "id": "ok-1"})
    hits: Counter[tuple[str, str]] = field(default_factory=Counter)
    bodies: list[tuple[str, str, bytes]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    _served_faults: int = 0

    def reset_state(self, fault: str | None = None, **kw: Any) -> None:
        self.fault = fault
        self.times = kw.get("times")
        self.delay = kw.get("delay", 3.0)
        self.retry_after = kw.get("retry_after", PAST_RETRY_AFTER)
        self.hits.clear()
        self.bodies.clear()
        self.headers.clear()
        self._served_faults = 0

    def count(self, method: str, path: str) -> int:
        return self.hits[(method, path)]

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[(request.method, request.path)] += 1
        body = await request.read()  # always drain the request first: an answer never races the upload
        self.bodies.append((request.method, request.path, body))
        self.headers.append(dict(request.headers))
        fault = self.fault
        if fault is None or (self.times is not None and self._served_faults >= self.times):
            return web.json_response(self.ok_body)
        self._served_faults += 1
        transport = request.transport
        assert transport is not None
        if fault == "drop":
            transport.close()
            return web.Response()  # never sent: the transport is gone
        if fault == "reset":
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                           "Content-Length": "4096"})
            await resp.prepare(request)
            await resp.write(b'{"object": "list", "data": [')
            await asyncio.sleep(0.02)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            return resp
        if fault == "truncated":
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                           "Content-Length": "4096"})
            await resp.prepare(request)
            await resp.write(b'{"object": "list", "data": []')
            await asyncio.sleep(0.02)
            transport.close()
            return resp
        if fault == "slow_first":
            await asyncio.sleep(self.delay)
            return web.json_response(self.ok_body)
        if fault == "stall":
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                           "Content-Length": "4096"})
            await resp.prepare(request)
            await resp.write(b'{"object": "list", ')
            await asyncio.sleep(self.delay)
            transport.close()
            return resp
        if fault in ("500", "503", "429"):
            status = int(fault)
            headers = {"Retry-After": self.retry_after} if status == 429 else {}
            return web.json_response({"error": {"message": f"scripted {status} from the faulty upstream",
                                                "type": "server_error" if status != 429 else "rate_limit_error",
                                                "param": None, "code": f"scripted_{status}"}},
                                     status=status, headers=headers)
        if fault == "invalid_json":
            return web.Response(body=b'{"object": "fine_tuning.job", "id": ', status=200,
                                content_type="application/json")
        raise AssertionError(f"unknown fault {fault}")


def closed_url() -> str:
    """A loopback URL nobody listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


class FaultyServer(ServerThread):
    def __init__(self, upstream: FaultyUpstream) -> None:
        super().__init__(upstream.app())
        self.upstream = upstream
