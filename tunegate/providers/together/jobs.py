"""Fine-tuning jobs: OpenAI's create body → Together's ``POST /fine-tunes`` body, and Together's
``FinetuneResponse`` / ``FinetuneResponseTruncated``, ``FineTuneEvent`` and ``FineTuneCheckpoint``
→ OpenAI's job, event and checkpoint objects. See MAPPING.md for the tables.

Spec: ``../shared/specs/together-openapi.yaml`` (togethercomputer/openapi@090263a), corrected where
Together's own Python SDKs disagree with it: togethercomputer/together-python@eba5e5f (1.5.x;
``src/together/types/finetune.py``, ``src/together/resources/finetune.py``) and ``together==3.1.1``
(PyPI; ``together/lib/types/fine_tuning.py``). MAPPING.md lists each correction.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from typing import Any

from tunegate import models
from tunegate.errors import InvalidRequest, UpstreamError
from tunegate.providers.base import JSON

# Together's documented default learning rate (POST /fine-tunes: `learning_rate`, default 0.00001).
# OpenAI's `learning_rate_multiplier` is sent as multiplier × this base rate, and read back as
# learning_rate / this base rate.
BASE_LEARNING_RATE = 1e-5

# FinetuneJobStatus (spec enum) → OpenAI's job status. `user_error` is not in the spec's enum but
# Together's clients know it (a job rejected for the user's data); unknown words map to `running`
# while the job is not known to be over.
JOB_STATUS = {
    "pending": "validating_files",
    "queued": "queued",
    "running": "running",
    "compressing": "running",
    "uploading": "running",
    "cancel_requested": "running",
    "cancelled": "cancelled",
    "error": "failed",
    "user_error": "failed",
    "completed": "succeeded",
}
TERMINAL = {"succeeded", "failed", "cancelled"}

# FinetuneEventLevels → OpenAI's event levels (info | warn | error), matched case-insensitively: the
# SDKs' enum values are "Info", "Warning", "Error" (plus the legacy "info", "warning", "error"); the
# spec's lower-case words and `legacy_*` names are enum member names, not values.
EVENT_LEVEL = {"info": "info", "warning": "warn", "warn": "warn", "error": "error"}
# FinetuneEventType values that carry a failed job's reason (the SDKs spell them in capitals).
ERROR_EVENTS = frozenset({"job_error", "job_user_error"})
# Together's default n_evals is 0, which skips the validation file entirely; OpenAI evaluates a
# validation file during training. One evaluation per epoch unless `together.n_evals` says otherwise.
EVALS_PER_EPOCH = 1

# The create body's properties in the spec (POST /fine-tunes requestBody): what `together: {...}`
# may set directly.
NATIVE_CREATE_FIELDS = frozenset({
    "training_file", "validation_file", "packing", "max_seq_length", "model", "n_epochs", "n_checkpoints",
    "n_evals", "batch_size", "learning_rate", "lr_scheduler", "warmup_ratio", "max_grad_norm", "weight_decay",
    "random_seed", "suffix", "wandb_api_key", "wandb_base_url", "wandb_project_name", "wandb_name",
    "wandb_entity", "train_on_inputs", "training_method", "training_type", "multimodal_params",
    "from_checkpoint", "from_hf_model", "hf_model_revision", "hf_api_token", "hf_output_repo_name",
    # FinetuneRequest fields of the SDKs that the spec lacks (together==3.1.1 lib/types/fine_tuning.py).
    "wandb_key", "gradient_accumulation_steps", "early_stopping_enabled", "early_stopping_patience",
    "early_stopping_min_delta", "early_stopping_warmup_evals",
})
# The spec names the W&B key `wandb_api_key`; both Python SDKs send `wandb_key` (FinetuneRequest), so
# a native `wandb_api_key` is sent under that name.
NATIVE_RENAMES = {"wandb_api_key": "wandb_key"}
# OpenAI create fields this adapter understands; anything else is a 400.
OPENAI_CREATE_FIELDS = frozenset({"model", "training_file", "validation_file", "hyperparameters", "method", "suffix",
                                  "seed", "metadata", "integrations", "together"})
SUPERVISED_HP = frozenset({"n_epochs", "batch_size", "learning_rate_multiplier"})
DPO_HP = frozenset({"n_epochs", "batch_size", "learning_rate_multiplier", "beta"})


# ---------------------------------------------------------------------------------------------- time

_FRACTION = re.compile(r"(\.\d{6})\d+")


def timestamp(value: Any) -> float | None:
    """Together sends ISO-8601 date-times (sometimes with nanoseconds); unix seconds, fractions kept."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = _FRACTION.sub(r"\1", value.strip())
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    return None


def unix(value: Any) -> int | None:
    """OpenAI's created_at/finished_at: whole unix seconds."""
    ts = timestamp(value)
    return int(ts) if ts is not None else None


