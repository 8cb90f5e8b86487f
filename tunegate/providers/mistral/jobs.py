"""Jobs: OpenAI's create request → Mistral's ``JobIn``; Mistral's ``CompletionJobOut`` /
``CompletionDetailedJobOut`` (and the classifier variants) → OpenAI's ``FineTuningJob``; the
detailed job's ``events`` and ``checkpoints`` arrays → OpenAI events and checkpoints. See MAPPING.md."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tunegate import models
from tunegate.errors import InvalidRequest
from tunegate.providers.base import JSON

if TYPE_CHECKING:
    from tunegate.context import RequestContext

# Mistral's default (and documented) learning rate, CompletionTrainingParametersIn.learning_rate.default.
# OpenAI's learning_rate_multiplier is taken as a multiple of it: multiplier 1 == 1e-4.
BASE_LEARNING_RATE = 1e-4
LEARNING_RATE_RANGE = (1e-8, 1.0)  # CompletionTrainingParametersIn.learning_rate: minimum, maximum

# Mistral's job status enum (CompletionJobOut.status) → OpenAI's. Order of Mistral's lifecycle with
# auto_start: QUEUED → VALIDATING → VALIDATED → RUNNING → SUCCESS; a job created without auto_start
# waits in VALIDATED until POST …/start (STARTED) — see MAPPING.md for the reasoning on each row.
JOB_STATUS = {
    "QUEUED": "queued",
    "STARTED": "queued",
    "VALIDATING": "validating_files",
    "VALIDATED": "queued",
    "RUNNING": "running",
    "FAILED_VALIDATION": "failed",
    "FAILED": "failed",
    "SUCCESS": "succeeded",
    "CANCELLED": "cancelled",
    "CANCELLATION_REQUESTED": "cancelled",
}
TERMINAL = {"FAILED_VALIDATION", "FAILED", "SUCCESS", "CANCELLED", "CANCELLATION_REQUESTED"}
FAILED = {"FAILED_VALIDATION", "FAILED"}

# WandbIntegration.api_key: minLength 40, maxLength 40 in Mistral's OpenAPI (its SDK, generated from it,
# does not check). W&B's classic keys are 40 characters; W&B Server's (`local-…`) and the newer longer
# keys would be refused by Mistral's validation, so the gateway says it first, without echoing the key.
WANDB_KEY_LENGTH = 40

# OpenAI create fields the adapter knows; anything else non-null is refused by name.
CREATE_FIELDS = {"model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed",
                 "metadata", "integrations"}
# Mistral-native hyperparameters accepted as they are (CompletionTrainingParametersIn).
NATIVE_HP = {"training_steps": int, "learning_rate": float, "weight_decay": float, "warmup_fraction": float,
             "seq_len": int, "fim_ratio": float}


# ---- request -----------------------------------------------------------------------------------

def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _hyperparameters(hp: JSON, where: str) -> JSON:
    out: JSON = {}
    for key, value in hp.items():
        param = f"{where}.{key}"
        if value is None or (value == "auto" and key in ("n_epochs", "learning_rate_multiplier", "batch_size")):
            continue
        if key == "n_epochs":
            if not _number(value) or value <= 0:
                raise InvalidRequest(f"'{param}' must be a positive number or 'auto'.", param=param)
            out["epochs"] = value
        elif key == "learning_rate_multiplier":
            if not _number(value) or value <= 0:
                raise InvalidRequest(f"'{param}' must be a positive number or 'auto'.", param=param)
            rate = value * BASE_LEARNING_RATE
            low, high = LEARNING_RATE_RANGE
            if not low <= rate <= high:
                raise InvalidRequest(
                    f"'{param}' × Mistral's base learning rate {BASE_LEARNING_RATE:g} gives {rate:g}, outside "
                    f"Mistral's range {low:g}..{high:g}.", param=param)
            out["learning_rate"] = float(f"{rate:.12g}")
        elif key == "batch_size":
            raise InvalidRequest(
                f"Mistral has no batch size ('{param}'): it trains a fixed number of tokens per step. Leave it "
                "'auto', or set 'training_steps' or 'n_epochs'.", param=param, code="unsupported_parameter")
        elif key in NATIVE_HP:
            kind = NATIVE_HP[key]
            if not _number(value) or (kind is int and not isinstance(value, int)):
                raise InvalidRequest(f"'{param}' must be {'an integer' if kind is int else 'a number'}.",
                                     param=param)
            out[key] = value
        else:
            raise InvalidRequest(f"Mistral has no hyperparameter '{key}' ('{param}').", param=param,
                                 code="unsupported_parameter")
    if "learning_rate_multiplier" in hp and hp["learning_rate_multiplier"] not in (None, "auto") \
            and hp.get("learning_rate") is not None:
        raise InvalidRequest(f"Send either '{where}.learning_rate_multiplier' or the absolute "
                             f"'{where}.learning_rate', not both.", param=f"{where}.learning_rate")
    return out


def _integrations(ctx: RequestContext, value: Any) -> list[JSON]:
    if not isinstance(value, list):
        raise InvalidRequest("'integrations' must be an array.", param="integrations")
    out = []
    for i, item in enumerate(value):
        where = f"integrations[{i}]"
        if not isinstance(item, dict) or item.get("type") != "wandb" or not isinstance(item.get("wandb"), dict):
            raise InvalidRequest(f"Mistral supports only 'wandb' integrations ('{where}').", param=where)
        wandb = item["wandb"]
        if not isinstance(wandb.get("project"), str) or not wandb["project"]:
            raise InvalidRequest(f"'{where}.wandb.project' is required.", param=f"{where}.wandb.project")
        for field in ("entity", "tags"):
            if wandb.get(field):
                raise InvalidRequest(f"Mistral's W&B integration has no '{field}' ('{where}.wandb.{field}').",
                                     param=f"{where}.wandb.{field}", code="unsupported_parameter")
        unknown = sorted(set(wandb) - {"project", "name", "entity", "tags"})
        if unknown:
            raise InvalidRequest(f"Mistral's W&B integration has no '{unknown[0]}'.",
                                 param=f"{where}.wandb.{unknown[0]}", code="unsupported_parameter")
        # Mistral runs the W&B client itself and needs the key; OpenAI keeps it at the organisation
        # level, so it comes from a provider option here.
        native: JSON = {"type": "wandb", "project": wandb["project"], "api_key": _wandb_key(ctx, where)}
        if wandb.get("name"):
            native["name"] = wandb["name"]
        out.append(native)
    return out


def _wandb_key(ctx: RequestContext, where: str) -> str:
    key = str(ctx.require_option("wandb_api_key"))
    if len(key) != WANDB_KEY_LENGTH:
        raise InvalidRequest(f"Mistral takes a W&B API key of exactly {WANDB_KEY_LENGTH} characters "
                             f"(x-portkey-wandb-api-key has {len(key)}); W&B Server keys and the newer, longer W&B "
                             "keys are refused by Mistral.", param=f"{where}.wandb", code="invalid_provider_option")
    return key


def create_body(ctx: RequestContext, body: JSON) -> JSON:
    """OpenAI's CreateFineTuningJobRequest → Mistral's JobIn."""
    unknown = sorted(k for k, v in body.items() if k not in CREATE_FIELDS and v is not None)
    if unknown:
        raise InvalidRequest(f"Mistral fine-tuning does not accept '{unknown[0]}'.", param=unknown[0],
                             code="unsupported_parameter")
    if body.get("seed") is not None:
        raise InvalidRequest("Mistral fine-tuning has no 'seed'.", param="seed", code="unsupported_parameter")
    if body.get("metadata"):
        raise InvalidRequest("Mistral jobs carry no user metadata ('metadata').", param="metadata",
                             code="unsupported_parameter")
    hp = body.get("hyperparameters") or {}
    where = "hyperparameters"
    method = body.get("method")
    if method is not None:
        if method.get("type") not in (None, "supervised"):
            raise InvalidRequest(f"Mistral supports only supervised fine-tuning, not '{method.get('type')}'.",
                                 param="method.type", code="unsupported_parameter")
        supervised = method.get("supervised") or {}
        if not isinstance(supervised, dict):
            raise InvalidRequest("'method.supervised' must be an object.", param="method.supervised")
        method_hp = supervised.get("hyperparameters") or {}
        if method_hp and hp:
            raise InvalidRequest("Send hyperparameters in 'method' or at the top level, not both.",
                                 param="hyperparameters")
        if method_hp:
            hp, where = method_hp, "method.supervised.hyperparameters"
    if not isinstance(hp, dict):
        raise InvalidRequest(f"'{where}' must be an object.", param=where)
    native: JSON = {
        "model": body["model"],
        "training_files": [{"file_id": body["training_file"], "weight": 1}],
        "hyperparameters": _hyperparameters(hp, where),
        # OpenAI jobs start by themselves; Mistral's only do with auto_start (else they wait in VALIDATED).
        "auto_start": True,
    }
    if body.get("validation_file"):
        native["validation_files"] = [body["validation_file"]]
    if body.get("suffix"):
        native["suffix"] = body["suffix"]
    if body.get("integrations"):
        native["integrations"] = _integrations(ctx, body["integrations"])
    return native


# ---- response ----------------------------------------------------------------------------------

def unix(value: Any) -> int | None:
    """Unix seconds from seconds, milliseconds or an ISO-8601 string."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
        return int(seconds / 1000 if seconds > 1e11 else seconds)
    if isinstance(value, str):
        text = value.strip()
        try:
            return unix(float(text))
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp())
    return None


