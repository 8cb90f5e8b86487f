"""The Bedrock stand-in with its inference side: the bedrock-runtime Converse / ConverseStream operations and
the control plane's custom models and custom model deployments. The fine-tuning routes are the parent's,
unchanged (``tests/standins/bedrock.py``).

Where every shape comes from (boto/botocore 1.44.8, the version installed):

- ``botocore/data/bedrock-runtime/2023-09-30/service-2.json``: Converse (``POST /model/{modelId}/converse``,
  ConverseRequest → ConverseResponse: ``output.message``, ``stopReason``, ``usage`` {inputTokens, outputTokens,
  totalTokens}, ``metrics.latencyMs``), ConverseStream (``POST /model/{modelId}/converse-stream``,
  ConverseStreamResponse = the ConverseStreamOutput event stream: messageStart, contentBlockStart,
  contentBlockDelta, contentBlockStop, messageStop, metadata; exception members internalServerException,
  modelStreamErrorException, validationException, throttlingException, serviceUnavailableException). Every
  request body is checked with botocore's own ``ParamValidator`` against the operation's input shape (unknown
  members, types, required members, ranges; botocore does not check patterns) and refused with a
  ValidationException, as the service refuses a request outside its model.
- ``botocore/eventstream.py`` for the frame format: prelude (total length, headers length, CRC32 of both),
  headers (name length, name, type 7 = string with a 2-byte length), payload, CRC32 of all before it; headers
  ``:message-type`` (event | exception), ``:event-type`` / ``:exception-type``, ``:content-type``. Frames are
  encoded here and checked in the tests by botocore's decoder and by boto3's own bedrock-runtime client.
- ``botocore/data/bedrock/2023-04-20/service-2.json``: ListCustomModels (``GET /custom-models``,
  modelSummaries), GetCustomModel / DeleteCustomModel (``/custom-models/{modelIdentifier}``),
  CreateCustomModelDeployment (``POST /model-customization/custom-model-deployments`` → 202
  {customModelDeploymentArn}), GetCustomModelDeployment / DeleteCustomModelDeployment
  (``…/{customModelDeploymentIdentifier}``), ListCustomModelDeployments (modelArnEquals, statusEquals,
  modelDeploymentSummaries). Deployment status Creating → Active (after ``deploy_reads`` reads).
  GetProvisionedModelThroughput (``GET /provisioned-model-throughput/{provisionedModelId}``, the ARN or the
  name → GetProvisionedModelThroughputResponse with every required member: modelUnits, desiredModelUnits,
  provisionedModelName, provisionedModelArn, modelArn, desiredModelArn, foundationModelArn, status,
  creationTime, lastModifiedTime); a test buys one with ``add_provisioned``, InService at once.

Not in any model, hence assumed: a custom model ARN given to Converse is a ValidationException (the documented
rule is that custom models are invoked through a deployment or provisioned throughput); the words of every
message; the model's answers (``reply``: "echo: <last user text>", or a tool call when tools are offered and
the last turn is not a tool result).
"""

from __future__ import annotations

import asyncio
import binascii
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web

from tests.standins.bedrock import ACCOUNT, REGION, BedrockStandIn, Recorded

FOUNDATION = {"amazon.nova-micro-v1:0", "amazon.nova-lite-v1:0"}


