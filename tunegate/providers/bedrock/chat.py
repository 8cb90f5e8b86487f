"""Chat with a Bedrock model through OpenAI's chat completions, translated to and from the Converse API.

Converse (``POST /model/{modelId}/converse``) and ConverseStream (``…/converse-stream``, answered as AWS
event-stream frames) on the bedrock-runtime endpoint; deployments and custom models on the control plane.
Every shape is botocore 1.44.8's model (boto/botocore ``botocore/data/bedrock-runtime/2023-09-30/service-2.json``:
ConverseRequest, ConverseResponse, ConverseStreamOutput; ``botocore/data/bedrock/2023-04-20/service-2.json``:
CreateCustomModelDeployment, GetCustomModelDeployment, ListCustomModelDeployments, ListCustomModels,
GetCustomModel, DeleteCustomModel, DeleteCustomModelDeployment, GetProvisionedModelThroughput). See MAPPING.md,
"Chat and models".

Ownership (docs/security.md): a deployment made here is recorded as the deploying key's ("model", by the ARN
CreateCustomModelDeployment answers with); a deployment serves its custom model, so one the registry does
not hold is held to the rule under that model's ARN; another key's deployments are left out of what a key
reads and of the deployment its chat is routed through. A custom model or deployment named by its short
name is resolved (GetCustomModel, GetCustomModelDeployment, GetProvisionedModelThroughput), checked under its
ARNs and called by its ARN; a provisioned throughput the registry does not hold is held to the rule under its
model's ARN like a deployment.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import orjson

from tunegate.aws import REGION
from tunegate.errors import InvalidRequest, NotFound, UpstreamError
from tunegate.providers.base import JSON, Provider, whole_number
from tunegate.providers.bedrock import aws, eventstream, jobs
from tunegate.serving import shapes
from tunegate.serving.request import refuse_unhandled, unsupported_param

if TYPE_CHECKING:
    from tunegate.context import RequestContext

NAME = "bedrock"
# What Converse can be asked for; everything else the client sends is refused by name (never dropped).
HANDLED = frozenset({"max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "tools", "tool_choice",
                     "parallel_tool_calls", "response_format"})
WHY = {"n": "Converse returns one answer per call.", "seed": "Converse takes no seed.",
       "logprobs": "Converse returns no log probabilities.", "top_logprobs": "Converse returns no log probabilities.",
       "presence_penalty": "Converse's inferenceConfig has no penalties.",
       "frequency_penalty": "Converse's inferenceConfig has no penalties."}

# ConversationalModelId's ARN forms (bedrock-runtime service-2.json): a deployment or a provisioned
# throughput can be invoked; a custom model ARN alone cannot (on-demand use goes through a deployment).
_INVOCABLE = re.compile(r"arn:aws(-[^:]+)?:bedrock:([a-z0-9-]{1,20}):[0-9]{12}:"
                        r"(custom-model-deployment|provisioned-model)/[a-z0-9]{12}")
_CUSTOM = re.compile(r"arn:aws(-[^:]+)?:bedrock:([a-z0-9-]{1,20}):[0-9]{12}:custom-model/[^\s/]+(/[^\s/]+)?")
_DEPLOYMENT_NAME = re.compile(r"([0-9a-zA-Z][_-]?){1,63}")  # ModelDeploymentName
_DEPLOYMENT_ARN = re.compile(r"arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:custom-model-deployment/[a-z0-9]{12}")
_PROVISIONED_ARN = re.compile(r"arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:provisioned-model/[a-z0-9]{12}")
# Where the control plane describes each invocable thing (GetCustomModelDeployment, GetProvisionedModelThroughput:
# both take the ARN or the name), and the member of the answer holding its ARN.
_DESCRIBED = (("/model-customization/custom-model-deployments/", "customModelDeploymentArn", _DEPLOYMENT_ARN),
              ("/provisioned-model-throughput/", "provisionedModelArn", _PROVISIONED_ARN))
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                  "image/webp": "webp"}  # ImageFormat enum
# StopReason → OpenAI finish_reason. malformed_* have no OpenAI word: "stop", with Bedrock's own in
# `provider_finish_reason` on the choice.
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "content_filtered": "content_filter", "guardrail_intervened": "content_filter",
          "model_context_window_exceeded": "length"}
# ConverseStreamOutput's exception members and their httpStatusCode in the model.
STREAM_EXCEPTIONS = {"internalServerException": 500, "modelStreamErrorException": 424, "validationException": 400,
                     "throttlingException": 429, "serviceUnavailableException": 503}
DEPLOYMENT_TTL = 60.0  # seconds a resolved chat model (its deployment, its ARNs) is reused without asking again
DEPLOYMENT_CACHE = 1024


# ---- OpenAI request → ConverseRequest ------------------------------------------------------------


def converse_body(body: JSON) -> JSON:
    refuse_unhandled(NAME, body, HANDLED, WHY)
    system, messages = _messages(body["messages"])
    out: JSON = {"messages": messages}
    if system:
        out["system"] = system
    config = _inference_config(body)
    if config:
        out["inferenceConfig"] = config
    tool_config = _tool_config(body, messages)
    if tool_config:
        out["toolConfig"] = tool_config
    fmt = body.get("response_format")
    if fmt and fmt.get("type") != "text":
        out["outputConfig"] = _output_config(fmt)
    return out


def _inference_config(body: JSON) -> JSON:
    config: JSON = {}
    if (limit := shapes.max_tokens(body)) is not None:
        config["maxTokens"] = limit
    temperature = body.get("temperature")
    if temperature is not None:
        if temperature > 1:  # InferenceConfigurationTemperatureFloat: 0–1
            raise InvalidRequest("Bedrock's Converse takes a temperature from 0 to 1.", param="temperature",
                                 code="invalid_value")
        config["temperature"] = temperature
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    if stop := shapes.stop_sequences(body):
        if any(not s for s in stop):  # NonEmptyString
            raise InvalidRequest("Bedrock refuses an empty stop sequence.", param="stop", code="invalid_value")
        config["stopSequences"] = stop
    return config


def _messages(messages: list[JSON]) -> tuple[list[JSON], list[JSON]]:
    """(system blocks, messages). Converse keeps system text apart; consecutive turns of one role are
    joined into one message (tool results after a tool call are one user turn)."""
    system: list[JSON] = []
    turns: list[JSON] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if msg.get("name") is not None:
            raise unsupported_param(NAME, f"{where}.name", "Converse messages carry no participant name.")
        role = msg["role"]
        if role in ("system", "developer"):
            system.extend({"text": t} for t in [_text_only(msg.get("content"), where)] if t)
            continue
        if role == "function":
            raise unsupported_param(NAME, f"{where}.role", "Use 'tool' messages (function messages are deprecated).")
        native_role, blocks = _turn(msg, where)
        if not blocks:
            raise InvalidRequest(f"'{where}' has no content Bedrock can send.", param=where, code="invalid_value")
        if turns and turns[-1]["role"] == native_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": native_role, "content": blocks})
    return system, turns


def _turn(msg: JSON, where: str) -> tuple[str, list[JSON]]:
    role = msg["role"]
    if role == "tool":
        call_id = msg.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidRequest(f"'{where}.tool_call_id' is required on a tool message.",
                                 param=f"{where}.tool_call_id", code="missing_required_parameter")
        text = _text_only(msg.get("content"), where)
        return "user", [{"toolResult": {"toolUseId": call_id, "content": [{"text": text}]}}]
    blocks = _content_blocks(msg.get("content"), where)
    if role == "assistant":
        blocks.extend(_tool_use(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(msg.get("tool_calls") or []))
    return role, blocks


def _text_only(content: Any, where: str) -> str:
    if isinstance(content, list) and any(p.get("type") not in ("text", "input_text") for p in content):
        raise InvalidRequest(f"'{where}.content' may hold only text here.", param=f"{where}.content",
                             code="invalid_value")
    return shapes.text_of(content)


def _content_blocks(content: Any, where: str) -> list[JSON]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"text": content}]
    blocks: list[JSON] = []
    for k, part in enumerate(content):
        kind = part["type"]
        if kind in ("text", "input_text"):
            if part.get("text"):
                blocks.append({"text": str(part["text"])})
        elif kind == "image_url":
            blocks.append({"image": _image(part.get("image_url"), f"{where}.content[{k}]")})
        else:
            raise unsupported_param(NAME, f"{where}.content[{k}].type", f"Converse takes text and images, not '{kind}'.")
    return blocks


def _image(image: Any, where: str) -> JSON:
    """ImageBlock: a data URL's bytes (base64, as the JSON protocol carries blobs) or an s3:// object. Other
    URLs are refused: the gateway does not fetch what a client points at."""
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str):
        raise InvalidRequest(f"'{where}.image_url.url' is required.", param=f"{where}.image_url", code="invalid_value")
    if url.startswith("data:"):
        mime, _, data = url[5:].partition(";base64,")
        if mime not in _IMAGE_FORMATS or not data:
            raise InvalidRequest(f"'{where}' must be a base64 data URL of a PNG, JPEG, GIF or WebP image.",
                                 param=f"{where}.image_url", code="invalid_value")
        return {"format": _IMAGE_FORMATS[mime], "source": {"bytes": data}}
    if url.startswith("s3://"):
        ext = url.rsplit(".", 1)[-1].lower()
        fmt = {"jpg": "jpeg"}.get(ext, ext)
        if fmt not in _IMAGE_FORMATS.values():
            raise InvalidRequest(f"'{where}': the s3:// object's name must end in .png, .jpeg, .jpg, .gif or .webp.",
                                 param=f"{where}.image_url", code="invalid_value")
        return {"format": fmt, "source": {"s3Location": {"uri": url}}}
    raise unsupported_param(NAME, f"{where}.image_url", "Bedrock takes images as data URLs or s3:// URIs.")


def _tool_use(call: Any, where: str) -> JSON:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(call.get("id"), str) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"'{where}' must have an id and a function name.", param=where, code="invalid_value")
    try:
        arguments = orjson.loads(fn.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"'{where}.function.arguments' must be a JSON object.", param=f"{where}.function.arguments",
                             code="invalid_value")
    return {"toolUse": {"toolUseId": call["id"], "name": fn["name"], "input": arguments}}


def _tool_config(body: JSON, messages: list[JSON]) -> JSON | None:
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    if body.get("parallel_tool_calls") is False:
        raise unsupported_param(NAME, "parallel_tool_calls", "Converse cannot limit a turn to one tool call.")
    if choice == "none" or not tools:
        if choice not in (None, "none"):
            raise InvalidRequest("'tool_choice' needs 'tools'.", param="tool_choice", code="invalid_value")
        uses_tools = any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"])
        if tools and uses_tools:  # Converse needs toolConfig whenever the history holds tool blocks
            raise unsupported_param(NAME, "tool_choice", "'none' cannot be expressed once tools were used.")
        return None
    specs = [_tool_spec(t, f"tools[{i}]") for i, t in enumerate(tools)]
    config: JSON = {"tools": specs}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if choice.get("type") != "function" or not isinstance(name, str):
            raise InvalidRequest("'tool_choice' must name a function.", param="tool_choice", code="invalid_value")
        config["toolChoice"] = {"tool": {"name": name}}
    elif choice is not None:
        raise InvalidRequest(f"'tool_choice' '{choice}' is not one of none, auto, required.", param="tool_choice",
                             code="invalid_value")
    return config


def _tool_spec(tool: JSON, where: str) -> JSON:
    fn = tool.get("function")
    if tool.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise unsupported_param(NAME, f"{where}.type", "Converse takes function tools only.")
    spec: JSON = {"name": fn["name"], "inputSchema": {"json": fn.get("parameters") or {"type": "object"}}}
    if fn.get("description"):
        spec["description"] = fn["description"]
    if fn.get("strict") is not None:
        spec["strict"] = bool(fn["strict"])
    return {"toolSpec": spec}


def _output_config(fmt: JSON) -> JSON:
    """OutputConfig.textFormat (json_schema only: Converse has no plain JSON mode)."""
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("json_schema"), dict):
        raise unsupported_param(NAME, "response_format", "Converse takes 'text' or 'json_schema'.")
    spec = fmt["json_schema"]
    definition: JSON = {"schema": orjson.dumps(spec.get("schema") or {}).decode()}
    for key in ("name", "description"):
        if spec.get(key):
            definition[key] = spec[key]
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}}


# ---- ConverseResponse → chat.completion ----------------------------------------------------------


def to_completion(raw: JSON, body: JSON) -> JSON:
    message = ((raw.get("output") or {}).get("message") or {})
    text: list[str] = []
    calls: list[JSON] = []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            text.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            calls.append({"id": str(use.get("toolUseId", "")), "type": "function", "function": {
                "name": str(use.get("name", "")), "arguments": orjson.dumps(use.get("input", {})).decode()}})
    reason = str(raw.get("stopReason") or "")
    choice = shapes.choice(0, shapes.message("".join(text) if text or not calls else None, calls or None),
                           FINISH.get(reason, "stop"))
    if reason not in FINISH:
        choice["provider_finish_reason"] = reason
    return shapes.completion(shapes.completion_id(), body["model"], [choice], _usage(raw.get("usage")))


def _usage(raw: Any) -> JSON | None:
    if not isinstance(raw, dict):
        return None
    return shapes.usage(whole_number(raw.get("inputTokens")) or 0, whole_number(raw.get("outputTokens")) or 0)


# ---- ConverseStream frames → chat.completion.chunk ----------------------------------------------


class StreamTranslator:
    """One stream's state: the chunk id and time, and which content blocks are tool calls (their index in
    OpenAI's ``tool_calls``)."""

    def __init__(self, body: JSON) -> None:
        self.id = shapes.completion_id()
        self.model = str(body["model"])
        self.created = int(time.time())
        self.include_usage = shapes.include_usage(body)
        self.tool_index: dict[int, int] = {}

    def chunk(self, delta: JSON | None, finish: str | None = None, usage: JSON | None = None) -> JSON:
        choices = [] if delta is None else [shapes.delta_choice(0, delta, finish)]
        return shapes.chunk(self.id, self.model, self.created, choices, usage)

    def translate(self, frame: eventstream.Frame, ctx: RequestContext) -> JSON | None:
        if frame.message_type != "event":
            raise _frame_error(frame, ctx)
        event = frame.json()
        if not isinstance(event, dict):
            return None
        if frame.name == "messageStart":
            return self.chunk({"role": "assistant", "content": ""})
        if frame.name == "contentBlockStart":
            return self._block_start(event)
        if frame.name == "contentBlockDelta":
            return self._block_delta(event)
        if frame.name == "messageStop":
            reason = str(event.get("stopReason") or "")
            out = self.chunk({}, FINISH.get(reason, "stop"))
            if reason not in FINISH:
                out["choices"][0]["provider_finish_reason"] = reason
            return out
        if frame.name == "metadata" and self.include_usage:
            return self.chunk(None, usage=_usage(event.get("usage")))
        return None  # contentBlockStop, metadata without include_usage: nothing to tell

    def _block_start(self, event: JSON) -> JSON | None:
        use = (event.get("start") or {}).get("toolUse")
        if not isinstance(use, dict):
            return None
        index = self.tool_index.setdefault(whole_number(event.get("contentBlockIndex")) or 0, len(self.tool_index))
        return self.chunk({"tool_calls": [{"index": index, "id": str(use.get("toolUseId", "")), "type": "function",
                                           "function": {"name": str(use.get("name", "")), "arguments": ""}}]})

    def _block_delta(self, event: JSON) -> JSON | None:
        delta = event.get("delta") or {}
        if isinstance(delta.get("text"), str):
            return self.chunk({"content": delta["text"]})
        use = delta.get("toolUse")
        block = whole_number(event.get("contentBlockIndex")) or 0
        if isinstance(use, dict) and block in self.tool_index:
            return self.chunk({"tool_calls": [{"index": self.tool_index[block],
                                               "function": {"arguments": str(use.get("input", ""))}}]})
        return None  # reasoning, citations: OpenAI's chunk has no place for them (see MAPPING.md)


