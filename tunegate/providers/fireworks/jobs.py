"""OpenAI job requests → Fireworks `SupervisedFineTuningJob` create bodies, and jobs back. See MAPPING.md."""

from __future__ import annotations

from typing import Any

from tunegate import models
from tunegate.errors import InvalidRequest
from tunegate.providers.base import JSON, whole_number
from tunegate.providers.fireworks.wire import resource_name, short_id, unix

# A bare base model id is one of Fireworks's own public models.
PUBLIC_MODELS = "fireworks"

# OpenAI's learning_rate_multiplier is relative; Fireworks takes an absolute rate. The multiplier is
# applied to Fireworks's documented default LoRA rate (firectl examples: --learning-rate 0.0001).
BASE_LEARNING_RATE = 1e-4

# JobState → OpenAI status. CANCELLING is reported as cancelled: the cancel is accepted and one-way,
# and OpenAI itself answers a cancel with `cancelled` at once (provider_status keeps the native word).
JOB_STATUS = {
    "JOB_STATE_UNSPECIFIED": "queued",
    "JOB_STATE_CREATING": "validating_files",
    "JOB_STATE_CREATING_INPUT_DATASET": "validating_files",
    "JOB_STATE_VALIDATING": "validating_files",
    "JOB_STATE_PENDING": "queued",
    "JOB_STATE_RE_QUEUEING": "queued",
    "JOB_STATE_IDLE": "queued",
    "JOB_STATE_PAUSED": "queued",
    "JOB_STATE_RUNNING": "running",
    "JOB_STATE_WRITING_RESULTS": "running",
    "JOB_STATE_COMPLETED": "succeeded",
    "JOB_STATE_EARLY_STOPPED": "succeeded",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_EXPIRED": "failed",
    "JOB_STATE_CANCELLING": "cancelled",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_DELETING": "cancelled",
    "JOB_STATE_DELETING_CLEANING_UP": "cancelled",
}
TERMINAL = {"succeeded", "failed", "cancelled"}

# Hyperparameters: OpenAI's three, then Fireworks-native extras accepted under the same object
# (snake_case name → (wire name, Python type)).
NATIVE_HYPERPARAMETERS: dict[str, tuple[str, type]] = {
    "learning_rate": ("learningRate", float),
    "lora_rank": ("loraRank", int),
    "max_context_length": ("maxContextLength", int),
    "warmup_steps": ("learningRateWarmupSteps", int),
    "gradient_accumulation_steps": ("gradientAccumulationSteps", int),
    "weight_decay": ("optimizerWeightDecay", float),
    "batch_size_tokens": ("batchSize", int),
    "early_stop": ("earlyStop", bool),
    "eval_auto_carveout": ("evalAutoCarveout", bool),
}
# Native field → the name it is reported under in the job's hyperparameters.
REPORTED_NATIVE = {wire: name for name, (wire, _t) in NATIVE_HYPERPARAMETERS.items() if wire != "learningRate"}