def _plain(number: Any) -> Any:
    if isinstance(number, float) and number.is_integer():
        return int(number)
    return number


def _hp_out(native: JSON) -> JSON:
    hp: JSON = {"batch_size": "auto", "n_epochs": "auto", "learning_rate_multiplier": "auto"}
    if _number(native.get("epochs")):
        hp["n_epochs"] = _plain(native["epochs"])
    if _number(native.get("learning_rate")):
        hp["learning_rate_multiplier"] = float(f"{native['learning_rate'] / BASE_LEARNING_RATE:.10g}")
    for key in NATIVE_HP:  # Mistral's own values travel alongside, under their own names
        if native.get(key) is not None:
            hp[key] = native[key]
    return hp


def _events_oldest_first(raw: JSON) -> list[JSON]:
    events = [e for e in raw.get("events") or [] if isinstance(e, dict)]
    stamps = [unix(e.get("created_at")) or 0 for e in events]
    # Mistral sends the newest first; keep whatever order it uses stable, oldest first here.
    if len(stamps) > 1 and stamps[0] < stamps[-1]:
        return events
    return list(reversed(events))


def _event_status(event: JSON) -> str | None:
    data = event.get("data")
    status = data.get("status") if isinstance(data, dict) else None
    return status if isinstance(status, str) else None


