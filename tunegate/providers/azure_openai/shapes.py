"""OpenAI's shapes ↔ Azure OpenAI's: the create body per api-version, job and file answers, and the
file list the gateway pages itself where Azure does not. Sources: MAPPING.md."""

from __future__ import annotations

from typing import Any

from tunegate import models
from tunegate.errors import InvalidRequest
from tunegate.providers.azure_openai.versions import METHOD_SINCE, TRAINING_TYPE_SINCE, Surface
from tunegate.providers.base import JSON, Page

# Azure's FineTuningState → OpenAI's job status. `created` is "exposed only for compatibility";
# `notRunning` appears on jobs waiting for capacity.
JOB_STATUS = {
    "created": "validating_files",
    "validating_files": "validating_files",
    "pending": "queued",
    "notRunning": "queued",
    "queued": "queued",
    "paused": "queued",
    "pausing": "running",
    "resuming": "running",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
    "canceled": "cancelled",
    "cancelling": "running",
}
# Azure's FileState → OpenAI's (deprecated but required) file status.
FILE_STATUS = {"uploaded": "uploaded", "pending": "uploaded", "running": "uploaded", "processed": "processed",
               "error": "error", "deleting": "processed", "deleted": "processed"}
# Numbers Azure answers for "the service chose": `"n_epochs": -1` in every authoring spec's job examples
# (stable/2024-10-21 and preview/2025-04-01-preview post_finetuning_job.json).
AUTO_FIELDS = ("n_epochs", "batch_size", "learning_rate_multiplier")
# The training tier (Azure's fine-tuning how-to, "Select a training type"): the spellings its REST samples
# send as `trainingType`, by the names the portal gives the tiers.
TRAINING_TYPES = {"standard": "standard", "global": "globalstandard", "globalstandard": "globalstandard",
                  "developer": "developerTier", "developertier": "developerTier"}
AUTHORING_SUFFIX = 40


# ---- create ----------------------------------------------------------------------------------

def create_body(api: Surface, body: JSON, training_type: Any = None) -> JSON:
    body = dict(body)
    _training_type(api, body, training_type)
    if api.v1:
        return body
    suffix = body.get("suffix")
    if isinstance(suffix, str) and len(suffix) > api.suffix_max_length:
        # FineTuningJobCreation.suffix: "can contain up to 40 characters" (every authoring spec).
        raise InvalidRequest(f"'suffix' must be at most {api.suffix_max_length} characters on Azure OpenAI "
                             f"api-version {api.version} (up to 64 on the v1 surface).", param="suffix",
                             code="invalid_suffix")
    _method(api, body)
    unknown = sorted(k for k, v in body.items() if api.create_fields is not None and k not in api.create_fields
                     and v is not None and k != "trainingType")
    if unknown:
        raise InvalidRequest(f"Azure OpenAI api-version {api.version} does not accept '{unknown[0]}' on job "
                             "creation (the v1 surface does: x-portkey-azure-api-version: v1).",
                             param=unknown[0], code="unsupported_parameter")
    if api.numeric_hyperparameters:
        _drop_auto(body)
    return body


def _training_type(api: Surface, body: JSON, option: Any) -> None:
    """x-portkey-azure-training-type (or a connection's azure_training_type), or `trainingType` in the body
    as Azure's samples send it: one of the tiers, on a version that has them."""
    given = body.pop("trainingType", None)
    raw = option if option not in (None, "") else given
    if raw is None:
        return
    param = "x-portkey-azure-training-type" if option not in (None, "") else "trainingType"
    tier = TRAINING_TYPES.get(str(raw).lower())
    if tier is None:
        raise InvalidRequest("The Azure OpenAI training type must be Standard, Global or Developer.", param=param,
                             code="invalid_training_type")
    if given is not None and TRAINING_TYPES.get(str(given).lower()) != tier:
        raise InvalidRequest("'trainingType' and x-portkey-azure-training-type disagree.", param="trainingType",
                             code="invalid_training_type")
    if not api.training_type:
        raise InvalidRequest(f"Azure OpenAI api-version {api.version} has no training type; use "
                             f"{TRAINING_TYPE_SINCE}-preview or later, or v1.", param=param,
                             code="unsupported_parameter")
    body["trainingType"] = tier