def _frame_error(frame: eventstream.Frame, ctx: RequestContext) -> UpstreamError:
    """An exception frame (a modelled exception, payload ``{"message"}``) or an error frame (headers only)."""
    if frame.message_type == "exception":
        data = frame.json()
        message = data.get("message") or data.get("Message") if isinstance(data, dict) else None
        status = STREAM_EXCEPTIONS.get(frame.name, 502)
    else:
        message, status = frame.error_message, 502
    text = ctx.redact(str(message or f"Bedrock ended the stream with {frame.name or 'an error'}."))[:2000]
    return UpstreamError(text, status=status, code=ctx.redact(frame.name or "upstream_stream_error")[:64])


# ---- the adapter's side ---------------------------------------------------------------------------


class BedrockChat(Provider):
    """Chat and models for :class:`~tunegate.providers.bedrock.Bedrock` (which supplies ``credentials``)."""

    def __init__(self) -> None:
        super().__init__()
        # (caller's AWS identity, region, endpoint, model as named) → (the modelId Converse is called with, the
        # ARNs found on the way, each checked again on every hit, the tunegate key owning that modelId if any,
        # found at)
        self._deployed: OrderedDict[str, tuple[str, tuple[str, ...], str | None, float]] = OrderedDict()

    async def credentials(self, ctx: RequestContext) -> aws.AwsAuth:
        raise NotImplementedError  # Bedrock's own (RoleSessions)

    # ---- where ----

    @staticmethod
    def _region_of(ctx: RequestContext, arn: str) -> str:
        """An ARN's own region (a model lives in one), else the request's."""
        parts = arn.split(":")
        if arn.startswith("arn:") and len(parts) > 3 and REGION.fullmatch(parts[3]):
            return parts[3]
        return aws.region(ctx)

    @staticmethod
    def runtime_url(ctx: RequestContext, region: str) -> str:
        if ctx.base_url_override:  # one custom host serves the control plane and the runtime alike
            return ctx.base_url_override.rstrip("/")
        return aws.endpoint_from_env("bedrock_runtime") or f"https://bedrock-runtime.{region}.amazonaws.com"

    @staticmethod
    def control_url(ctx: RequestContext, region: str) -> str:
        if ctx.base_url_override:
            return ctx.base_url_override.rstrip("/")
        return aws.endpoint_from_env("bedrock") or f"https://bedrock.{region}.amazonaws.com"

    async def _control(self, ctx: RequestContext, region: str, method: str, path: str, *,
                       query: list[tuple[str, str]] | None = None, body: JSON | None = None,
                       idempotent: bool | None = None) -> Any:
        url = self.control_url(ctx, region) + path + ("?" + aws.query_string(query) if query else "")
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        response = await aws.call(ctx, await self.credentials(ctx), "bedrock", region, method, url, headers=headers,
                                  body=data, idempotent=method == "GET" if idempotent is None else idempotent)
        return self.check(ctx, response)

    # ---- which custom model a request names (docs/security.md, rule 3) ----

    @staticmethod
    def _custom_arn(model: str, param: str | None, *, named_by_body: bool = False) -> bool:
        """Whether ``model`` is a custom model ARN. One in any other shape (``ARN:AWS:…``, a trailing
        slash, more segments) would reach Bedrock under a spelling nobody checked: a 404 (a 400 where a
        create's body names it)."""
        if _CUSTOM.fullmatch(model):
            return True
        lowered = model.lower()
        if lowered.startswith("arn:") and ":custom-model/" in lowered:
            message = f"'{model[:200]}' is not a Bedrock custom model ARN."
            if named_by_body:
                raise InvalidRequest(message, param=param, code="invalid_value")
            raise NotFound(message, param=param, code="model_not_found")
        return False

    @staticmethod
    def _invocable_arn(model: str) -> bool:
        """Whether ``model`` is a deployment or provisioned-throughput ARN. One in another shape (another case,
        a trailing slash) matches none of ConversationalModelId's forms and would reach Bedrock under a
        spelling nobody checked: a 404, never sent."""
        if _INVOCABLE.fullmatch(model):
            return True
        lowered = model.lower()
        if lowered.startswith("arn:") and (":custom-model-deployment/" in lowered or ":provisioned-model/" in lowered):
            raise NotFound(f"'{model[:200]}' is not a Bedrock deployment or provisioned model ARN.", param="model",
                           code="model_not_found")
        return False

    @staticmethod
    async def _check_spellings(ctx: RequestContext, spellings: Iterable[Any], model: str, param: str | None) -> None:
        """The ownership rule on each name of one custom model: the client's, its lowercase form (an
        upstream lenient about case is assumed), and the ARN Bedrock itself answers with."""
        for spelling in dict.fromkeys(s for s in spellings if isinstance(s, str) and s):
            await ctx.check_named("model", spelling, param, shown=model)

    async def _known(self, ctx: RequestContext, model: str) -> bool:
        """The registry holds this very spelling: an ARN recorded from Bedrock's own answer (a job's
        ``fine_tuned_model``), so its canonical form, and already held to the ownership rule."""
        return ctx.store is not None and await ctx.store.placement("model", model) is not None

    async def owned_custom_model(self, ctx: RequestContext, model: str, param: str | None = "model") -> str:
        """A model a request names, canonical: a custom model (by ARN, or by the short name a job's
        ``baseModelIdentifier`` also takes) becomes the ARN GetCustomModel answers with, and the ownership
        rule holds on every spelling of it; a foundation model id or ARN is given back as it came."""
        if (not self._custom_arn(model, param, named_by_body=param is not None)
                and not jobs.CUSTOM_MODEL_NAME.fullmatch(model)):
            return model  # a foundation model (ids and names of those always hold a '.')
        await self._check_spellings(ctx, (model, model.lower()), model, param)
        if await self._known(ctx, model):
            return model
        region = self._region_of(ctx, model)
        try:
            raw = await self._control(ctx, region, "GET", "/custom-models/" + quote(model, safe=""))
        except UpstreamError as exc:
            if exc.status in (400, 404):
                return model  # no custom model of that name: Bedrock decides what it is
            raise
        canonical = (raw or {}).get("modelArn")
        if not isinstance(canonical, str) or not _CUSTOM.fullmatch(canonical):
            return model
        await self._check_spellings(ctx, (canonical,), model, param)
        return canonical

    # ---- which model id Converse is called with ----

    async def _model_id(self, ctx: RequestContext, model: str) -> tuple[str, str]:
        """(modelId for Converse, region). The route checked the name as sent; here the ownership rule holds on
        its other spellings and on the ARNs found on the way (MAPPING.md, "Custom models a request names"):

        - a custom model ARN: checked lowercase too, then called through its newest Active deployment that no
          other key owns, under the ``modelArn`` the deployments name;
        - a short name (``([0-9a-zA-Z][_-]?){1,63}``: no foundation model id or inference profile, which hold a
          '.'): checked as sent and lowercase; a custom model's (GetCustomModel) is checked under its ARN and
          called as above; a deployment's (GetCustomModelDeployment) or a provisioned throughput's
          (GetProvisionedModelThroughput) under its ARN and its model's, and called by its ARN; a name that is
          none of these is a 404, never sent (what Converse would make of it nobody checked);
        - a deployment or provisioned-throughput ARN the registry does not hold (made outside the gateway) that
          a key asks for: checked under the ARN of the model it serves (GetCustomModelDeployment,
          GetProvisionedModelThroughput);
        - anything else (a recorded deployment, a foundation model or inference profile): as sent.

        What a name resolves to is kept for DEPLOYMENT_TTL per AWS identity, region and endpoint; its ARNs are
        checked again on every hit, and a hit on a deployment another tunegate key owns is looked up again for
        this one."""
        region = self._region_of(ctx, model)
        if self._custom_arn(model, "model"):
            how = "custom"
        elif self._invocable_arn(model):
            if not await self._unrecorded(ctx, model):
                return model, region
            how = "deployment"
        elif jobs.CUSTOM_MODEL_NAME.fullmatch(model):
            how = "name"
        else:
            return model, region
        if how != "deployment":  # (a deployment ARN's pattern is lowercase: the route checked its one spelling)
            await self._check_spellings(ctx, (model, model.lower()), model, "model")
        # A name means something per account, region and endpoint: all of them are in the key.
        where = f"{await self._identity(ctx)}|{region}|{self.control_url(ctx, region)}"
        key = hashlib.sha256(f"{where}|{model}".encode()).hexdigest()
        hit = self._deployed.get(key)
        if hit is not None and time.monotonic() - hit[3] < DEPLOYMENT_TTL:
            await self._check_spellings(ctx, hit[1], model, "model")
            if ctx.key is None or hit[2] in (None, ctx.key.id):
                return hit[0], self._region_of(ctx, hit[0])
            # another key's deployment, picked for that key's chat with a model both may use: look again
        if how == "custom":
            found: tuple[str, tuple[str, ...]] | None = await self._through_deployment(ctx, model, model, region)
        elif how == "deployment":
            found = await self._served_model(ctx, model, region)
        else:
            found = await self._named(ctx, model, region)
        if found is None:
            raise NotFound(f"No Bedrock custom model, deployment or provisioned throughput is named '{model[:200]}'.",
                           param="model", code="model_not_found")
        owner = (await ctx.store.owners("model", [found[0]])).get(found[0]) if ctx.store is not None else None
        self._deployed[key] = (found[0], found[1], owner, time.monotonic())
        while len(self._deployed) > DEPLOYMENT_CACHE:
            self._deployed.popitem(last=False)
        return found[0], self._region_of(ctx, found[0])

    async def _through_deployment(self, ctx: RequestContext, model: str, shown: str,
                                  region: str) -> tuple[str, tuple[str, ...]]:
        """A custom model ARN's newest Active deployment this key may use (ListCustomModelDeployments), once the
        ownership rule holds on the ``modelArn`` its deployments name: (its ARN, the model's ARN to check again;
        the deployment's own owner is kept with it in the cache: another key's hit looks again)."""
        summaries = await self._deployments(ctx, region, model)
        await self._check_spellings(ctx, (s.get("modelArn") for s in summaries), shown, "model")
        summaries = await self._visible(ctx, summaries)
        active = next((s for s in summaries if s.get("status") == "Active"), None)
        if active is None:
            raise _not_deployed(model, summaries)
        canonical = active.get("modelArn")
        return str(active["customModelDeploymentArn"]), (canonical,) if isinstance(canonical, str) else ()

    async def _served_model(self, ctx: RequestContext, arn: str, region: str) -> tuple[str, tuple[str, ...]]:
        """A deployment or provisioned-throughput ARN the registry does not hold: its description, and the
        ownership rule on the custom model it serves (another key's model is a 404 under that ARN too)."""
        path = next(p for p, _member, pattern in _DESCRIBED if pattern.fullmatch(arn))
        raw = await self._control(ctx, region, "GET", path + quote(arn, safe=""))
        served = (raw or {}).get("modelArn")
        spellings = (served,) if isinstance(served, str) else ()
        await self._check_spellings(ctx, spellings, arn, "model")
        return arn, spellings

    async def _named(self, ctx: RequestContext, name: str, region: str) -> tuple[str, tuple[str, ...]] | None:
        """A short name: a custom model's first (GetCustomModel, as a job's ``baseModelIdentifier`` reads it),
        else a deployment's (GetCustomModelDeployment), else a provisioned throughput's
        (GetProvisionedModelThroughput), checked under the ARNs Bedrock answers with; None when it names none
        of them (their 400/404)."""
        raw = await self._get_if_found(ctx, region, "/custom-models/" + quote(name, safe=""))
        canonical = (raw or {}).get("modelArn")
        if isinstance(canonical, str) and _CUSTOM.fullmatch(canonical):
            await self._check_spellings(ctx, (canonical,), name, "model")
            return await self._through_deployment(ctx, canonical, name, self._region_of(ctx, canonical))
        for path, member, pattern in _DESCRIBED:
            raw = await self._get_if_found(ctx, region, path + quote(name, safe=""))
            arn = (raw or {}).get(member)
            if isinstance(arn, str) and pattern.fullmatch(arn):
                served = raw.get("modelArn")
                spellings = (arn, *((served,) if isinstance(served, str) else ()))
                await self._check_spellings(ctx, spellings, name, "model")
                return arn, spellings
        return None

    async def _get_if_found(self, ctx: RequestContext, region: str, path: str) -> Any:
        """A control-plane GET; its 400 or 404 (nothing of that name) is None, any other error the answer."""
        try:
            return await self._control(ctx, region, "GET", path)
        except UpstreamError as exc:
            if exc.status in (400, 404):
                return None
            raise

    @staticmethod
    async def _unrecorded(ctx: RequestContext, arn: str) -> bool:
        """A key asks for a deployment or provisioned throughput the registry does not hold (made outside the
        gateway): its owner is known only by the model it serves. (An open gateway holds no one to the rule.)"""
        return ctx.key is not None and ctx.store is not None and await ctx.store.placement("model", arn) is None

    @staticmethod
    async def _visible(ctx: RequestContext, summaries: list[JSON]) -> list[JSON]:
        """Deployment summaries without another key's deployments (as if they did not exist)."""
        if ctx.key is None or ctx.store is None or not summaries:
            return summaries
        arns = [a for s in summaries if isinstance(a := s.get("customModelDeploymentArn"), str)]
        owners = await ctx.store.owners("model", arns)
        return [s for s in summaries if owners.get(str(s.get("customModelDeploymentArn"))) in (None, ctx.key.id)]

    async def _identity(self, ctx: RequestContext) -> str:
        creds = await self.credentials(ctx)
        return creds.access_key or hashlib.sha256((creds.bearer or "").encode()).hexdigest()

    async def _deployments(self, ctx: RequestContext, region: str, model: str) -> list[JSON]:
        query = [("maxResults", "100"), ("modelArnEquals", model), ("sortBy", "CreationTime"),
                 ("sortOrder", "Descending")]
        raw = await self._control(ctx, region, "GET", "/model-customization/custom-model-deployments", query=query)
        return [s for s in (raw or {}).get("modelDeploymentSummaries") or [] if isinstance(s, dict)]

    def _forget_deployment(self, model: str) -> None:
        for key in [k for k, (arn, _spellings, _owner, _at) in self._deployed.items() if arn == model]:
            del self._deployed[key]

    # ---- chat ----

    async def chat(self, ctx: RequestContext, body: JSON) -> JSON:
        native = converse_body(body)
        model_id, region = await self._model_id(ctx, str(body["model"]))
        url = f"{self.runtime_url(ctx, region)}/model/{quote(model_id, safe='')}/converse"
        response = await aws.call(ctx, await self.credentials(ctx), "bedrock", region, "POST", url,
                                  headers={"Content-Type": "application/json"}, body=orjson.dumps(native),
                                  idempotent=True)  # a chat changes nothing upstream
        if response.status == 404:
            self._forget_deployment(model_id)
        return to_completion(self.check(ctx, response), body)

    async def chat_stream(self, ctx: RequestContext, body: JSON) -> AsyncIterator[JSON]:
        native = converse_body(body)
        model_id, region = await self._model_id(ctx, str(body["model"]))
        url = f"{self.runtime_url(ctx, region)}/model/{quote(model_id, safe='')}/converse-stream"
        # upstream.open sends orjson.dumps(native): the very bytes signed here.
        signed = aws.sign(await self.credentials(ctx), "bedrock", region, "POST", url,
                          {"Content-Type": "application/json"}, orjson.dumps(native))
        resp = await self.open_stream(ctx, "POST", cast(str, aws.open_url(url)), headers=signed, json=native)
        return self._stream(ctx, eventstream.frames(self.body_chunks(resp)), StreamTranslator(body))

    @staticmethod
    async def _stream(ctx: RequestContext, source: AsyncIterator[eventstream.Frame],
                      translator: StreamTranslator) -> AsyncIterator[JSON]:
        try:
            async for frame in source:
                chunk = translator.translate(frame, ctx)
                if chunk is not None:
                    yield chunk
        finally:
            closer = getattr(source, "aclose", None)
            if closer is not None:
                await closer()  # releases the connection now, not when the generator is collected

    # ---- models ----

    async def list_models(self, ctx: RequestContext) -> JSON:
        """ListCustomModels (newest first, up to 1,000 per page, every page) with each model's deployments."""
        region = aws.region(ctx)
        models: list[JSON] = []
        token: str | None = None
        for _ in range(100):
            query = [("maxResults", "1000"), ("sortBy", "CreationTime"), ("sortOrder", "Descending")]
            raw = await self._control(ctx, region, "GET", "/custom-models",
                                      query=query + ([("nextToken", token)] if token else []))
            models.extend(s for s in (raw or {}).get("modelSummaries") or [] if isinstance(s, dict))
            token = (raw or {}).get("nextToken")
            if not token:
                break
        deployments = await self._all_deployments(ctx, region)  # another key's left out
        return shapes.model_list([custom_model(m, deployments.get(str(m.get("modelArn")), [])) for m in models
                                  if m.get("modelArn")])

    async def _all_deployments(self, ctx: RequestContext, region: str) -> dict[str, list[JSON]]:
        by_model: dict[str, list[JSON]] = {}
        token: str | None = None
        for _ in range(100):
            query = [("maxResults", "1000"), ("sortBy", "CreationTime"), ("sortOrder", "Descending")]
            raw = await self._control(ctx, region, "GET", "/model-customization/custom-model-deployments",
                                      query=query + ([("nextToken", token)] if token else []))
            summaries = [s for s in (raw or {}).get("modelDeploymentSummaries") or [] if isinstance(s, dict)]
            for s in await self._visible(ctx, summaries):
                by_model.setdefault(str(s.get("modelArn")), []).append(s)
            token = (raw or {}).get("nextToken")
            if not token:
                break
        return by_model

    async def retrieve_model(self, ctx: RequestContext, model: str) -> JSON:
        region = self._region_of(ctx, model)
        if _DEPLOYMENT_ARN.fullmatch(model):
            raw = await self._control(ctx, region, "GET", "/model-customization/custom-model-deployments/"
                                      + quote(model, safe=""))
            # The route checked the deployment's record; one made elsewhere is its model's owner's.
            await self._check_spellings(ctx, ((raw or {}).get("modelArn"),), model, None)
            return deployment_model(raw)
        if not _CUSTOM.fullmatch(model):
            raise NotFound(f"'{model}' is not a Bedrock custom model or deployment ARN tunegate can describe.")
        await self._check_spellings(ctx, (model, model.lower()), model, None)
        raw = await self._control(ctx, region, "GET", "/custom-models/" + quote(model, safe=""))
        # Another spelling of another key's model reads it: its owner is known only by the ARN Bedrock gives.
        await self._check_spellings(ctx, ((raw or {}).get("modelArn"),), model, None)
        return custom_model(raw, await self._visible(ctx, await self._deployments(ctx, region, model)))

    async def delete_model(self, ctx: RequestContext, model: str) -> JSON:
        region = self._region_of(ctx, model)
        if _DEPLOYMENT_ARN.fullmatch(model):
            if await self._unrecorded(ctx, model):  # made elsewhere: its model's owner's to delete
                await self._served_model(ctx, model, region)
            path = "/model-customization/custom-model-deployments/" + quote(model, safe="")
        elif _CUSTOM.fullmatch(model):
            await self.owned_custom_model(ctx, model, None)
            path = "/custom-models/" + quote(model, safe="")
        else:
            raise NotFound(f"'{model}' is not a Bedrock custom model or deployment ARN.")
        await self._control(ctx, region, "DELETE", path, idempotent=True)
        self._forget_deployment(model)
        return {"id": model, "object": "model", "deleted": True}

    async def deploy_model(self, ctx: RequestContext, model: str, body: JSON) -> JSON:
        """CreateCustomModelDeployment (on-demand inference for a custom model), then the model with it. The
        deployment's ARN is recorded as this key's at once: another key cannot call, read or delete it."""
        if not _CUSTOM.fullmatch(model):
            raise InvalidRequest("Only a Bedrock custom model ARN (a job's fine_tuned_model) can be deployed.",
                                 param="model", code="invalid_value")
        model = await self.owned_custom_model(ctx, model, None)  # each spelling checked; the ARN Bedrock gave
        unknown = sorted(set(body) - {"name", "description"})
        if unknown:
            raise unsupported_param(NAME, unknown[0], "A deployment takes 'name' and 'description'.")
        token = (hashlib.sha256(f"{ctx.key_id or ''}:{ctx.connection or ''}:{ctx.idempotency_key}".encode()).hexdigest()
                 if ctx.idempotency_key else secrets.token_hex(32))
        name = body.get("name") or f"tunegate-{token[:20]}"
        if not isinstance(name, str) or not _DEPLOYMENT_NAME.fullmatch(name):
            raise InvalidRequest("'name' must be 1–63 letters and digits, with single '-' or '_' between them.",
                                 param="name", code="invalid_value")
        request: JSON = {"modelDeploymentName": name, "modelArn": model, "clientRequestToken": token}
        if body.get("description"):
            request["description"] = str(body["description"])[:2048]
        region = self._region_of(ctx, model)
        # clientRequestToken makes the create idempotent on Bedrock's side: retrying it is safe.
        created = await self._control(ctx, region, "POST", "/model-customization/custom-model-deployments",
                                      body=request, idempotent=True)
        arn = (created or {}).get("customModelDeploymentArn")  # CreateCustomModelDeploymentResponse
        if ctx.store is not None and isinstance(arn, str) and _DEPLOYMENT_ARN.fullmatch(arn):
            await ctx.store.record("model", arn, ctx.provider_name, ctx.connection, ctx.key_id, "creating",
                                   {"id": arn, "object": "model", "name": name, "model": model}, claim=True)
        return await self.retrieve_model(ctx, model)