def _event_detail(event: JSON) -> str | None:
    data = event.get("data")
    if not isinstance(data, dict):
        return None
    for key in ("error", "message", "reason", "detail"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            return str(value["message"])
    return None


def _job_error(native_status: str, raw: JSON) -> JSON:
    # The newest event that explains something (Mistral's job object has no error field).
    detail = next((d for e in reversed(_events_oldest_first(raw)) if (d := _event_detail(e))), None)
    if native_status == "FAILED_VALIDATION":
        return models.job_error(detail or "Mistral rejected the training or validation data (FAILED_VALIDATION).",
                                code="invalid_training_file", param="training_file")
    return models.job_error(detail or "The Mistral fine-tuning job failed (FAILED).", code="job_failed")


def _finished_at(native_status: str, raw: JSON) -> int | None:
    if native_status not in TERMINAL:
        return None
    for event in reversed(_events_oldest_first(raw)):
        if _event_status(event) == native_status:
            return unix(event.get("created_at"))
    return unix(raw.get("modified_at"))


def _estimated_finish(native_status: str, raw: JSON) -> int | None:
    meta = raw.get("metadata")
    if native_status in TERMINAL or not isinstance(meta, dict):
        return None
    duration = meta.get("expected_duration_seconds")
    start = unix(meta.get("estimated_start_time")) or unix(raw.get("created_at"))
    if not isinstance(duration, int | float) or start is None:
        return None
    return int(start + duration)


def _integrations_out(value: Any) -> list[JSON] | None:
    if not isinstance(value, list) or not value:
        return None
    out = []
    for item in value:
        if isinstance(item, dict) and item.get("type", "wandb") == "wandb":
            out.append({"type": "wandb", "wandb": {"project": item.get("project"), "name": item.get("name"),
                                                   "entity": None, "tags": []}})
    return out or None


def _file_ids(value: Any) -> list[str]:
    ids = []
    for item in value or []:
        if isinstance(item, str):
            ids.append(item)
        elif isinstance(item, dict) and isinstance(item.get("file_id"), str):
            ids.append(item["file_id"])
    return ids


def to_job(raw: JSON) -> JSON:
    native = str(raw.get("status") or "")
    status = JOB_STATUS.get(native, "running" if native else "queued")
    training = _file_ids(raw.get("training_files"))
    validation = _file_ids(raw.get("validation_files"))
    hp = _hp_out(raw.get("hyperparameters") or {})
    extra: JSON = {"provider_status": native}
    if len(training) > 1:
        extra["training_files"] = training
    if len(validation) > 1:
        extra["validation_files"] = validation
    if raw.get("suffix"):
        extra["suffix"] = raw["suffix"]
    return models.job(
        id=str(raw.get("id")),
        model=str(raw.get("model") or ""),
        status=status,
        created_at=unix(raw.get("created_at")) or 0,
        training_file=training[0] if training else "",
        validation_file=validation[0] if validation else None,
        fine_tuned_model=raw.get("fine_tuned_model") or None,
        finished_at=_finished_at(native, raw),
        hyperparameters=hp,
        trained_tokens=raw.get("trained_tokens") if isinstance(raw.get("trained_tokens"), int) else None,
        error=_job_error(native, raw) if native in FAILED else None,
        estimated_finish=_estimated_finish(native, raw),
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
        integrations=_integrations_out(raw.get("integrations")),
        **extra,
    )


def events(raw: JSON) -> list[JSON]:
    """The detailed job's events as OpenAI events, newest first. Mistral's events have no id: the id is
    the job's id and the event's position counted from the oldest, which new events never change."""
    job_id = str(raw.get("id"))
    out = []
    for n, event in enumerate(_events_oldest_first(raw)):
        name = str(event.get("name") or "event")
        status = _event_status(event)
        detail = _event_detail(event)
        if status is not None:
            message = f"Job status changed to {status}" + (f": {detail}" if detail else "")
        else:
            message = name + (f": {detail}" if detail else "")
        raw_data = event.get("data")
        data: JSON = raw_data if isinstance(raw_data, dict) else {}
        out.append(models.event(id=f"ftevent-{job_id}-{n}", created_at=unix(event.get("created_at")) or 0,
                                message=message, level="error" if status in FAILED else "info",
                                data={"name": name, **data}))
    out.reverse()
    return out


def checkpoints(raw: JSON) -> list[JSON]:
    """The detailed job's checkpoints, newest (highest step) first. Mistral's checkpoints are metrics
    only — no model is published per checkpoint — so ``fine_tuned_model_checkpoint`` is empty."""
    job_id = str(raw.get("id"))
    out = []
    for cp in raw.get("checkpoints") or []:
        if not isinstance(cp, dict) or not isinstance(cp.get("step_number"), int):
            continue
        step = cp["step_number"]
        metrics: JSON = {"step": step}
        for key, value in (cp.get("metrics") or {}).items():
            if _number(value):
                metrics[key] = value
        out.append(models.checkpoint(id=f"ftckpt-{job_id}-{step}", created_at=unix(cp.get("created_at")) or 0,
                                     job_id=job_id, step_number=step, model_checkpoint="", metrics=metrics))
    out.sort(key=lambda c: c["step_number"], reverse=True)
    return out