def _typed(value: Any, kind: type, param: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif isinstance(value, bool):
        pass
    elif kind is int and isinstance(value, int) and value > 0:
        return value
    elif kind is float and isinstance(value, int | float) and value >= 0:
        return float(value)
    wanted = {bool: "a boolean", int: "a positive integer", float: "a non-negative number"}[kind]
    raise InvalidRequest(f"'{param}' must be {wanted} for Fireworks.", param=param, code="invalid_value")


def _hyperparameters(body: JSON) -> tuple[JSON, str]:
    method = body.get("method")
    top = body.get("hyperparameters") or {}
    if method is None:
        return top, "hyperparameters"
    if method.get("type") != "supervised":
        raise InvalidRequest(f"Fireworks supervised fine-tuning jobs take method.type 'supervised', not "
                             f"'{method.get('type')}'.", param="method.type", code="unsupported_method")
    unknown = sorted(k for k in method if k not in ("type", "supervised"))
    if unknown:
        raise InvalidRequest(f"Fireworks does not take 'method.{unknown[0]}'.", param=f"method.{unknown[0]}",
                             code="unsupported_parameter")
    hp = (method.get("supervised") or {}).get("hyperparameters") or {}
    if top and hp and top != hp:
        raise InvalidRequest("Give hyperparameters either at the top level or under method.supervised, not "
                             "both.", param="hyperparameters", code="conflicting_parameters")
    return (hp or top), "method.supervised.hyperparameters"


def _wandb_config(integrations: Any, api_key: str | None) -> JSON:
    """OpenAI's W&B integration → Fireworks's `wandbConfig` {enabled, apiKey, project, entity}
    (fireworks-ai 1.2.30 types/shared_params/wandb_config.py). It has no display name (its `runId` is
    W&B's run id, not a name) and no tags, and holds one configuration."""
    if not isinstance(integrations, list) or len(integrations) != 1:
        raise InvalidRequest("Fireworks takes one integration, of type 'wandb'.", param="integrations",
                             code="unsupported_parameter")
    item = integrations[0]
    spec = item.get("wandb") if isinstance(item, dict) and item.get("type") == "wandb" else None
    if not isinstance(spec, dict):
        raise InvalidRequest("Fireworks supports only the 'wandb' integration.", param="integrations[0]",
                             code="unsupported_parameter")
    if not isinstance(spec.get("project"), str) or not spec["project"]:
        raise InvalidRequest("A wandb integration needs 'wandb.project'.", param="integrations[0].wandb.project")
    for field in ("name", "tags"):
        if spec.get(field):
            raise InvalidRequest(f"Fireworks's W&B configuration has no run '{field}'.",
                                 param=f"integrations[0].wandb.{field}", code="unsupported_parameter")
    if not api_key:
        raise InvalidRequest("Fireworks needs the W&B API key with the job: send 'x-portkey-wandb-api-key' (or set "
                             "'wandb_api_key' on the connection).", param="integrations[0].wandb",
                             code="missing_provider_option")
    config: JSON = {"enabled": True, "apiKey": api_key, "project": spec["project"]}
    if spec.get("entity"):
        config["entity"] = spec["entity"]
    return config


def _integrations_out(raw: JSON) -> list[JSON] | None:
    """`wandbConfig` back as OpenAI's integration; the echoed apiKey never leaves this function."""
    config = raw.get("wandbConfig")
    if not isinstance(config, dict) or not config.get("project") or config.get("enabled") is False:
        return None
    return [{"type": "wandb", "wandb": {"project": config["project"], "entity": config.get("entity") or None,
                                        "name": None, "tags": []}}]


def create_body(body: JSON, account_id: str, job_id: str, *, wandb_api_key: str | None = None) -> JSON:
    """The Fireworks create body for an OpenAI create request; every value is mapped or refused."""
    for name in ("seed", "metadata"):
        if body.get(name) not in (None, {}, []):
            raise InvalidRequest(f"Fireworks supervised fine-tuning jobs have no equivalent of '{name}'.",
                                 param=name, code="unsupported_parameter")
    known = {"model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed",
             "metadata", "integrations"}
    unknown = sorted(k for k, v in body.items() if k not in known and v is not None)
    if unknown:
        raise InvalidRequest(f"Fireworks does not take '{unknown[0]}'.", param=unknown[0],
                             code="unsupported_parameter")
    native: JSON = {
        "dataset": resource_name(body["training_file"], account_id, "datasets", "training_file"),
        "baseModel": resource_name(body["model"], PUBLIC_MODELS, "models", "model"),
    }
    if body.get("validation_file"):
        native["evaluationDataset"] = resource_name(body["validation_file"], account_id, "datasets",
                                                    "validation_file")
    if body.get("suffix"):
        native["displayName"] = body["suffix"]
    if body.get("integrations"):
        native["wandbConfig"] = _wandb_config(body["integrations"], wandb_api_key)
    hp, where = _hyperparameters(body)
    for key, value in hp.items():
        param = f"{where}.{key}"
        if value == "auto" or value is None:
            continue
        if key == "n_epochs":
            native["epochs"] = _typed(value, int, param)
        elif key == "batch_size":
            native["batchSizeSamples"] = _typed(value, int, param)
        elif key == "learning_rate_multiplier":
            if _typed(value, float, param) <= 0:
                raise InvalidRequest(f"'{param}' must be positive.", param=param, code="invalid_value")
            native["learningRate"] = float(value) * BASE_LEARNING_RATE
        elif key in NATIVE_HYPERPARAMETERS:
            wire, kind = NATIVE_HYPERPARAMETERS[key]
            native[wire] = _typed(value, kind, param)
        else:
            raise InvalidRequest(f"Fireworks has no hyperparameter '{key}'.", param=param,
                                 code="unsupported_parameter")
    if "learning_rate" in hp and hp.get("learning_rate_multiplier") not in (None, "auto"):
        raise InvalidRequest("Give either learning_rate_multiplier or an absolute learning_rate, not both.",
                             param=f"{where}.learning_rate", code="conflicting_parameters")
    return native


def _reported_hyperparameters(raw: JSON) -> JSON:
    lr = raw.get("learningRate")
    hp: JSON = {
        "n_epochs": raw.get("epochs") or "auto",
        "batch_size": raw.get("batchSizeSamples") or "auto",
        "learning_rate_multiplier": round(lr / BASE_LEARNING_RATE, 6) if isinstance(lr, int | float) and lr
        else "auto",
    }
    if isinstance(lr, int | float) and lr:
        hp["learning_rate"] = lr
    for wire, name in REPORTED_NATIVE.items():
        if raw.get(wire) not in (None, ""):
            hp[name] = raw[wire]
    return hp


def to_job(raw: JSON, account_id: str) -> JSON:
    name = raw.get("name") or ""
    job_id = short_id(name, account_id, "supervisedFineTuningJobs") or ""
    native = raw.get("state") or "JOB_STATE_UNSPECIFIED"
    status = JOB_STATUS.get(native, "running")
    created = unix(raw.get("createTime")) or 0
    error = None
    if status == "failed":
        st = raw.get("status") or {}
        code = "expired" if native == "JOB_STATE_EXPIRED" else str(st.get("code") or "job_failed").lower()
        if code == "ok":
            code = "job_failed"
        error = models.job_error(st.get("message") or f"The Fireworks job ended in {native}.", code=code)
    fine_tuned = None
    if status == "succeeded":
        out = raw.get("outputModel") or job_id
        fine_tuned = out if out.startswith("accounts/") else f"accounts/{account_id}/models/{out}"
    progress = raw.get("jobProgress") or {}
    trained = progress.get("inputTokens") if status == "succeeded" else None
    hp = _reported_hyperparameters(raw)
    extra: JSON = {"provider_status": native}
    if isinstance(progress.get("percent"), int):
        extra["progress_percent"] = progress["percent"]
    return models.job(
        id=job_id,
        model=short_id(raw.get("baseModel") or raw.get("warmStartFrom"), "fireworks", "models") or "",
        status=status,
        created_at=created,
        finished_at=unix(raw.get("completedTime")) if status in TERMINAL else None,
        training_file=short_id(raw.get("dataset"), account_id, "datasets") or "",
        validation_file=short_id(raw.get("evaluationDataset"), account_id, "datasets"),
        fine_tuned_model=fine_tuned,
        hyperparameters=hp,
        trained_tokens=whole_number(trained),
        error=error,
        organization_id=account_id,
        integrations=_integrations_out(raw),
        method={"type": "supervised", "supervised": {"hyperparameters": {
            k: hp[k] for k in ("batch_size", "learning_rate_multiplier", "n_epochs")}}},
        **extra,
    )