def _method(api: Surface, body: JSON) -> None:
    method = body.get("method")
    if method is None:
        return
    kind = method.get("type") if isinstance(method, dict) else None
    if api.methods is not None and kind not in api.methods:
        later = f"{METHOD_SINCE}-preview or later (supervised, dpo)" if kind == "dpo" else "v1"
        raise InvalidRequest(f"Azure OpenAI api-version {api.version} has no '{kind}' fine-tuning method; use "
                             f"x-portkey-azure-api-version: {later}.", param="method", code="unsupported_parameter")
    if api.create_fields is not None and "method" not in api.create_fields:
        # GA has no `method`: a supervised method's hyperparameters become the top-level ones.
        body.pop("method")
        if hp := (method.get("supervised") or {}).get("hyperparameters"):
            body["hyperparameters"] = hp


def _drop_auto(body: JSON) -> None:
    """Authoring specs type the hyperparameters as int32/double: "auto" is not a value there, leaving the
    field out is (the service then chooses, and answers -1)."""
    holders = [body.get("hyperparameters")]
    method = body.get("method")
    if isinstance(method, dict) and isinstance(method.get(method.get("type")), dict):
        holders.append(method[method["type"]].get("hyperparameters"))
    for hp in holders:
        if isinstance(hp, dict):
            for name in [k for k, v in hp.items() if v == "auto"]:
                del hp[name]


# ---- answers ---------------------------------------------------------------------------------

def job(raw: JSON) -> JSON:
    out: dict[str, Any] = dict(raw)
    native = out.get("status", "")
    out["status"] = JOB_STATUS.get(native, "running" if native else "queued")
    if native != out["status"]:
        out["provider_status"] = native
    out["object"] = "fine_tuning.job"
    out.setdefault("organization_id", out.pop("organisation_id", ""))
    for field in ("fine_tuned_model", "finished_at", "trained_tokens", "validation_file", "error",
                  "estimated_finish"):
        out.setdefault(field, None)
    out.setdefault("result_files", [])
    out.setdefault("seed", 0)
    out["hyperparameters"] = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto",
                              **_auto(out.get("hyperparameters"))}
    method = out.get("method")
    if isinstance(method, dict) and isinstance(method.get(method.get("type")), dict):
        inner = method[method["type"]]
        if isinstance(inner.get("hyperparameters"), dict):
            out["method"] = {**method, method["type"]: {**inner, "hyperparameters": _auto(inner["hyperparameters"])}}
    if out.get("error") and not out["error"].get("message"):
        out["error"] = None  # Azure sends an empty error object on healthy jobs
    return out


def _auto(hp: Any) -> JSON:
    """Azure's -1 ("the service chose") as OpenAI's "auto"."""
    if not isinstance(hp, dict):
        return {}
    return {k: "auto" if k in AUTO_FIELDS and v == -1 else v for k, v in hp.items()}


def file(raw: JSON) -> JSON:
    f = dict(raw)
    f["object"] = "file"
    f["status"] = FILE_STATUS.get(f.get("status", "processed"), "processed")
    f["bytes"] = f.get("bytes") or 0
    return f


def page_files(files: list[JSON], page: Page) -> JSON:
    """One page of a whole file list, newest first unless `order=asc` (OpenAI's default order), with
    OpenAI's cursor: `after` is the id of the previous page's last file."""
    asc = str(page.extra.get("order", "desc")).lower() == "asc"
    files = sorted(files, key=lambda f: (f.get("created_at") or 0, str(f.get("id"))), reverse=not asc)
    if page.after:
        ids = [f.get("id") for f in files]
        if page.after not in ids:
            raise InvalidRequest(f"'after' names no file: '{page.after}'.", param="after", code="invalid_cursor")
        files = files[ids.index(page.after) + 1:]
    return models.page(files[:page.limit], len(files) > page.limit, with_ids=True)
