"""The OpenAPI document of tunegate's own API, served at ``/openapi.json``.

It describes what the routes accept and return: the OpenAI fine-tuning, files and uploads operations
(shapes as in OpenAI's published spec), tunegate's headers, and the error answers every route can
give. Kept by hand next to the routes it describes; a test checks that every route is in it.
"""

from __future__ import annotations

from typing import Any

from tunegate import __version__

JSON = dict[str, Any]


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: JSON) -> JSON:
    return {"content": {"application/json": {"schema": schema}}}


ERRORS = {str(code): {"description": text, **_json(_ref("Error"))} for code, text in [
    (400, "Invalid request, unknown provider, or an operation the provider does not have"),
    (401, "Missing, invalid or revoked key"), (403, "Key not granted the connection"), (404, "Not found"),
    (413, "Body too large"), (429, "Rate limited"), (502, "Provider unreachable"), (504, "Provider timeout")]}

HEADERS = [
    {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": text}
    for name, text in [
        ("x-portkey-provider", "Provider to route to (openai, azure-openai, bedrock, vertex-ai, together, "
                               "fireworks, mistral, tunegate, local)."),
        ("x-portkey-api-key", "A tunegate key (tg-…) or the provider's own key."),
        ("x-portkey-virtual-key", "Name of a stored connection."),
        ("x-portkey-custom-host", "Provider base URL up to its version segment."),
        ("x-portkey-config", "JSON: provider, virtual_key, retry {attempts, on_status_codes}, request_timeout."),
        ("x-portkey-trace-id", "Echoed on the response."),
        ("x-portkey-request-timeout", "Milliseconds."),
    ]
]


def _path_id(name: str) -> JSON:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: JSON) -> JSON:
    return {"name": name, "in": "query", "required": False, "schema": schema}


PAGE = [_query("after", {"type": "string"}), _query("limit", {"type": "integer", "minimum": 0})]


def _op(op_id: str, ok: JSON, *, params: list[JSON] | None = None, body: JSON | None = None) -> JSON:
    operation: JSON = {"operationId": op_id, "parameters": HEADERS + (params or []),
                       "responses": {"200": {"description": "OK", **ok}, **ERRORS}}
    if body is not None:
        operation["requestBody"] = {"required": True, **body}
    return operation


def _list(item: str) -> JSON:
    return {"type": "object", "required": ["object", "data", "has_more"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref(item)},
                           "has_more": {"type": "boolean"}, "first_id": {"type": ["string", "null"]},
                           "last_id": {"type": ["string", "null"]}}}


