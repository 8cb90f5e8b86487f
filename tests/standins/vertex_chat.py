"""The Vertex AI stand-in with its inference side: generateContent / streamGenerateContent on endpoints and
publisher models, and endpoints.get / endpoints.list. Tuning, OAuth and the rest are the parent's, unchanged
(``tests/standins/vertex.py``); its middleware checks every call's token and project.

Where every shape comes from:

- ``../shared/specs/vertex-aiplatform-v1-generatecontent.json`` (Google's aiplatform v1 discovery document,
  revision 20261106): ``projects.locations.endpoints.{generateContent,streamGenerateContent}``
  (``POST v1/{+model}:generateContent``), request GoogleCloudAiplatformV1GenerateContentRequest — every body is
  validated against it, unknown fields refused (Google answers "Invalid JSON payload received. Unknown name")
  — and answer GoogleCloudAiplatformV1GenerateContentResponse (candidates with content.role "model", parts,
  finishReason, index; usageMetadata; modelVersion, createTime, responseId), which the tests validate every
  answer against. Publisher models (``projects/{p}/locations/{l}/publishers/{pub}/models/{m}``) answer the same
  methods (the trimmed document keeps only the endpoint ones; python-genai 2.19.0 ``_api_client.py`` calls
  both alike).
- Streaming: ``?alt=sse`` as googleapis/python-genai 2.19.0 sends it (``models.py``: ``{model}:streamGenerateContent
  ?alt=sse``) and reads it (``_api_client.py``: ``data: `` lines, one GenerateContentResponse each; a chunk
  starting ``{"error":`` raises). The discovery document's ``alt`` enum lists json/media/proto only, so the
  exact bytes between events (``\\r\\n\\r\\n`` here) are unverified; the gateway's reader accepts either.
- Endpoints: googleapis/python-aiplatform ``google/cloud/aiplatform_v1/types/endpoint.py`` (Endpoint: name,
  display_name, deployed_models[{id, model, display_name, create_time}], create_time, update_time, etag) and
  ``endpoint_service.py`` (ListEndpointsResponse: endpoints, next_page_token).
- proto3 JSON leaves default values out: a candidate's ``index`` 0 is not written.

Assumed: the model's answers (``echo: <last user text>``; with tools offered and no function response yet, a
``functionCall`` of the first tool with ``{"city": "Paris"}``), token counts (one per word).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.standins.vertex import PROJECT_NUMBER, VertexStandIn, json_schema, rfc3339

GENERATE_SPEC = Path(__file__).resolve().parents[2].parent / "shared" / "specs" / "vertex-aiplatform-v1-generatecontent.json"
PUBLISHER_MODELS = {"gemini-2.5-flash", "gemini-2.0-flash-001"}


@dataclass
class VertexChatStandIn(VertexStandIn):
    chunk_delay: float = 0.0
    # An error event after this many stream events: (after, HTTP code, status, message)
    stream_fault: tuple[int, int, str, str] | None = None
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → Endpoint
    generate_bodies: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.generate_discovery = json.loads(GENERATE_SPEC.read_text()) if GENERATE_SPEC.exists() else None

    def app(self) -> web.Application:
        app = super().app()
        base = "/v1/projects/{project}/locations/{location}"
        app.router.add_post(base + "/endpoints/{endpoint}", self.endpoint_method)  # "<id>:generateContent"
        app.router.add_post(base + "/publishers/{publisher}/models/{model}", self.publisher_method)
        app.router.add_get(base + "/endpoints", self.list_endpoints)
        app.router.add_get(base + "/endpoints/{endpoint}", self.get_endpoint)
        return app

    # ---- endpoints ----

    def all_endpoints(self) -> dict[str, dict[str, Any]]:
        for job in self.jobs.values():
            tuned = job.get("tunedModel") or {}
            name = tuned.get("endpoint")
            if name and name not in self.endpoints:
                self.endpoints[name] = {
                    "name": name, "displayName": job.get("tunedModelDisplayName") or "tuned", "etag": "AMEw9y",
                    "createTime": job["endTime"], "updateTime": job["endTime"],
                    "deployedModels": [{"id": name.rsplit("/", 1)[1], "model": tuned["model"],
                                        "displayName": job.get("tunedModelDisplayName") or "tuned",
                                        "createTime": job["endTime"]}]}
        return self.endpoints

    def add_endpoint(self, location: str = "us-central1") -> str:
        name = f"projects/{PROJECT_NUMBER}/locations/{location}/endpoints/{secrets.randbelow(10**18)}"
        now = rfc3339(self._now())
        self.endpoints[name] = {"name": name, "displayName": "hand-made", "createTime": now, "updateTime": now,
                                "deployedModels": [{"id": "1", "model": name.replace("endpoints", "models") + "@1",
                                                    "createTime": now}]}
        return name

    def _endpoint(self, request: web.Request, endpoint_id: str) -> dict[str, Any] | None:
        m = request.match_info
        for name, endpoint in self.all_endpoints().items():
            if name.endswith(f"/locations/{m['location']}/endpoints/{endpoint_id}") and m["project"] in (
                    self.project, PROJECT_NUMBER):
                return endpoint
        return None

    async def get_endpoint(self, request: web.Request) -> web.Response:
        endpoint = self._endpoint(request, request.match_info["endpoint"])
        if endpoint is None:
            return self.error(404, f"Endpoint `{request.match_info['endpoint']}` not found.")
        return web.json_response(endpoint)

    async def list_endpoints(self, request: web.Request) -> web.Response:
        location = request.match_info["location"]
        items = [e for n, e in self.all_endpoints().items() if f"/locations/{location}/" in n]
        return web.json_response({"endpoints": items} if items else {})

    # ---- generateContent ----

    async def endpoint_method(self, request: web.Request) -> web.StreamResponse:
        endpoint_id, _, method = request.match_info["endpoint"].partition(":")
        if self._endpoint(request, endpoint_id) is None:
            return self.error(404, f"Endpoint `{endpoint_id}` not found.")
        return await self.generate(request, method, "tuned")

    async def publisher_method(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["model"].partition(":")
        if request.match_info["publisher"] != "google" or model not in PUBLISHER_MODELS:
            return self.error(404, f"Publisher Model `{request.match_info['publisher']}/{model}` was not found or "
                                   "your project does not have access to it.")
        return await self.generate(request, method, model)

    def _invalid(self, body: Any) -> web.Response | None:
        if not isinstance(body, dict):
            return self.error(400, "Invalid JSON payload received.")
        if self.generate_discovery is not None:
            import jsonschema

            schema = json_schema(self.generate_discovery, "GoogleCloudAiplatformV1GenerateContentRequest")
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=str)
            if errors:
                return self.error(400, f"Invalid JSON payload received. {errors[0].message}")
        if not body.get("contents"):
            return self.error(400, "Unable to submit request because it must include at least one parts field.")
        return None

    async def generate(self, request: web.Request, method: str, version: str) -> web.StreamResponse:
        if method not in ("generateContent", "streamGenerateContent"):
            return self.error(404, f"Method not found: {method}.")
        try:
            body = await request.json()
        except ValueError:
            return self.error(400, "Invalid JSON payload received.")
        if (problem := self._invalid(body)) is not None:
            return problem
        self.generate_bodies.append(body)
        candidates = self.reply(body)
        meta = {"modelVersion": version, "createTime": rfc3339(self._now()), "responseId": secrets.token_urlsafe(12)}
        prompt = sum(len(json.dumps(c)) // 16 + 1 for c in body["contents"])
        if method == "generateContent":
            out = sum(len(str(p.get("text", "")).split()) or 1 for c in candidates for p in c["content"]["parts"])
            return web.json_response({"candidates": candidates, "usageMetadata": usage(prompt, out), **meta})
        if request.query.get("alt") != "sse":  # without alt=sse Google streams one JSON array: not modelled
            return self.error(400, "This stand-in streams Server-Sent Events only (alt=sse).")
        return await self.stream(request, candidates, prompt, meta)

    def reply(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        last = body["contents"][-1]["parts"]
        declared = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []]
        config = body.get("generationConfig") or {}
        if declared and not any("functionResponse" in p for p in last):
            parts = [{"functionCall": {"name": declared[0]["name"], "args": {"city": "Paris"}}}]
            return [candidate(0, parts, "STOP")]
        said = " ".join(p["text"] if "text" in p else json.dumps(p["functionResponse"]["response"])
                        for p in last if "text" in p or "functionResponse" in p)
        out = []
        for i in range(config.get("candidateCount", 1)):
            words, reason = f"echo: {said}{f' #{i}' if i else ''}".split(), "STOP"
            for stop in config.get("stopSequences") or []:
                if stop in words:
                    words = words[:words.index(stop)]
            if "maxOutputTokens" in config and len(words) > config["maxOutputTokens"]:
                words, reason = words[:config["maxOutputTokens"]], "MAX_TOKENS"
            out.append(candidate(i, [{"text": " ".join(words)}], reason))
        return out

    async def stream(self, request: web.Request, candidates: list[dict[str, Any]], prompt: int,
                     meta: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        sent, out = 0, 0
        for cand in candidates:
            pieces = _pieces(cand["content"]["parts"])
            for k, part in enumerate(pieces):
                if self.stream_fault and sent == self.stream_fault[0]:
                    _, code, status, message = self.stream_fault
                    await resp.write(b"data: " + json.dumps({"error": {"code": code, "message": message,
                                                                       "status": status}}).encode() + b"\r\n\r\n")
                    return resp
                out += 1
                final = k == len(pieces) - 1
                chunk = candidate(cand.get("index", 0), [part], cand["finishReason"] if final else None)
                event = {"candidates": [chunk], "usageMetadata": usage(prompt, out) if final else
                         {"promptTokenCount": prompt}, **meta}
                await resp.write(b"data: " + json.dumps(event).encode() + b"\r\n\r\n")
                sent += 1
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
        await resp.write_eof()
        return resp


def _pieces(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text parts word by word (as Gemini streams text); a function call whole."""
    out: list[dict[str, Any]] = []
    for part in parts:
        if "text" in part:
            words = part["text"].split(" ")
            out.extend({"text": w if i == 0 else " " + w} for i, w in enumerate(words))
        else:
            out.append(part)
    return out


def candidate(index: int, parts: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
    if finish:
        out["finishReason"] = finish
    if index:  # proto3 JSON leaves 0 out
        out["index"] = index
    return out


def usage(prompt: int, out: int) -> dict[str, Any]:
    return {"promptTokenCount": prompt, "candidatesTokenCount": out, "totalTokenCount": prompt + out,
            "trafficType": "ON_DEMAND"}
