"""Chat with a Vertex AI model through OpenAI's chat completions, translated to and from generateContent.

A tuned Gemini model answers on its endpoint (a tuning job's ``tunedModel.endpoint``, which is the job's
``fine_tuned_model`` here): ``POST v1/{endpoint}:generateContent`` and ``:streamGenerateContent?alt=sse``
(Server-Sent Events, one GenerateContentResponse per event). Base models are ``publishers/{p}/models/{m}``.

Shapes: ``../shared/specs/vertex-aiplatform-v1-generatecontent.json`` (Google's aiplatform v1 discovery
document, revision 20261106: GenerateContentRequest, Content, Part, GenerationConfig, Tool,
FunctionDeclaration, ToolConfig, GenerateContentResponse, Candidate.finishReason, UsageMetadata). Model
names and the streaming wire follow googleapis/python-genai 2.19.0: ``google/genai/_transformers.py``
``t_model`` (``gemini-x`` → ``publishers/google/models/gemini-x``, ``pub/m`` → ``publishers/pub/models/m``,
``projects/…`` as is), ``_api_client.py`` (``projects/{p}/locations/{l}/`` prefixed; ``?alt=sse``; ``data: ``
lines; an event ``{"error": …}`` is an error). Endpoints: python-aiplatform ``aiplatform_v1/types/endpoint.py``.
See MAPPING.md, "Chat and models".
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from tunegate.errors import InvalidRequest, NotSupported, UpstreamError
from tunegate.providers.base import JSON, Provider
from tunegate.providers.vertex_ai import jobs
from tunegate.serving import shapes, sse
from tunegate.serving.request import refuse_unhandled, unsupported_param

if TYPE_CHECKING:
    from tunegate.context import RequestContext

NAME = "vertex-ai"
HANDLED = frozenset({"max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "n",
                     "presence_penalty", "frequency_penalty", "tools", "tool_choice", "parallel_tool_calls",
                     "response_format"})
WHY = {"logprobs": "tunegate does not translate Vertex log probabilities.",
       "top_logprobs": "tunegate does not translate Vertex log probabilities."}

_LOCATION = r"(?P<location>[a-z][a-z0-9-]{0,39})"
_PROJECT = r"projects/[a-z0-9][a-z0-9.:-]{0,62}"
ENDPOINT = re.compile(_PROJECT + "/locations/" + _LOCATION + r"/endpoints/[A-Za-z0-9_-]{1,128}")
# (API root, endpoint name as sent) -> the name Vertex answers with (project number). A project's id never
# names another project, so the pair never changes: kept (bounded) so that a chat by an unrecorded name costs
# one endpoints.get per name, host and process, not one per chat. The ownership check itself runs every time.
_CANONICAL: dict[tuple[str, str], str] = {}
_CANONICAL_KEPT = 4096
PUBLISHER_MODEL = re.compile(_PROJECT + "/locations/" + _LOCATION + r"/publishers/[a-z0-9-]{1,63}/models/[A-Za-z0-9._@-]{1,128}")
TUNED_MODEL = re.compile(_PROJECT + "/locations/" + _LOCATION + r"/models/[A-Za-z0-9_-]{1,128}(@[A-Za-z0-9_-]+)?")
_SHORT = re.compile(r"(?:publishers/(?P<pub>[a-z0-9-]{1,63})/models/|(?P<pub2>[a-z0-9-]{1,63})/)?(?P<model>[A-Za-z0-9._@-]{1,128})")
_MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp",
         "pdf": "application/pdf", "mp3": "audio/mp3", "wav": "audio/wav"}
# Candidate.finishReason → OpenAI. Reasons OpenAI has no word for are "stop", with Vertex's own in
# `provider_finish_reason` on the choice.
FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
          "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
          "MODEL_ARMOR": "content_filter", "IMAGE_SAFETY": "content_filter",
          "IMAGE_PROHIBITED_CONTENT": "content_filter", "IMAGE_RECITATION": "content_filter"}
LIST_PAGES = 20  # endpoints.list pages read for GET /v1/models (100 each)


# ---- OpenAI request → GenerateContentRequest -----------------------------------------------------


def generate_body(body: JSON) -> JSON:
    refuse_unhandled(NAME, body, HANDLED, WHY)
    system, contents = _contents(body["messages"])
    out: JSON = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": t} for t in system]}
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    tools = _tools(body)
    if tools:
        out["tools"] = tools
    if (tool_config := _tool_config(body)) is not None:
        out["toolConfig"] = tool_config
    return out


def _generation_config(body: JSON) -> JSON:
    config: JSON = {}
    pairs = (("maxOutputTokens", shapes.max_tokens(body)), ("temperature", body.get("temperature")),
             ("topP", body.get("top_p")), ("seed", body.get("seed")), ("presencePenalty", body.get("presence_penalty")),
             ("frequencyPenalty", body.get("frequency_penalty")))
    config.update((k, v) for k, v in pairs if v is not None)
    if body.get("seed") is not None and not -(2**31) <= body["seed"] < 2**31:  # GenerationConfig.seed: int32
        raise InvalidRequest("Vertex AI takes a seed that fits 32 bits.", param="seed", code="invalid_value")
    if (body.get("n") or 1) > 1:
        config["candidateCount"] = body["n"]
    if stop := shapes.stop_sequences(body):
        config["stopSequences"] = stop
    fmt = body.get("response_format") or {"type": "text"}
    if fmt.get("type") == "json_object":
        config["responseMimeType"] = "application/json"
    elif fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        config.update(responseMimeType="application/json", responseJsonSchema=schema or {"type": "object"})
    elif fmt.get("type") != "text":
        raise unsupported_param(NAME, "response_format", "It takes 'text', 'json_object' or 'json_schema'.")
    return config


def _contents(messages: list[JSON]) -> tuple[list[str], list[JSON]]:
    """(system texts, contents). Turns alternate user/model: consecutive turns of one role are joined
    (function responses after a model's calls are one user turn)."""
    system: list[str] = []
    contents: list[JSON] = []
    names: dict[str, str] = {}  # tool_call_id → function name (functionResponse needs the name)
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if msg.get("name") is not None:
            raise unsupported_param(NAME, f"{where}.name", "Gemini contents carry no participant name.")
        role = msg["role"]
        if role in ("system", "developer"):
            if text := _text_only(msg.get("content"), where):
                system.append(text)
            continue
        if role == "function":
            raise unsupported_param(NAME, f"{where}.role", "Use 'tool' messages (function messages are deprecated).")
        native, parts = _turn(msg, where, names)
        if not parts:
            raise InvalidRequest(f"'{where}' has no content Vertex AI can send.", param=where, code="invalid_value")
        if contents and contents[-1]["role"] == native:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": native, "parts": parts})
    return system, contents


def _turn(msg: JSON, where: str, names: dict[str, str]) -> tuple[str, list[JSON]]:
    role = msg["role"]
    if role == "tool":
        call_id = msg.get("tool_call_id")
        if call_id not in names:
            raise InvalidRequest(f"'{where}.tool_call_id' names no tool call of an earlier assistant message.",
                                 param=f"{where}.tool_call_id", code="invalid_value")
        text = _text_only(msg.get("content"), where)
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = None
        # FunctionResponse.response: a JSON object; plain output goes under "output" (the spec's word).
        response = value if isinstance(value, dict) else {"output": text}
        return "user", [{"functionResponse": {"name": names[call_id], "response": response}}]
    parts = _parts(msg.get("content"), where)
    if role == "assistant":
        for j, call in enumerate(msg.get("tool_calls") or []):
            part, call_id, name = _function_call(call, f"{where}.tool_calls[{j}]")
            names[call_id] = name
            parts.append(part)
        return "model", parts
    return "user", parts


def _text_only(content: Any, where: str) -> str:
    if isinstance(content, list) and any(p.get("type") not in ("text", "input_text") for p in content):
        raise InvalidRequest(f"'{where}.content' may hold only text here.", param=f"{where}.content",
                             code="invalid_value")
    return shapes.text_of(content)


def _parts(content: Any, where: str) -> list[JSON]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[JSON] = []
    for k, part in enumerate(content):
        kind, at = part["type"], f"{where}.content[{k}]"
        if kind in ("text", "input_text"):
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            parts.append(_media((part.get("image_url") or {}).get("url"), f"{at}.image_url"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            if audio.get("format") not in ("mp3", "wav") or not isinstance(audio.get("data"), str):
                raise InvalidRequest(f"'{at}.input_audio' needs base64 'data' and a format of mp3 or wav.",
                                     param=f"{at}.input_audio", code="invalid_value")
            parts.append({"inlineData": {"mimeType": _MIME[audio["format"]], "data": audio["data"]}})
        else:
            raise unsupported_param(NAME, f"{at}.type", f"Gemini parts take text, images and audio, not '{kind}'.")
    return parts


def _media(url: Any, where: str) -> JSON:
    """A data URL → inlineData (Blob); a gs:// or https:// URI → fileData, which Vertex reads itself (the
    gateway fetches nothing). fileData needs a MIME type: taken from the name's extension."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"'{where}.url' is required.", param=where, code="invalid_value")
    if url.startswith("data:"):
        mime, _, data = url[5:].partition(";base64,")
        if not mime or not data:
            raise InvalidRequest(f"'{where}' must be a base64 data URL.", param=where, code="invalid_value")
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(("gs://", "https://")):
        ext = url.split("?", 1)[0].rsplit(".", 1)[-1].lower()
        if ext not in _MIME:
            raise InvalidRequest(f"'{where}': Vertex needs the file's type; name it with one of "
                                 f"{', '.join(sorted(_MIME))}.", param=where, code="invalid_value")
        return {"fileData": {"mimeType": _MIME[ext], "fileUri": url}}
    raise unsupported_param(NAME, where, "Vertex takes data URLs, gs:// and https:// URIs.")


def _function_call(call: Any, where: str) -> tuple[JSON, str, str]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(call.get("id"), str) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"'{where}' must have an id and a function name.", param=where, code="invalid_value")
    try:
        args = orjson.loads(fn.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise InvalidRequest(f"'{where}.function.arguments' must be a JSON object.",
                             param=f"{where}.function.arguments", code="invalid_value")
    return {"functionCall": {"name": fn["name"], "args": args}}, call["id"], fn["name"]


def _tools(body: JSON) -> list[JSON]:
    declarations = []
    for i, tool in enumerate(body.get("tools") or []):
        fn = tool.get("function")
        if tool.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise unsupported_param(NAME, f"tools[{i}].type", "Gemini takes function tools only.")
        decl: JSON = {"name": fn["name"]}
        if fn.get("description"):
            decl["description"] = fn["description"]
        if fn.get("parameters"):
            decl["parametersJsonSchema"] = fn["parameters"]  # JSON Schema as is (FunctionDeclaration)
        declarations.append(decl)
    return [{"functionDeclarations": declarations}] if declarations else []


def _tool_config(body: JSON) -> JSON | None:
    choice = body.get("tool_choice")
    if body.get("parallel_tool_calls") is False:
        raise unsupported_param(NAME, "parallel_tool_calls", "Gemini cannot limit a turn to one function call.")
    if choice is None:
        return None
    if not body.get("tools") and choice != "none":
        raise InvalidRequest("'tool_choice' needs 'tools'.", param="tool_choice", code="invalid_value")
    modes = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
    if isinstance(choice, str) and choice in modes:
        return {"functionCallingConfig": {"mode": modes[choice]}}
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str) or choice.get("type") != "function":
        raise InvalidRequest("'tool_choice' must be none, auto, required or name a function.", param="tool_choice",
                             code="invalid_value")
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}


# ---- GenerateContentResponse → chat.completion / chunks ---------------------------------------------


def _split(parts: list[Any]) -> tuple[str | None, list[JSON]]:
    """(text, function calls) of a candidate's parts; thought parts are left out (OpenAI's message has no
    place for them)."""
    text = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")]
    calls = [{"id": str(p["functionCall"].get("id") or "call_" + secrets.token_hex(12)), "type": "function",
              "function": {"name": str(p["functionCall"].get("name", "")),
                           "arguments": orjson.dumps(p["functionCall"].get("args") or {}).decode()}}
             for p in parts if isinstance(p, dict) and isinstance(p.get("functionCall"), dict)]
    return ("".join(text) if text else None), calls


def _finish(reason: Any, has_calls: bool) -> tuple[str, str | None]:
    """(OpenAI finish_reason, Vertex's own when OpenAI has no word for it)."""
    word = str(reason or "STOP")
    if word in ("STOP", "FINISH_REASON_UNSPECIFIED"):
        return ("tool_calls" if has_calls else "stop"), None
    return FINISH.get(word, "stop"), (None if word in FINISH else word)


def usage_of(raw: Any) -> JSON | None:
    if not isinstance(raw, dict):
        return None
    completion = int(raw.get("candidatesTokenCount") or 0) + int(raw.get("thoughtsTokenCount") or 0)
    return shapes.usage(int(raw.get("promptTokenCount") or 0), completion)


def to_completion(raw: JSON, body: JSON) -> JSON:
    choices = []
    for position, cand in enumerate(raw.get("candidates") or []):
        text, calls = _split(((cand.get("content") or {}).get("parts")) or [])
        finish, own = _finish(cand.get("finishReason"), bool(calls))
        choice = shapes.choice(int(cand.get("index") or position), shapes.message(text, calls or None), finish)
        if own:
            choice["provider_finish_reason"] = own
        choices.append(choice)
    if not choices:  # the prompt itself was blocked: promptFeedback.blockReason
        block = (raw.get("promptFeedback") or {}).get("blockReason") or "NO_CANDIDATES"
        choices = [{**shapes.choice(0, shapes.message(None), "content_filter"), "provider_finish_reason": block}]
    rid = raw.get("responseId")
    return shapes.completion("chatcmpl-" + str(rid) if rid else shapes.completion_id(), body["model"], choices,
                             usage_of(raw.get("usageMetadata")))


class StreamTranslator:
    def __init__(self, body: JSON) -> None:
        self.id = shapes.completion_id()
        self.model = str(body["model"])
        self.created = int(time.time())
        self.include_usage = shapes.include_usage(body)
        self.started: set[int] = set()
        self.calls: dict[int, int] = {}  # candidate → tool calls sent so far
        self.usage: JSON | None = None

    def chunk(self, raw: JSON) -> JSON | None:
        if isinstance(raw.get("usageMetadata"), dict):
            self.usage = usage_of(raw["usageMetadata"])  # cumulative: the last one counts
        choices = [self._delta(position, cand) for position, cand in enumerate(raw.get("candidates") or [])
                   if isinstance(cand, dict)]
        if not choices:
            block = (raw.get("promptFeedback") or {}).get("blockReason")
            if not block:
                return None
            choices = [{**shapes.delta_choice(0, {"role": "assistant", "content": None}, "content_filter"),
                        "provider_finish_reason": block}]
        return shapes.chunk(self.id, self.model, self.created, choices)

    def _delta(self, position: int, cand: JSON) -> JSON:
        index = int(cand.get("index") or position)
        text, calls = _split(((cand.get("content") or {}).get("parts")) or [])
        delta: JSON = {}
        if index not in self.started:
            self.started.add(index)
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        if calls:
            first = self.calls.get(index, 0)
            delta["tool_calls"] = [{"index": first + k, **call} for k, call in enumerate(calls)]
            self.calls[index] = first + len(calls)
        finish, own = (None, None)
        if cand.get("finishReason"):
            finish, own = _finish(cand["finishReason"], self.calls.get(index, 0) > 0)
        out = shapes.delta_choice(index, delta, finish)
        if own:
            out["provider_finish_reason"] = own
        return out

    def last(self) -> JSON | None:
        if not self.include_usage:
            return None
        return shapes.chunk(self.id, self.model, self.created, [], self.usage)


def stream_error(ctx: RequestContext, raw: Any) -> UpstreamError:
    """``{"error": {"code", "message", "status"}}`` inside the stream (python-genai raises on it too)."""
    err = raw if isinstance(raw, dict) else {}
    status = err.get("code") if isinstance(err.get("code"), int) and 400 <= err["code"] < 600 else 502
    message = ctx.redact(str(err.get("message") or "Vertex AI reported an error in the stream."))[:2000]
    return UpstreamError(message, status=status, code=ctx.redact(str(err.get("status") or "upstream_stream_error")
                                                                   ).lower()[:64])


# ---- the adapter's side ---------------------------------------------------------------------------


class VertexChat(Provider):
    """Chat and models for :class:`~tunegate.providers.vertex_ai.VertexAI` (which supplies ``call``, ``auth``,
    ``api_root``, ``project`` and ``region``)."""

    async def call(self, ctx: RequestContext, method: str, url: str, *, params: list[tuple[str, str]] | None = None,
                   json: Any = None, idempotent: bool) -> Any:
        raise NotImplementedError

    async def auth(self, ctx: RequestContext) -> dict[str, str]:
        raise NotImplementedError

    def api_root(self, ctx: RequestContext, location: str) -> str:
        raise NotImplementedError

    def project(self, ctx: RequestContext) -> str:
        raise NotImplementedError

    def region(self, ctx: RequestContext) -> str:
        raise NotImplementedError

    def resource(self, ctx: RequestContext, model: str) -> tuple[str, str]:
        """(resource name that answers generateContent, its location) for the model the client named."""
        for grammar in (ENDPOINT, PUBLISHER_MODEL):
            if m := grammar.fullmatch(model):
                return model, m["location"]
        if TUNED_MODEL.fullmatch(model):
            raise InvalidRequest(f"'{model}' is a model resource: Vertex AI answers on an endpoint. Use the tuning "
                                 "job's fine_tuned_model (its tunedModel.endpoint) or the endpoint it is deployed to.",
                                 param="model", code="model_not_deployed")
        short = _SHORT.fullmatch(model) if not model.startswith("projects/") else None
        if short is None:
            raise InvalidRequest(f"'{model}' is not a Vertex AI endpoint, publisher model or model id.", param="model",
                                 code="invalid_value")
        publisher = short["pub"] or short["pub2"] or "google"
        region = self.region(ctx)
        return f"projects/{self.project(ctx)}/locations/{region}/publishers/{publisher}/models/{short['model']}", region

    async def owned_resource(self, ctx: RequestContext, model: str) -> tuple[str, str]:
        """``resource``, with the ownership rule held on the endpoint's canonical name. An endpoint's name may
        carry the project id or the project number; Vertex serves either and names it by the number, the
        spelling the registry records (a job's ``fine_tuned_model``). The gateway checked the spelling the
        client sent; an endpoint name the registry does not know is read first (endpoints.get) and checked
        again under the name Vertex answers with, so another key's tuned model is the same 404 under any
        spelling (docs/security.md, rule 3). An open gateway reaches everything: nothing to check there."""
        name, location = self.resource(ctx, model)
        if (ENDPOINT.fullmatch(name) and ctx.key is not None and ctx.store is not None
                and await ctx.store.placement("model", name) is None):
            canonical = _CANONICAL.get((self.api_root(ctx, location), name))
            if canonical is None:
                await self._canonical_endpoint(ctx, name, location)
            elif canonical != name:
                await ctx.check_named("model", canonical, shown=name)
        return name, location

    async def _canonical_endpoint(self, ctx: RequestContext, name: str, location: str) -> JSON:
        """endpoints.get, and the ownership check on the name Vertex answers with when it is another spelling."""
        root = self.api_root(ctx, location)
        raw = await self.call(ctx, "GET", f"{root}/{name}", idempotent=True)
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not ENDPOINT.fullmatch(raw["name"]):
            raise UpstreamError("Vertex AI answered endpoints.get without an endpoint name.", status=502,
                                code="upstream_invalid_response")
        if len(_CANONICAL) >= _CANONICAL_KEPT:
            _CANONICAL.clear()
        _CANONICAL[(root, name)] = raw["name"]
        if raw["name"] != name:
            await ctx.check_named("model", raw["name"], shown=name)
        return raw

    async def chat(self, ctx: RequestContext, body: JSON) -> JSON:
        native = generate_body(body)
        name, location = await self.owned_resource(ctx, str(body["model"]))
        url = f"{self.api_root(ctx, location)}/{name}:generateContent"
        return to_completion(await self.call(ctx, "POST", url, json=native, idempotent=True), body)

    async def chat_stream(self, ctx: RequestContext, body: JSON) -> AsyncIterator[JSON]:
        native = generate_body(body)
        name, location = await self.owned_resource(ctx, str(body["model"]))
        url = f"{self.api_root(ctx, location)}/{name}:streamGenerateContent"
        resp = await self.open_stream(ctx, "POST", url, headers=await self.auth(ctx), params=[("alt", "sse")],
                                      json=native)
        return self._chunks(ctx, resp, StreamTranslator(body))

    async def _chunks(self, ctx: RequestContext, resp: aiohttp.ClientResponse,
                      translator: StreamTranslator) -> AsyncIterator[JSON]:
        body = self.body_chunks(resp)
        events = sse.events(body)
        try:
            async for event in events:
                raw = event.json()
                if not isinstance(raw, dict):
                    continue
                if "error" in raw:
                    raise stream_error(ctx, raw["error"])
                if (chunk := translator.chunk(raw)) is not None:
                    yield chunk
        finally:
            for stream in (events, body):  # the body's own finally releases the connection now
                closer = getattr(stream, "aclose", None)
                if closer is not None:
                    await closer()
        if (last := translator.last()) is not None:
            yield last

    # ---- models: endpoints ----

    async def retrieve_model(self, ctx: RequestContext, model: str) -> JSON:
        if not (m := ENDPOINT.fullmatch(model)):
            raise NotSupported("Vertex AI models are described here by endpoint "
                               "(projects/{p}/locations/{l}/endpoints/{e}, a tuning job's fine_tuned_model).")
        return endpoint_model(await self._canonical_endpoint(ctx, model, m["location"]))

    async def list_models(self, ctx: RequestContext) -> JSON:
        """endpoints.list in the request's project and region (every page, up to LIST_PAGES)."""
        region = self.region(ctx)
        url = f"{self.api_root(ctx, region)}/projects/{self.project(ctx)}/locations/{region}/endpoints"
        items: list[JSON] = []
        token = None
        for _ in range(LIST_PAGES):
            params = [("pageSize", "100")] + ([("pageToken", token)] if token else [])
            raw = await self.call(ctx, "GET", url, params=params, idempotent=True) or {}
            items.extend(endpoint_model(e) for e in raw.get("endpoints") or [] if isinstance(e, dict) and e.get("name"))
            token = raw.get("nextPageToken")
            if not token:
                break
        return shapes.model_list(items)


def endpoint_model(raw: JSON) -> JSON:
    """An Endpoint as an OpenAI model: ready when a model is deployed to it."""
    name = str(raw["name"])
    deployed = [d for d in raw.get("deployedModels") or [] if isinstance(d, dict)]
    created = jobs.unix(raw.get("createTime"))
    return shapes.model_object(name, name.split("/")[1], created, display_name=raw.get("displayName"),
                               deployed_models=[d.get("model") for d in deployed], ready=bool(deployed))