HYPER = {"anyOf": [{"const": "auto"}, {"type": "number"}]}
SCHEMAS: JSON = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
    "FineTuningJob": {
        "type": "object",
        "required": ["id", "object", "model", "created_at", "finished_at", "fine_tuned_model", "organization_id",
                     "result_files", "status", "validation_file", "training_file", "hyperparameters",
                     "trained_tokens", "error", "seed"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "fine_tuning.job"}, "model": {"type": "string"},
            "created_at": {"type": "integer"}, "finished_at": {"type": ["integer", "null"]},
            "fine_tuned_model": {"type": ["string", "null"]}, "organization_id": {"type": "string"},
            "result_files": {"type": "array", "items": {"type": "string"}},
            "status": {"enum": ["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]},
            "validation_file": {"type": ["string", "null"]}, "training_file": {"type": "string"},
            "hyperparameters": {"type": "object"}, "trained_tokens": {"type": ["integer", "null"]},
            "error": {"type": ["object", "null"]}, "seed": {"type": "integer"},
            "estimated_finish": {"type": ["integer", "null"]}, "method": {"type": "object"},
            "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}}}},
    "CreateFineTuningJobRequest": {
        "type": "object", "required": ["model", "training_file"],
        "properties": {
            "model": {"type": "string", "minLength": 1}, "training_file": {"type": "string", "minLength": 1},
            "validation_file": {"type": ["string", "null"]},
            "suffix": {"type": ["string", "null"], "minLength": 1, "maxLength": 64},
            "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 2147483647},
            "hyperparameters": {"type": "object", "properties": {
                "n_epochs": HYPER, "batch_size": HYPER, "learning_rate_multiplier": HYPER}},
            "method": {"type": "object", "properties": {"type": {"enum": ["supervised", "dpo", "reinforcement"]}}},
            "metadata": {"type": ["object", "null"], "maxProperties": 16,
                         "additionalProperties": {"type": "string", "maxLength": 512}},
            "integrations": {"type": ["array", "null"]}}},
    "FineTuningJobEvent": {"type": "object", "required": ["object", "id", "created_at", "level", "message"],
                           "properties": {"object": {"const": "fine_tuning.job.event"}, "id": {"type": "string"},
                                          "created_at": {"type": "integer"}, "level": {"type": "string"},
                                          "message": {"type": "string"}, "type": {"type": "string"},
                                          "data": {"type": "object"}}},
    "FineTuningJobCheckpoint": {"type": "object", "required": ["object", "id", "step_number", "metrics"],
                                "properties": {"object": {"const": "fine_tuning.job.checkpoint"},
                                               "id": {"type": "string"}, "step_number": {"type": "integer"},
                                               "metrics": {"type": "object"}}},
    "OpenAIFile": {"type": "object", "required": ["id", "object", "bytes", "created_at", "filename", "purpose"],
                   "properties": {"id": {"type": "string"}, "object": {"const": "file"}, "bytes": {"type": "integer"},
                                  "created_at": {"type": "integer"}, "filename": {"type": "string"},
                                  "purpose": {"type": "string"}, "status": {"type": "string"},
                                  "expires_at": {"type": "integer"}}},
    "DeletedFile": {"type": "object", "required": ["id", "object", "deleted"],
                    "properties": {"id": {"type": "string"}, "object": {"type": "string"},
                                   "deleted": {"type": "boolean"}}},
    "Upload": {"type": "object", "required": ["id", "object", "status"],
               "properties": {"id": {"type": "string"}, "object": {"const": "upload"},
                              "status": {"enum": ["pending", "completed", "cancelled", "expired"]},
                              "file": {"anyOf": [_ref("OpenAIFile"), {"type": "null"}]}}},
    "CreateChatCompletionRequest": {
        "type": "object", "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 512},
            "messages": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["role"],
                "properties": {"role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
                               "content": {"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]}}}},
            "stream": {"type": ["boolean", "null"]},
            "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
            "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 128},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "max_tokens": {"type": ["integer", "null"], "minimum": 1},
            "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
            "stop": {"anyOf": [{"type": "string"}, {"type": "array", "maxItems": 4, "items": {"type": "string"}},
                               {"type": "null"}]},
            "seed": {"type": ["integer", "null"]},
            "tools": {"type": ["array", "null"]}, "tool_choice": {"anyOf": [{"type": "string"}, {"type": "object"}]}}},
    "ChatCompletion": {"type": "object", "required": ["id", "object", "created", "model", "choices"],
                       "properties": {"id": {"type": "string"}, "object": {"const": "chat.completion"},
                                      "created": {"type": "integer"}, "model": {"type": "string"},
                                      "choices": {"type": "array"}, "usage": {"type": ["object", "null"]}}},
    "Model": {"type": "object", "required": ["id", "object", "created", "owned_by"],
              "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
                             "owned_by": {"type": "string"}}},
    "UploadPart": {"type": "object", "required": ["id", "object", "upload_id"],
                   "properties": {"id": {"type": "string"}, "object": {"const": "upload.part"},
                                  "upload_id": {"type": "string"}}},
}

FILE_FORM = {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["purpose", "file"],
    "properties": {"purpose": {"type": "string"}, "file": {"type": "string", "format": "binary"},
                   "expires_after[anchor]": {"type": "string"}, "expires_after[seconds]": {"type": "integer"}}}}}}
PART_FORM = {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["data"], "properties": {"data": {"type": "string", "format": "binary"}}}}}}