def _service(name: str) -> Any:
    from botocore.loaders import Loader
    from botocore.model import ServiceModel

    return ServiceModel(Loader().load_service_model(name, "service-2"), service_name=name)


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message as botocore.eventstream decodes it."""
    head = b"".join(struct.pack("B", len(k)) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode()
                    for k, v in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    body = prelude + head + payload
    return body + struct.pack(">I", binascii.crc32(body) & 0xFFFFFFFF)


def event(name: str, payload: dict[str, Any]) -> bytes:
    return frame({":event-type": name, ":content-type": "application/json", ":message-type": "event"},
                 json.dumps(payload).encode())


def exception(name: str, message: str) -> bytes:
    return frame({":exception-type": name, ":content-type": "application/json", ":message-type": "exception"},
                 json.dumps({"message": message}).encode())


@dataclass
class BedrockChatStandIn(BedrockStandIn):
    deploy_reads: int = 1  # reads of a Creating deployment before it is Active
    chunk_delay: float = 0.0  # seconds between stream frames
    # A scripted exception frame sent after this many text deltas (-1: before messageStart):
    # (after, exception member name, message)
    stream_fault: tuple[int, str, str] | None = None
    custom_models: dict[str, dict[str, Any]] = field(default_factory=dict)  # by ARN
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)  # by ARN
    converse_bodies: list[dict[str, Any]] = field(default_factory=list)
    provisioned: set[str] = field(default_factory=set)  # ARNs Converse answers to
    throughputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by ARN (GetProvisionedModelThroughput)

    def __post_init__(self) -> None:
        self.runtime_model = _service("bedrock-runtime")
        self.control_model = _service("bedrock")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.route)
        return app

    async def route(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.partition("?")[0]
        head = raw_path.strip("/").split("/")[0]
        if head not in ("model", "custom-models", "model-customization", "provisioned-model-throughput"):
            return await self.dispatch(request)  # fine-tuning, as before
        body = await request.read()
        query = dict(parse_qsl(request.raw_path.partition("?")[2]))
        self.requests.append(Recorded(request.method, raw_path, query, dict(request.headers), body))
        if self.faults:
            status, error_type = self.faults.pop(0)
            return self.error(status, error_type, f"Scripted {error_type}.")
        refused = self.verify(request, body)
        if refused is not None:
            return refused
        parts = [unquote(p) for p in raw_path.strip("/").split("/")]
        if head == "model" and len(parts) == 3 and request.method == "POST":
            return await self.converse(request, parts[1], parts[2], body)
        if head == "custom-models":
            return self.custom_model_op(request.method, parts[1] if len(parts) > 1 else None, query)
        if head == "provisioned-model-throughput" and len(parts) == 2 and request.method == "GET":
            return self.throughput_op(parts[1])
        if parts[:2] == ["model-customization", "custom-model-deployments"]:
            return self.deployment_op(request.method, parts[2] if len(parts) > 2 else None, query, body)
        return self.error(404, "UnknownOperationException", "Unknown operation.")

    def invalid(self, operation: Any, params: dict[str, Any]) -> web.Response | None:
        from botocore.validate import ParamValidator

        report = ParamValidator().validate(params, operation.input_shape)
        if report.has_errors():
            return self.error(400, "ValidationException", report.generate_report())
        return None

    # ---- custom models (from completed jobs, or added by a test) ----

    def all_custom_models(self) -> dict[str, dict[str, Any]]:
        for job in self.jobs.values():
            arn = job.get("outputModelArn")
            if arn and arn not in self.custom_models:
                self.custom_models[arn] = {
                    "modelArn": arn, "modelName": job["outputModelName"], "creationTime": job["endTime"],
                    "baseModelArn": job["baseModelArn"], "baseModelName": job["baseModelArn"].split("/")[-1],
                    "customizationType": job["customizationType"], "ownerAccountId": ACCOUNT,
                    "modelStatus": "Active", "jobArn": job["jobArn"], "jobName": job["jobName"]}
        return self.custom_models

    def add_custom_model(self, name: str = "weather", base: str = "amazon.nova-micro-v1:0:128k") -> str:
        arn = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:custom-model/{base}/{secrets.token_hex(6)}"
        self.custom_models[arn] = {"modelArn": arn, "modelName": name, "creationTime": self.now(),
                                   "baseModelArn": f"arn:aws:bedrock:{REGION}::foundation-model/{base}",
                                   "baseModelName": base, "customizationType": "FINE_TUNING",
                                   "ownerAccountId": ACCOUNT, "modelStatus": "Active"}
        return arn

    def custom_model_op(self, method: str, ident: str | None, query: dict[str, str]) -> web.Response:
        models = self.all_custom_models()
        if ident is None and method == "GET":
            items = sorted(models.values(), key=lambda m: m["creationTime"], reverse=query.get("sortOrder") != "Ascending")
            summary = ("modelArn", "modelName", "creationTime", "baseModelArn", "baseModelName", "customizationType",
                       "ownerAccountId", "modelStatus")
            return web.json_response({"modelSummaries": [{k: m[k] for k in summary if k in m} for m in items]})
        model = models.get(ident or "") or next((m for m in models.values() if m["modelName"] == ident), None)
        if model is None:
            return self.error(404, "ResourceNotFoundException", f"Model {ident} not found.")
        if method == "GET":
            return web.json_response({k: v for k, v in model.items() if k not in ("ownerAccountId",)})
        if method == "DELETE":
            del self.custom_models[model["modelArn"]]
            return web.json_response({})
        return self.error(404, "UnknownOperationException", "Unknown operation.")

    # ---- provisioned throughput (bought outside tunegate; only described here) ----

    def add_provisioned(self, model_arn: str, name: str) -> str:
        arn = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:provisioned-model/{secrets.token_hex(6)}"
        model = self.all_custom_models().get(model_arn) or {}
        now = self.now()
        self.throughputs[arn] = {"modelUnits": 1, "desiredModelUnits": 1, "provisionedModelName": name,
                                 "provisionedModelArn": arn, "modelArn": model_arn, "desiredModelArn": model_arn,
                                 "foundationModelArn": model.get("baseModelArn", model_arn), "status": "InService",
                                 "creationTime": now, "lastModifiedTime": now}
        self.provisioned.add(arn)
        return arn

    def throughput_op(self, ident: str) -> web.Response:
        found = self.throughputs.get(ident) or next(
            (t for t in self.throughputs.values() if t["provisionedModelName"] == ident), None)
        if found is None:
            return self.error(404, "ResourceNotFoundException", f"Provisioned model {ident} not found.")
        return web.json_response(found)

    # ---- deployments ----

    def _read(self, dep: dict[str, Any]) -> dict[str, Any]:
        if dep["status"] == "Creating":
            dep["_reads"] += 1
            if dep["_reads"] > self.deploy_reads:
                dep["status"] = "Active"
                dep["lastUpdatedAt"] = self.now()
        return {k: v for k, v in dep.items() if not k.startswith("_")}

    def deployment_op(self, method: str, ident: str | None, query: dict[str, str], body: bytes) -> web.Response:
        if ident is None and method == "POST":
            req = json.loads(body)
            problem = self.invalid(self.control_model.operation_model("CreateCustomModelDeployment"), req)
            if problem is not None:
                return problem
            if req["modelArn"] not in self.all_custom_models():
                return self.error(404, "ResourceNotFoundException", f"Model {req['modelArn']} not found.")
            for dep in self.deployments.values():
                if dep["_token"] == req.get("clientRequestToken"):
                    return web.json_response({"customModelDeploymentArn": dep["customModelDeploymentArn"]}, status=202)
            arn = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:custom-model-deployment/{secrets.token_hex(6)}"
            now = self.now()
            self.deployments[arn] = {"customModelDeploymentArn": arn, "modelDeploymentName": req["modelDeploymentName"],
                                     "modelArn": req["modelArn"], "createdAt": now, "lastUpdatedAt": now,
                                     "status": "Creating", "_reads": 0, "_token": req.get("clientRequestToken"),
                                     **({"description": req["description"]} if req.get("description") else {})}
            return web.json_response({"customModelDeploymentArn": arn}, status=202)
        if ident is None and method == "GET":
            items = [d for d in self.deployments.values()
                     if query.get("modelArnEquals") in (None, d["modelArn"])]
            views = [self._read(d) for d in items]
            views = [v for v in views if query.get("statusEquals") in (None, v["status"])]
            views.sort(key=lambda v: v["createdAt"], reverse=query.get("sortOrder") != "Ascending")
            keys = ("customModelDeploymentArn", "modelArn", "createdAt", "status", "lastUpdatedAt", "failureMessage")
            return web.json_response({"modelDeploymentSummaries": [
                {**{k: v[k] for k in keys if k in v}, "customModelDeploymentName": v["modelDeploymentName"]}
                for v in views]})
        dep = self.deployments.get(ident or "") or next(
            (d for d in self.deployments.values() if d["modelDeploymentName"] == ident), None)
        if dep is None:
            return self.error(404, "ResourceNotFoundException", f"Deployment {ident} not found.")
        if method == "GET":
            return web.json_response(self._read(dep))
        if method == "DELETE":
            del self.deployments[dep["customModelDeploymentArn"]]
            return web.json_response({})
        return self.error(404, "UnknownOperationException", "Unknown operation.")

    # ---- Converse ----

    def _invocable(self, model_id: str) -> web.Response | None:
        dep = self.deployments.get(model_id)
        if dep is not None:
            return None if dep["status"] == "Active" else self.error(
                400, "ValidationException", f"The deployment {model_id} is not active (status {dep['status']}).")
        if model_id in self.provisioned or model_id in FOUNDATION:
            return None
        if ":custom-model/" in model_id:
            return self.error(400, "ValidationException", "The provided model identifier is invalid: a custom model "
                              "is invoked through a custom model deployment or provisioned throughput.")
        return self.error(404, "ResourceNotFoundException", f"Model {model_id} not found.")

    async def converse(self, request: web.Request, model_id: str, op: str, body: bytes) -> web.StreamResponse:
        operation = {"converse": "Converse", "converse-stream": "ConverseStream"}.get(op)
        if operation is None:
            return self.error(404, "UnknownOperationException", "Unknown operation.")
        try:
            req = json.loads(body)
        except ValueError:
            return self.error(400, "SerializationException", "The request body is not JSON.")
        problem = self.invalid(self.runtime_model.operation_model(operation), {**req, "modelId": model_id})
        if problem is None:
            problem = self._invocable(model_id)
        if problem is not None:
            return problem
        self.converse_bodies.append(req)
        blocks, reason = self.reply(req)
        usage = {"inputTokens": sum(len(json.dumps(m)) // 16 + 1 for m in req["messages"]),
                 "outputTokens": sum(len(b.get("text", "").split()) or 1 for b in blocks)}
        usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"]
        if operation == "Converse":
            return web.json_response({"output": {"message": {"role": "assistant", "content": blocks}},
                                      "stopReason": reason, "usage": usage, "metrics": {"latencyMs": 12}})
        return await self.stream(request, blocks, reason, usage)

    def reply(self, req: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        last = req["messages"][-1]["content"]
        tools = (req.get("toolConfig") or {}).get("tools") or []
        if tools and not any("toolResult" in b for b in last):
            name = tools[0]["toolSpec"]["name"]
            return ([{"text": "Let me check."},
                     {"toolUse": {"toolUseId": "tooluse_" + secrets.token_hex(6), "name": name,
                                  "input": {"city": "Paris"}}}], "tool_use")
        said = " ".join(b["text"] if "text" in b else " ".join(c.get("text", "") for c in b["toolResult"]["content"])
                        for b in last if "text" in b or "toolResult" in b)
        words = f"echo: {said}".split()
        config = req.get("inferenceConfig") or {}
        reason = "end_turn"
        for stop in config.get("stopSequences") or []:
            if stop in words:
                words, reason = words[:words.index(stop)], "stop_sequence"
        if "maxTokens" in config and len(words) > config["maxTokens"]:
            words, reason = words[:config["maxTokens"]], "max_tokens"
        return [{"text": " ".join(words)}], reason

    async def stream(self, request: web.Request, blocks: list[dict[str, Any]], reason: str,
                     usage: dict[str, int]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream",
                                           "x-amzn-RequestId": secrets.token_hex(16)})
        await resp.prepare(request)

        async def send(data: bytes) -> None:
            await resp.write(data)
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)

        if self.stream_fault and self.stream_fault[0] < 0:  # refused before the answer starts
            await send(exception(self.stream_fault[1], self.stream_fault[2]))
            return resp
        await send(event("messageStart", {"role": "assistant"}))
        deltas = 0
        for index, block in enumerate(blocks):
            if "toolUse" in block:
                use = block["toolUse"]
                await send(event("contentBlockStart", {"contentBlockIndex": index, "start": {
                    "toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}))
                text = json.dumps(use["input"])
                for piece in (text[:len(text) // 2], text[len(text) // 2:]):
                    await send(event("contentBlockDelta", {"contentBlockIndex": index,
                                                           "delta": {"toolUse": {"input": piece}}}))
            else:
                words = block["text"].split(" ")
                for i, word in enumerate(words):
                    if self.stream_fault and deltas == self.stream_fault[0]:
                        await send(exception(self.stream_fault[1], self.stream_fault[2]))
                        return resp
                    await send(event("contentBlockDelta", {"contentBlockIndex": index,
                                                           "delta": {"text": word if i == 0 else " " + word}}))
                    deltas += 1
            await send(event("contentBlockStop", {"contentBlockIndex": index}))
        await send(event("messageStop", {"stopReason": reason}))
        await send(event("metadata", {"usage": usage, "metrics": {"latencyMs": 15}}))
        await resp.write_eof()
        return resp
