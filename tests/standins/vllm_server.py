"""A stand-in for `vllm serve` (run as the executable the gateway starts: `vllm_server.py serve BASE ...`).

It answers vLLM's OpenAI-compatible routes as vLLM's source does (vllm-project/vllm, read at
main 2025/2026):
* `GET /health` -> 200, empty body, no auth (vllm/entrypoints/openai/api_server.py);
* every `/v1/*` route needs `Authorization: Bearer $VLLM_API_KEY` when that variable is set, else 401
  `{"error": "Unauthorized"}` (api_server.py, the API-key middleware; docs: "--api-key or VLLM_API_KEY");
* `POST /v1/load_lora_adapter {lora_name, lora_path}` -> 200 text
  "Success: LoRA adapter '<name>' added successfully."; a name already loaded -> 400 "The lora adapter
  '<name>' has already been loaded." (vllm/entrypoints/openai/serving_models.py,
  vllm/entrypoints/serve/lora/api_router.py); only when VLLM_ALLOW_RUNTIME_LORA_UPDATING is set;
* `POST /v1/unload_lora_adapter {lora_name}` -> 200 text, unknown -> 404;
* `POST /v1/chat/completions` with the base model's name or a loaded lora_name -> a chat.completion (or
  SSE chunks) whose `model` is the name asked for; any other model -> 404 (vLLM's model check).
It writes its argv and the LoRA/API-key variables it saw to `$VLLM_STANDIN_RECORD` (a JSON file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from aiohttp import web


def main() -> None:
    argv = sys.argv[1:]
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("model")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args, _rest = parser.parse_known_args(argv)
    record = os.environ.get("VLLM_STANDIN_RECORD") or os.path.join(os.path.dirname(os.path.abspath(args.model)),
                                                                    "vllm-record.json")
    loras: dict[str, str] = {}
    loads: list[dict[str, object]] = []
    key = os.environ.get("VLLM_API_KEY")

    def save() -> None:
        with open(record, "w") as fh:
            json.dump({"argv": argv, "runtime_lora": os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
                       "api_key_set": bool(key), "env_names": sorted(os.environ), "loads": loads}, fh)

    @web.middleware
    async def auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if request.path.startswith("/v1") and key and request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(request: web.Request) -> web.Response:
        data = [{"id": args.model, "object": "model", "owned_by": "vllm", "root": args.model, "parent": None}]
        data += [{"id": n, "object": "model", "owned_by": "vllm", "root": p, "parent": args.model}
                 for n, p in loras.items()]
        return web.json_response({"object": "list", "data": data})

    def error(message: str, status: int, kind: str) -> web.Response:
        return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": status}},
                                 status=status)

    async def load(request: web.Request) -> web.Response:
        body = await request.json()
        loads.append(body)
        save()
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return error("Both 'lora_name' and 'lora_path' must be provided.", 400, "InvalidUserInput")
        if name in loras:
            return error(f"The lora adapter '{name}' has already been loaded.", 400, "InvalidUserInput")
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):  # noqa: ASYNC240 - a stand-in
            return error(f"No adapter found for {path}", 404, "NotFoundError")
        loras[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(request: web.Request) -> web.Response:
        name = (await request.json()).get("lora_name")
        if name not in loras:
            return error(f"The lora adapter '{name}' cannot be found.", 404, "NotFoundError")
        del loras[name]
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model")
        if model != args.model and model not in loras:
            return error(f"The model `{model}` does not exist.", 404, "NotFoundError")
        text = f"adapter {model}" if model in loras else "base"
        created = int(time.time())
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-standin", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                             "logprobs": None}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in (text.split(" ", 1) if " " in text else [text]):
            chunk = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None, "logprobs": None}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application(middlewares=[auth])
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    if os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("true", "1"):
        app.router.add_post("/v1/load_lora_adapter", load)
        app.router.add_post("/v1/unload_lora_adapter", unload)
    save()
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