def document() -> JSON:
    from tunegate.webhooks.routes import openapi_paths as webhook_paths

    job = _json(_ref("FineTuningJob"))
    job_id = [_path_id("job_id")]
    file_id = [_path_id("file_id")]
    upload_id = [_path_id("upload_id")]
    paths: JSON = {
        "/v1/fine_tuning/jobs": {
            "get": _op("listFineTuningJobs", _json(_list("FineTuningJob")), params=PAGE),
            "post": _op("createFineTuningJob", job, body=_json(_ref("CreateFineTuningJobRequest")))},
        "/v1/fine_tuning/jobs/{job_id}": {"get": _op("retrieveFineTuningJob", job, params=job_id),
                                          # Not OpenAI's: providers without job deletion answer 400.
                                          "delete": _op("deleteFineTuningJob", _json(_ref("DeletedFile")),
                                                        params=job_id)},
        "/v1/fine_tuning/jobs/{job_id}/cancel": {"post": _op("cancelFineTuningJob", job, params=job_id)},
        "/v1/fine_tuning/jobs/{job_id}/pause": {"post": _op("pauseFineTuningJob", job, params=job_id)},
        "/v1/fine_tuning/jobs/{job_id}/resume": {"post": _op("resumeFineTuningJob", job, params=job_id)},
        "/v1/fine_tuning/jobs/{job_id}/events": {
            "get": _op("listFineTuningEvents", _json(_list("FineTuningJobEvent")), params=job_id + PAGE)},
        "/v1/fine_tuning/jobs/{job_id}/checkpoints": {
            "get": _op("listFineTuningJobCheckpoints", _json(_list("FineTuningJobCheckpoint")),
                       params=job_id + PAGE)},
        # tunegate's own: the job watcher's snapshot, no upstream call (or a live read; see docs/webhooks.md).
        "/v1/tunegate/jobs/{job_id}/snapshot": {"get": _op("retrieveFineTuningJobSnapshot", {**job, "headers": {
            "x-tunegate-source": {"schema": {"enum": ["snapshot", "live"]}},
            "x-tunegate-snapshot-age": {"schema": {"type": "integer"}, "description": "Seconds (snapshots)"},
            "x-tunegate-live-reason": {"schema": {"type": "string"}, "description": "Why it was read live"}}},
            params=job_id)},
        "/v1/files": {
            "get": _op("listFiles", _json(_list("OpenAIFile")), params=PAGE + [
                _query("purpose", {"type": "string"}), _query("order", {"enum": ["asc", "desc"]})]),
            "post": _op("createFile", _json(_ref("OpenAIFile")), body=FILE_FORM)},
        "/v1/files/{file_id}": {"get": _op("retrieveFile", _json(_ref("OpenAIFile")), params=file_id),
                                "delete": _op("deleteFile", _json(_ref("DeletedFile")), params=file_id)},
        "/v1/files/{file_id}/content": {"get": _op(
            "downloadFile", {"content": {"application/octet-stream": {"schema": {"type": "string"}}}},
            params=file_id)},
        "/v1/uploads": {"post": _op("createUpload", _json(_ref("Upload")), body=_json({
            "type": "object", "required": ["filename", "purpose", "bytes", "mime_type"],
            "properties": {"filename": {"type": "string"}, "purpose": {"type": "string"},
                           "bytes": {"type": "integer", "minimum": 0}, "mime_type": {"type": "string"}}}))},
        "/v1/uploads/{upload_id}/parts": {"post": _op("addUploadPart", _json(_ref("UploadPart")),
                                                      params=upload_id, body=PART_FORM)},
        "/v1/uploads/{upload_id}/complete": {"post": _op("completeUpload", _json(_ref("Upload")), params=upload_id,
                                                         body=_json({"type": "object", "required": ["part_ids"],
                                                                     "properties": {"part_ids": {
                                                                         "type": "array",
                                                                         "items": {"type": "string"}},
                                                                         "md5": {"type": "string"}}}))},
        "/v1/uploads/{upload_id}/cancel": {"post": _op("cancelUpload", _json(_ref("Upload")), params=upload_id)},
        "/v1/fine_tuning/checkpoints/{checkpoint}/permissions": {
            "get": _op("listCheckpointPermissions", _json({"type": "object"}), params=[_path_id("checkpoint")]),
            "post": _op("createCheckpointPermission", _json({"type": "object"}), params=[_path_id("checkpoint")],
                        body=_json({"type": "object", "required": ["project_ids"], "properties": {
                            "project_ids": {"type": "array", "items": {"type": "string"}}}}))},
        "/v1/fine_tuning/checkpoints/{checkpoint}/permissions/{permission_id}": {
            "delete": _op("deleteCheckpointPermission", _json({"type": "object"}),
                          params=[_path_id("checkpoint"), _path_id("permission_id")])},
        "/v1/fine_tuning/alpha/graders/run": {"post": _op("runGrader", _json({"type": "object"}),
                                                          body=_json({"type": "object"}))},
        "/v1/fine_tuning/alpha/graders/validate": {"post": _op("validateGrader", _json({"type": "object"}),
                                                               body=_json({"type": "object"}))},
        "/v1/chat/completions": {"post": _op(
            "createChatCompletion", {"content": {"application/json": {"schema": _ref("ChatCompletion")},
                                                 "text/event-stream": {"schema": {"type": "string"}}}},
            body=_json(_ref("CreateChatCompletionRequest")))},
        "/v1/models": {"get": _op("listModels", _json({"type": "object", "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}}))},
        "/v1/models/{model}": {"get": _op("retrieveModel", _json(_ref("Model")), params=[_path_id("model")]),
                               "delete": _op("deleteModel", _json({"type": "object"}), params=[_path_id("model")])},
        "/v1/models/{model}/deploy": {"post": _op("deployModel", _json(_ref("Model")), params=[_path_id("model")])},
        **webhook_paths(_op, _json, _path_id),
        "/healthz": {"get": {"operationId": "healthz", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"operationId": "readyz", "responses": {"200": {"description": "database reachable"},
                                                                    "503": {"description": "database down"}}}},
    }
    return {"openapi": "3.1.0",
            "info": {"title": "tunegate", "version": __version__,
                     "description": "One OpenAI-compatible fine-tuning API over every provider."},
            "paths": paths, "components": {"schemas": SCHEMAS}}