def _not_deployed(model: str, summaries: list[JSON]) -> InvalidRequest:
    creating = next((s for s in summaries if s.get("status") == "Creating"), None)
    if creating is not None:
        return InvalidRequest(f"The deployment of '{model}' ({creating.get('customModelDeploymentArn')}) is still "
                              "being created: retry when GET /v1/models/{id} shows it active.", param="model",
                              code="model_deploying")
    return InvalidRequest(f"Bedrock cannot invoke the custom model '{model}' on demand: deploy it first with "
                          "POST /v1/models/{id}/deploy (a Bedrock custom model deployment), or buy provisioned "
                          "throughput and call its ARN.", param="model", code="model_not_deployed")


def _deployment(raw: JSON) -> JSON:
    status = str(raw.get("status") or "")
    return {"id": raw.get("customModelDeploymentArn"), "name": raw.get("modelDeploymentName")
            or raw.get("customModelDeploymentName"), "status": status.lower(), "provider_status": status,
            "created_at": jobs.timestamp(raw.get("createdAt")), "error": raw.get("failureMessage") or None}


def custom_model(raw: JSON, deployments: list[JSON]) -> JSON:
    """A CustomModelSummary / GetCustomModelResponse as an OpenAI model, with its deployments (newest first)
    and whether chat can call it now."""
    views = [_deployment(d) for d in deployments]
    return shapes.model_object(str(raw["modelArn"]), str(raw.get("ownerAccountId") or "bedrock"),
                               jobs.timestamp(raw.get("creationTime")), name=raw.get("modelName"),
                               base_model=raw.get("baseModelArn"), provider_status=raw.get("modelStatus"),
                               deployments=views, ready=any(v["status"] == "active" for v in views))


def deployment_model(raw: JSON) -> JSON:
    view = _deployment(raw)
    return shapes.model_object(str(raw["customModelDeploymentArn"]), "bedrock", view["created_at"],
                               name=view["name"], base_model=raw.get("modelArn"), provider_status=view["provider_status"],
                               deployments=[view], ready=view["status"] == "active")