# -------------------------------------------------------------------------------------------- create

def _auto(value: Any) -> bool:
    return value is None or value == "auto"


def _positive_int(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{param}' must be a positive integer or 'auto'.", param=param)
    return value


def _hyperparameters(body: JSON) -> tuple[str, JSON]:
    """(method type, hyperparameters) from either `method` or the deprecated top-level
    `hyperparameters`; both at once must agree."""
    method = body.get("method")
    top = body.get("hyperparameters") or {}
    if method is None:
        return "supervised", dict(top)
    if not isinstance(method, dict):
        raise InvalidRequest("'method' must be an object.", param="method")
    kind = method.get("type", "supervised")
    if kind not in ("supervised", "dpo"):
        raise InvalidRequest(f"Together supports the 'supervised' and 'dpo' methods, not {kind!r}.",
                             param="method.type", code="unsupported_parameter")
    inner = method.get(kind) or {}
    if not isinstance(inner, dict):
        raise InvalidRequest(f"'method.{kind}' must be an object.", param=f"method.{kind}")
    unknown = sorted(k for k in method if k not in ("type", kind))
    if unknown:
        raise InvalidRequest(f"'method.{unknown[0]}' does not belong to method type {kind!r}.",
                             param=f"method.{unknown[0]}")
    hp = dict(inner.get("hyperparameters") or {})
    extra = sorted(k for k in inner if k != "hyperparameters")
    if extra:
        raise InvalidRequest(f"'method.{kind}.{extra[0]}' cannot be mapped to Together.",
                             param=f"method.{kind}.{extra[0]}", code="unsupported_parameter")
    if top:
        if hp and hp != top:
            raise InvalidRequest("'hyperparameters' and 'method' disagree; send only 'method'.",
                                 param="hyperparameters")
        hp = {**top, **hp}
    return kind, hp


def create_body(body: JSON, *, wandb_api_key: str | None = None) -> JSON:
    """Together's create body from OpenAI's. Values with no Together equivalent are a 400."""
    unknown = sorted(k for k, v in body.items() if k not in OPENAI_CREATE_FIELDS and v is not None)
    if unknown:
        raise InvalidRequest(f"Together has no equivalent for '{unknown[0]}' on job creation.", param=unknown[0],
                             code="unsupported_parameter")
    if body.get("metadata"):
        raise InvalidRequest("Together fine-tuning jobs have no metadata.", param="metadata",
                             code="unsupported_parameter")
    out: JSON = {"model": body["model"], "training_file": body["training_file"]}
    if body.get("validation_file"):
        out["validation_file"] = body["validation_file"]
    if body.get("suffix") is not None:
        out["suffix"] = body["suffix"]
    if body.get("seed") is not None:
        out["random_seed"] = body["seed"]

    kind, hp = _hyperparameters(body)
    allowed = DPO_HP if kind == "dpo" else SUPERVISED_HP
    where = f"method.{kind}.hyperparameters" if body.get("method") is not None else "hyperparameters"
    bad = sorted(k for k in hp if k not in allowed)
    if bad:
        raise InvalidRequest(f"'{where}.{bad[0]}' cannot be mapped to Together.", param=f"{where}.{bad[0]}",
                             code="unsupported_parameter")
    if not _auto(hp.get("n_epochs")):
        out["n_epochs"] = _positive_int(hp["n_epochs"], f"{where}.n_epochs")
    if not _auto(hp.get("batch_size")):
        out["batch_size"] = _positive_int(hp["batch_size"], f"{where}.batch_size")
    lrm = hp.get("learning_rate_multiplier")
    if not _auto(lrm):
        if isinstance(lrm, bool) or not isinstance(lrm, int | float) or not math.isfinite(lrm) or lrm <= 0:
            raise InvalidRequest("'learning_rate_multiplier' must be a positive number or 'auto'.",
                                 param=f"{where}.learning_rate_multiplier")
        out["learning_rate"] = float(lrm) * BASE_LEARNING_RATE
    if kind == "dpo":
        method: JSON = {"method": "dpo"}
        beta = hp.get("beta")
        if not _auto(beta):
            if isinstance(beta, bool) or not isinstance(beta, int | float) or beta <= 0:
                raise InvalidRequest("'beta' must be a positive number or 'auto'.", param=f"{where}.beta")
            method["dpo_beta"] = float(beta)
        out["training_method"] = method
    else:
        out["training_method"] = {"method": "sft", "train_on_inputs": "auto"}

    for i, integration in enumerate(body.get("integrations") or []):
        out.update(_wandb(integration, i, wandb_api_key))

    native = body.get("together")
    if native is not None:
        _merge_native(out, native)
    if out.get("validation_file") and "n_evals" not in out:
        out["n_evals"] = EVALS_PER_EPOCH * (_count(out.get("n_epochs")) or 1)  # Together's default: 1 epoch
    return out


def _merge_native(out: JSON, native: Any) -> None:
    """`together: {...}`: Together's own create fields, on top of the mapped ones."""
    if not isinstance(native, dict):
        raise InvalidRequest("'together' must be an object of Together create fields.", param="together")
    for name, value in native.items():
        if name not in NATIVE_CREATE_FIELDS:
            raise InvalidRequest(f"'together.{name}' is not a field of Together's POST /fine-tunes.",
                                 param=f"together.{name}")
        wire = NATIVE_RENAMES.get(str(name), str(name))
        if wire in out and wire != "training_method" and out[wire] != value:
            raise InvalidRequest(f"'together.{name}' conflicts with the OpenAI field that maps to it.",
                                 param=f"together.{name}")
        if wire == "training_method":
            if not isinstance(value, dict) or value.get("method") != out["training_method"]["method"]:
                raise InvalidRequest("'together.training_method.method' must match 'method.type' "
                                     "(supervised → sft, dpo → dpo).", param="together.training_method")
            value = {**out["training_method"], **value}
        out[wire] = value


def _wandb(integration: Any, i: int, api_key: str | None) -> JSON:
    param = f"integrations[{i}]"
    if not isinstance(integration, dict) or integration.get("type") != "wandb":
        raise InvalidRequest("Together supports only the 'wandb' integration.", param=param,
                             code="unsupported_parameter")
    spec = integration.get("wandb") or {}
    if not isinstance(spec, dict) or not spec.get("project"):
        raise InvalidRequest("A wandb integration needs 'wandb.project'.", param=f"{param}.wandb.project")
    if spec.get("tags"):
        raise InvalidRequest("Together's W&B integration has no tags.", param=f"{param}.wandb.tags",
                             code="unsupported_parameter")
    if not api_key:
        raise InvalidRequest("Together needs the W&B API key with the job: send 'x-portkey-wandb-api-key' "
                             "(or set 'wandb_api_key' on the connection).", param=f"{param}.wandb",
                             code="missing_provider_option")
    out = {"wandb_key": api_key, "wandb_project_name": spec["project"]}  # the SDKs' name, not the spec's
    if spec.get("name"):
        out["wandb_name"] = spec["name"]
    if spec.get("entity"):
        out["wandb_entity"] = spec["entity"]
    return out


# ------------------------------------------------------------------------------------------ responses

def status_of(native: Any) -> str:
    if not isinstance(native, str) or not native:
        return "queued"
    return JOB_STATUS.get(native, "running")


def _count(value: Any) -> int | None:
    """A positive integer, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _lower(value: Any) -> str:
    return value.lower() if isinstance(value, str) else ""


def _error(raw: JSON, native: str) -> JSON:
    """Together's job has no error field: the reason is the newest JOB_ERROR / JOB_USER_ERROR event,
    else the newest Error-level one, from the `events` FinetuneResponse carries (both SDKs spell
    types in capitals and levels capitalised, so they are compared case-insensitively)."""
    events = [ev for ev in raw.get("events") or [] if isinstance(ev, dict) and ev.get("message")]
    typed = [ev for ev in events if _lower(ev.get("type")) in ERROR_EVENTS]
    leveled = [ev for ev in events if _lower(ev.get("level")) == "error"]
    reason = (typed or leveled or [{}])[-1].get("message")
    code = "invalid_training_file" if native == "user_error" else "job_failed"
    return models.job_error(str(reason or f"Together reported the job as '{native}'."), code=code)


def _trained_tokens(raw: JSON) -> int | None:
    """OpenAI's trained_tokens counts every epoch; Together's `token_count` is the dataset's count
    (together-python FinetuneResponse: "dataset token count"), so it is multiplied by the epochs
    trained (`epochs_completed`, else `n_epochs`)."""
    tokens = raw.get("token_count")
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        return None
    return tokens * (_count(raw.get("epochs_completed")) or _count(raw.get("n_epochs")) or 1)


def _seconds(value: Any) -> float | None:
    """`progress.seconds_remaining` is a float in both SDKs (FinetuneProgress); the spec says integer."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def learning_rate_multiplier(lr: Any) -> Any:
    if isinstance(lr, int | float) and not isinstance(lr, bool) and lr > 0:
        return round(float(lr) / BASE_LEARNING_RATE, 6)
    return "auto"


def to_job(raw: JSON, *, now: float | None = None) -> JSON:
    native = str(raw.get("status") or "")
    status = status_of(native)
    created = unix(raw.get("created_at")) or 0
    updated = unix(raw.get("updated_at"))
    hp: JSON = {
        "n_epochs": raw.get("n_epochs") or "auto",
        "batch_size": raw["batch_size"] if isinstance(raw.get("batch_size"), int) else "auto",
        "learning_rate_multiplier": learning_rate_multiplier(raw.get("learning_rate")),
    }
    method_raw = raw.get("training_method") or {}
    if method_raw.get("method") == "dpo":
        dpo_hp = {**hp, "beta": method_raw.get("dpo_beta", "auto")}
        method: JSON = {"type": "dpo", "dpo": {"hyperparameters": dpo_hp}}
    else:
        method = {"type": "supervised", "supervised": {"hyperparameters": dict(hp)}}
    estimated = None
    progress: JSON = raw["progress"] if isinstance(raw.get("progress"), dict) else {}
    remaining = _seconds(progress.get("seconds_remaining"))
    if status in ("queued", "running", "validating_files") and remaining is not None and progress.get(
            "estimate_available"):
        estimated = math.ceil((now if now is not None else time.time()) + remaining)
    integrations = None
    if raw.get("wandb_project_name"):
        wandb: JSON = {"project": raw["wandb_project_name"]}
        if raw.get("wandb_name"):
            wandb["name"] = raw["wandb_name"]
        integrations = [{"type": "wandb", "wandb": wandb}]
    extra: JSON = {}
    if native != status:
        extra["provider_status"] = native
    if raw.get("learning_rate") is not None:
        extra["learning_rate"] = raw["learning_rate"]  # Together's absolute rate, for reference
    if raw.get("suffix"):
        extra["suffix"] = raw["suffix"]
    seed = raw.get("random_seed")
    if not isinstance(raw.get("id"), str) or not raw["id"]:
        raise UpstreamError("Together answered with a job that has no id.", status=502, code="upstream_invalid_response")
    return models.job(
        id=raw["id"],
        model=str(raw.get("model") or ""),
        status=status,
        created_at=created,
        training_file=str(raw.get("training_file") or ""),
        validation_file=raw.get("validation_file") or None,
        fine_tuned_model=raw.get("model_output_name") if status == "succeeded" else None,
        finished_at=(updated or created) if status in TERMINAL else None,
        hyperparameters=hp,
        trained_tokens=_trained_tokens(raw) if status == "succeeded" else None,
        error=_error(raw, native) if status == "failed" else None,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else 0,
        estimated_finish=estimated,
        method=method,
        integrations=integrations,
        **extra,
    )


# -------------------------------------------------------------------------------- events, checkpoints

def event_id(job_id: str, n: int) -> str:
    """Events have no id at Together: the n-th event (1-based, oldest first) of a job. Events are
    only appended, so the id names the same event on every listing."""
    return f"ftevent-{job_id}-{n}"


def to_events(job_id: str, raw_events: list[Any]) -> list[JSON]:
    """Newest first, as OpenAI lists them."""
    out = []
    for n, ev in enumerate((e for e in raw_events if isinstance(e, dict)), start=1):
        data = {k: ev[k] for k in ("type", "step", "total_steps", "token_count", "param_count", "checkpoint_path",
                                   "model_path", "wandb_url", "training_offset", "hash") if ev.get(k) not in (None, "")}
        out.append(models.event(id=event_id(job_id, n), created_at=unix(ev.get("created_at")) or 0,
                                message=str(ev.get("message") or ev.get("type") or ""),
                                level=EVENT_LEVEL.get(_lower(ev.get("level")), "info"), type="message", data=data))
    out.reverse()
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "checkpoint"


def checkpoint_name(job_id: str, step: int, kind: str) -> str:
    """The name Together's `from_checkpoint` takes, as the SDKs build it (together-python
    resources/finetune.py `_parse_raw_checkpoints`): `<job>:<step>` for an intermediate checkpoint,
    the job id alone for a final one (no step means the final checkpoint)."""
    return f"{job_id}:{step}" if "intermediate" in kind.lower() else job_id


def to_checkpoints(job_id: str, raw_checkpoints: list[Any]) -> list[JSON]:
    """Newest (highest step) first. Together lists several checkpoints at the final step (merged,
    adapter), so the id carries the type as well as the step."""
    items = [c for c in raw_checkpoints if isinstance(c, dict)]
    out = []
    for c in items:
        raw_step = c.get("step")
        step = raw_step if isinstance(raw_step, int) and not isinstance(raw_step, bool) else 0
        kind = str(c.get("checkpoint_type") or "checkpoint")
        ckpt = models.checkpoint(id=f"ftckpt-{job_id}-{step}-{_slug(kind)}", created_at=unix(c.get("created_at")) or 0,
                                 job_id=job_id, step_number=step,
                                 model_checkpoint=checkpoint_name(job_id, step, kind), metrics={"step": float(step)})
        ckpt["checkpoint_type"] = kind
        if c.get("path"):
            ckpt["path"] = c["path"]
        out.append(ckpt)
    out.sort(key=lambda c: (c["step_number"], c["created_at"], c["id"]), reverse=True)
    return out
