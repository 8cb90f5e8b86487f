"""The local model server: an OpenAI-compatible HTTP server in its own process.

    python -m tunegate.serving.local.server [--max-loras N --concurrency C --queue-size Q ...]

It binds 127.0.0.1 on a port the OS picks and prints one JSON line ``{"port": …, "pid": …}`` on stdout.
The bearer token every call except ``GET /health`` must carry is read as the first line of stdin (never
an argument or a variable other local users could read in ``ps``); when stdin closes — the gateway
that started it is gone — the server exits.

Routes follow vLLM's OpenAI-compatible server, so the gateway treats both alike:
``POST /v1/chat/completions`` (JSON and SSE), ``GET /v1/models``, ``POST /v1/load_lora_adapter``
``{lora_name, lora_path[, base_model_name]}``, ``POST /v1/unload_lora_adapter {lora_name}``,
``GET /health``; plus ``GET /stats`` (active and waiting requests, resident models).

Requests: ``concurrency`` generations run at once in worker threads; up to ``queue_size`` more wait;
beyond that the answer is a 429 with ``Retry-After``. A client that goes away (mid-stream or while its
answer is generated) cancels its generation at the next token and frees its slot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tunegate.errors import APIError, InvalidRequest, NotFound, RateLimited, Unauthorized
from tunegate.serving import shapes, sse
from tunegate.serving.local.engine import (
    Engine,
    EngineError,
    GenerationRequest,
    GenerationResult,
    parse_tool_calls,
)
from tunegate.serving.local.params import PROVIDER, check_supported
from tunegate.serving.request import check_chat_request, unsupported_param

log = logging.getLogger("tunegate.serving.local")
MAX_BODY = 8 * 1024 * 1024
@dataclass
class Limits:
    concurrency: int = 1
    queue_size: int = 16


class Slots:
    """``concurrency`` running, ``queue_size`` waiting, the rest refused (429)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.running = asyncio.Semaphore(max(1, limits.concurrency))
        self.active = 0
        self.waiting = 0
        self.served = 0
        self.cancelled = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.active + self.waiting >= max(1, self.limits.concurrency) + max(0, self.limits.queue_size):
            raise RateLimited(f"The local model server is busy: {self.active} request(s) generating and "
                              f"{self.waiting} waiting (queue size {self.limits.queue_size}). Try again shortly.",
                              code="server_busy", headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            await self.running.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self.served += 1
            self.running.release()


class Server:
    def __init__(self, engine: Engine, limits: Limits, token: str) -> None:
        self.engine = engine
        self.slots = Slots(limits)
        self.token = token
        # Generations plus model loads: one thread per running generation, one spare for loads/unloads.
        self.pool = ThreadPoolExecutor(max_workers=max(1, limits.concurrency) + 1, thread_name_prefix="tg-gen")
        self.live: set[threading.Event] = set()

    def app(self) -> Starlette:
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/stats", self.guarded(self.stats), methods=["GET"]),
            Route("/v1/models", self.guarded(self.models), methods=["GET"]),
            Route("/v1/chat/completions", self.guarded(self.chat), methods=["POST"]),
            Route("/v1/load_lora_adapter", self.guarded(self.load_adapter), methods=["POST"]),
            Route("/v1/unload_lora_adapter", self.guarded(self.unload_adapter), methods=["POST"]),
        ]

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            self.cancel_all()
            self.pool.shutdown(wait=False, cancel_futures=True)

        async def api_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, APIError)
            return exc.response()

        async def internal_error(request: Request, exc: Exception) -> Response:
            log.error("request failed: %s", type(exc).__name__, exc_info=exc)
            return APIError(f"The model server failed ({type(exc).__name__}).", status=500, type="server_error",
                            code="generation_failed").response()

        return Starlette(routes=routes, lifespan=lifespan,
                         exception_handlers={APIError: api_error, Exception: internal_error})

    def cancel_all(self) -> None:
        for flag in list(self.live):
            flag.set()

    def guarded(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                raise Unauthorized("A valid bearer token is required.")
            try:
                return await handler(request)
            except EngineError as exc:
                raise _api_error(exc) from None

        return run

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # ---- routes ----------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def stats(self, request: Request) -> Response:
        return _json({"active": self.slots.active, "waiting": self.slots.waiting, "served": self.slots.served,
                      "cancelled": self.slots.cancelled, "concurrency": self.slots.limits.concurrency,
                      "queue_size": self.slots.limits.queue_size, **self.engine.stats()})

    async def models(self, request: Request) -> Response:
        stats = self.engine.stats()
        items = [shapes.model_object(ref, "local", parent=None) for ref in stats["base_models"]]
        items += [shapes.model_object(a.name, "local", parent=a.base) for a in list(self.engine.adapters.values())]
        return _json(shapes.model_list(items))

    async def load_adapter(self, request: Request) -> Response:
        body = await _body(request)
        name, path, base = body.get("lora_name"), body.get("lora_path"), body.get("base_model_name")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise InvalidRequest("Both 'lora_name' and 'lora_path' must be provided.", param="lora_name")
        if base is not None and not isinstance(base, str):
            raise InvalidRequest("'base_model_name' must be a string.", param="base_model_name")
        await self._call(self.engine.register, name, path, base)
        return Response(f"Success: LoRA adapter '{name}' added successfully.", media_type="text/plain")

    async def unload_adapter(self, request: Request) -> Response:
        body = await _body(request)
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("'lora_name' must be provided.", param="lora_name")
        await self._call(self.engine.unregister, name)
        return Response(f"Success: LoRA adapter '{name}' removed successfully.", media_type="text/plain")

    async def chat(self, request: Request) -> Response:
        body = await _body(request)
        check_chat_request(body)
        check_supported(body)
        base, adapter = self.engine.resolve(body["model"])
        gens = [self._request(body, base, adapter.name if adapter else None, i) for i in range(body.get("n") or 1)]
        if body.get("stream"):
            return await self._stream(request, body, gens[0])
        return await self._complete(request, body, gens)

    def _request(self, body: dict[str, Any], base: str, adapter: str | None, index: int) -> GenerationRequest:
        seed = body.get("seed")
        return GenerationRequest(
            base=base, adapter=adapter, messages=body["messages"], max_new_tokens=shapes.max_tokens(body),
            temperature=float(body["temperature"]) if body.get("temperature") is not None else 1.0,
            top_p=float(body["top_p"]) if body.get("top_p") is not None else 1.0,
            seed=None if seed is None else (int(seed) + index) % (2**63), stop=shapes.stop_sequences(body),
            tools=body.get("tools") or None)

    async def _complete(self, request: Request, body: dict[str, Any], gens: list[GenerationRequest]) -> Response:
        cancelled = threading.Event()
        results: list[GenerationResult] = []
        async with self.slots.slot(), self._watch(request, cancelled):
            for gen in gens:
                results.append(await self._call(self.engine.generate, gen, lambda _t: None, cancelled))
        if cancelled.is_set():
            self.slots.cancelled += 1
        choices = []
        for i, result in enumerate(results):
            text, calls = parse_tool_calls(result.text) if body.get("tools") else (result.text, [])
            finish = "tool_calls" if calls else result.finish_reason
            choices.append(shapes.choice(i, shapes.message(text if text or not calls else None, calls or None),
                                         finish))
        prompt = results[0].prompt_tokens if results else 0
        answer = shapes.completion(shapes.completion_id(), body["model"], choices,
                                   shapes.usage(prompt, sum(r.completion_tokens for r in results)))
        return _json(answer)

    @contextlib.asynccontextmanager
    async def _watch(self, request: Request, cancelled: threading.Event) -> AsyncIterator[None]:
        """Set ``cancelled`` when the HTTP client goes away while its answer is generated."""

        async def wait_for_disconnect() -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    cancelled.set()
                    return

        self.live.add(cancelled)
        watcher = asyncio.get_running_loop().create_task(wait_for_disconnect())
        try:
            yield
        finally:
            watcher.cancel()
            self.live.discard(cancelled)

    async def _stream(self, request: Request, body: dict[str, Any], gen: GenerationRequest) -> Response:
        if body.get("tools"):
            raise unsupported_param(PROVIDER, "tools", "The local CPU server parses tool calls in whole answers "
                                    "only: send tools without 'stream'.")
        slot = self.slots.slot()
        await slot.__aenter__()  # a 429 here is still an ordinary JSON error
        return _ClosingStream(self._events(body, gen), lambda: slot.__aexit__(None, None, None),
                              media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _events(self, body: dict[str, Any], gen: GenerationRequest) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        cancelled = threading.Event()
        cid, created, model = shapes.completion_id(), int(time.time()), body["model"]
        self.live.add(cancelled)

        def on_text(text: str) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, text)

        future = loop.run_in_executor(self.pool, self.engine.generate, gen, on_text, cancelled)
        future.add_done_callback(lambda _f: loop.call_soon_threadsafe(pieces.put_nowait, None))
        try:
            yield sse.encode(shapes.chunk(cid, model, created, [shapes.delta_choice(0, {"role": "assistant",
                                                                                        "content": ""})]))
            while (piece := await pieces.get()) is not None:
                yield sse.encode(shapes.chunk(cid, model, created, [shapes.delta_choice(0, {"content": piece})]))
            try:
                result = await future
            except EngineError as exc:
                yield sse.error_event(_api_error(exc))
                return
            except Exception as exc:  # noqa: BLE001 - the client hears that it failed; the log says why
                log.exception("generation failed")
                yield sse.error_event(APIError(f"The generation failed ({type(exc).__name__}).", status=500,
                                               type="server_error", code="generation_failed"))
                return
            yield sse.encode(shapes.chunk(cid, model, created, [shapes.delta_choice(0, {}, result.finish_reason)]))
            if shapes.include_usage(body):
                yield sse.encode(shapes.chunk(cid, model, created, [],
                                              shapes.usage(result.prompt_tokens, result.completion_tokens)))
            yield sse.DONE
        finally:
            # Finished, failed, or the client went away (Starlette cancels this generator): stop the
            # generation at its next token; the slot is free once the worker thread has let go.
            if not future.done():
                cancelled.set()
                self.slots.cancelled += 1
            self.live.discard(cancelled)
            with contextlib.suppress(BaseException):
                await asyncio.shield(future)


class _ClosingStream(StreamingResponse):
    """A streamed answer whose generator is closed, and whose slot is released, however the response
    ends: finished, or cancelled because the client went away (Starlette cancels the sending task and
    leaves a generator suspended at a ``yield`` to the garbage collector)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[Any]], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close
        self._content = content

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._content.aclose()  # type: ignore[attr-defined]
            finally:
                await self.on_close()


def _api_error(exc: EngineError) -> APIError:
    if exc.status == 404:
        return NotFound(exc.message, code=exc.code, param=exc.param)
    return APIError(exc.message, status=exc.status, code=exc.code, param=exc.param)


async def _body(request: Request) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise APIError(f"The JSON body is larger than {MAX_BODY} bytes.", status=413, code="payload_too_large")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The JSON body must be an object.", code="invalid_json")
    return body


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


# ---- the process ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tunegate.serving.local.server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--max-loras", type=int, default=4, help="adapters kept loaded per base model (LRU)")
    parser.add_argument("--max-base-models", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1, help="generations at once")
    parser.add_argument("--queue-size", type=int, default=16, help="requests waiting beyond those; more: 429")
    parser.add_argument("--default-max-tokens", type=int, default=512)
    return parser.parse_args(argv)


def _watch_stdin(server: Any) -> None:
    """Exit once stdin closes: the gateway that started this process (and holds the pipe) is gone."""
    with contextlib.suppress(Exception):
        while sys.stdin.buffer.read(4096):
            pass
    server.should_exit = True
    time.sleep(10)
    os._exit(0)  # a generation that ignores its cancel flag must not keep the process alive


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(argv)
    token = sys.stdin.readline().strip()
    if len(token) < 16:
        print("tunegate model server: the first line of stdin must be a bearer token (16+ characters)",
              file=sys.stderr)
        raise SystemExit(2)
    os.umask(0o077)
    engine = Engine(device=args.device, max_loras=args.max_loras, max_base_models=args.max_base_models,
                    default_max_tokens=args.default_max_tokens, threads=args.threads or None)
    server = Server(engine, Limits(args.concurrency, args.queue_size), token)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    config = uvicorn.Config(server.app(), log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=3)
    http = uvicorn.Server(config)
    threading.Thread(target=_watch_stdin, args=(http,), daemon=True, name="tg-stdin").start()
    print(json.dumps({"port": sock.getsockname()[1], "pid": os.getpid()}), flush=True)
    os.dup2(2, 1)  # nobody reads the pipe after that line: anything printed later goes to the log
    http.run(sockets=[sock])


if __name__ == "__main__":
    main()
