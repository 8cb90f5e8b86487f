"""OpenAI fine-tuning job ⇄ Bedrock model-customization job: the request body, hyperparameters per model
family, and the job object built from GetModelCustomizationJob / ListModelCustomizationJobs answers.

Shapes: ``../shared/specs/bedrock-model-customization.json`` (botocore ``bedrock`` 2023-04-20,
CreateModelCustomizationJobRequest, GetModelCustomizationJobResponse, ModelCustomizationJobSummary).
Hyperparameter names, ranges and defaults: the Bedrock user guide's "Custom model hyperparameters" pages
(cm-hp-nova-mm, cm-hp-anth-claude-3, cm-hp-meta-llama31, cm-hp-titan-text).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tunegate import models
from tunegate.errors import InvalidRequest, UpstreamError
from tunegate.providers import ids

JSON = dict[str, Any]

# Bedrock patterns (spec shapes of the same name).
JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9\+\-\.])*")
CUSTOM_MODEL_NAME = re.compile(r"([0-9a-zA-Z][_-]?){1,63}")
# A job ARN (ModelCustomizationJobArn in botocore's bedrock 2023-04-20 model is stricter; moto names jobs
# `…/{jobName}`): whatever follows the resource type stays within characters that cannot reach a query.
JOB_ARN = re.compile(r"arn:aws(-[a-z]+)*:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:model-customization-job/"
                     r"[A-Za-z0-9.:/+_-]{1,256}")
ROLE_ARN = re.compile(r"arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+")
S3_URI = re.compile(r"s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](?:/[-!_*'().a-z0-9A-Z]+(?:/[-!_*'().a-z0-9A-Z]+)*)?/?")
TAG = re.compile(r"[a-zA-Z0-9\s._:/=+@-]*")
SUFFIX = re.compile(r"[0-9a-zA-Z]([_-]?[0-9a-zA-Z])*")

# Bedrock's FineTuningJobStatus / ModelCustomizationJobStatus → OpenAI (see MAPPING.md).
JOB_STATUS = {"InProgress": "running", "Completed": "succeeded", "Failed": "failed", "Stopping": "running",
              "Stopped": "cancelled"}
TERMINAL = {"Completed", "Failed", "Stopped"}

CREATE_FIELDS = {"model", "training_file", "validation_file", "hyperparameters", "suffix", "seed", "method",
                 "metadata", "integrations"}


@dataclass(frozen=True)
class Family:
    """One model family's data format and hyperparameters (Bedrock names, documented ranges)."""

    name: str
    data_format: str  # a tunegate.data.converters target
    epochs: tuple[int, int] | None
    batch: tuple[int, int] | None  # None: Bedrock does not let it be set for this family
    base_learning_rate: float | None  # None: the family takes a multiplier (learningRateMultiplier)
    learning_rate: tuple[float, float] | None  # the absolute (or multiplier) range Bedrock accepts


FAMILIES: list[tuple[str, Family]] = [
    # Nova Micro/Lite/Pro: Converse-style data; epochs 1–5 (default 2); learningRate 1e-6–1e-4 (default 1e-5).
    ("amazon.nova-micro", Family("nova", "bedrock-conversation-2024", (1, 5), None, 1e-5, (1e-6, 1e-4))),
    ("amazon.nova-lite", Family("nova", "bedrock-conversation-2024", (1, 5), None, 1e-5, (1e-6, 1e-4))),
    ("amazon.nova-pro", Family("nova", "bedrock-conversation-2024", (1, 5), None, 1e-5, (1e-6, 1e-4))),
    # Claude 3 Haiku: {system, messages}; epochs 1–10 (2); batchSize 4–256 (32); learningRateMultiplier 0.1–2 (1).
    ("anthropic.claude-3-haiku", Family("claude", "bedrock-claude", (1, 10), (4, 256), None, (0.1, 2.0))),
    # Llama 2/3.x: prompt/completion; epochs 1–10 (5); batchSize 1; learningRate 5e-6–0.1 (1e-4).
    ("meta.llama", Family("llama", "bedrock-prompt-completion", (1, 10), (1, 1), 1e-4, (5e-6, 0.1))),
    # Titan Text Premier: epochs 1–5 (2); batchSize 1; learningRate 1e-7–1e-5 (1e-6).
    ("amazon.titan-text-premier", Family("titan-premier", "bedrock-prompt-completion", (1, 5), (1, 1), 1e-6,
                                         (1e-7, 1e-5))),
    # Titan Text Lite/Express: epochs 1–10 (5); batchSize 1–64 (1); learningRate 0–1 (1e-5).
    ("amazon.titan-text-", Family("titan", "bedrock-prompt-completion", (1, 10), (1, 64), 1e-5, (0.0, 1.0))),
]
DEFAULT_DATA_FORMAT = "bedrock-conversation-2024"


def model_id(model: str) -> str:
    """``amazon.nova-micro-v1:0:128k`` from an id or a foundation-model ARN."""
    return model.split(":foundation-model/", 1)[1] if ":foundation-model/" in model else model


def family(model: str) -> Family | None:
    mid = model_id(model)
    for prefix, fam in FAMILIES:
        if mid.startswith(prefix):
            return fam
    return None


def plain(number: float) -> str:
    """A number as Bedrock's string hyperparameters want it: no exponent ("0.00001", not "1e-05")."""
    text = format(Decimal(repr(float(number))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _int(value: Any, param: str, bounds: tuple[int, int] | None, fam: Family | None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"'{param}' must be an integer or 'auto'.", param=param, code="invalid_hyperparameter")
    if bounds and not bounds[0] <= value <= bounds[1]:
        raise InvalidRequest(f"'{param}' must be from {bounds[0]} to {bounds[1]} for Bedrock {fam.name if fam else ''} "
                             "models.", param=param, code="invalid_hyperparameter")
    return value


def hyper_parameters(body: JSON, fam: Family | None, base_override: float | None) -> JSON:
    """OpenAI hyperparameters → Bedrock ``hyperParameters`` (a map of strings)."""
    method = body.get("method") or {}
    hp = body.get("hyperparameters") or {}
    prefix = "hyperparameters"
    if method:
        kind = method.get("type")
        if kind != "supervised":
            reason = ("Bedrock has no preference (DPO) customization type" if kind == "dpo" else
                      "Bedrock reinforcement fine-tuning needs a Lambda grader, which OpenAI graders cannot be mapped to"
                      if kind == "reinforcement" else f"unknown method type {kind!r}")
            raise InvalidRequest(f"Provider 'bedrock' supports only method.type 'supervised' ({reason}).",
                                 param="method.type", code="unsupported_method")
        if hp:
            raise InvalidRequest("Send hyperparameters either at the top level or in method.supervised, not both.",
                                 param="hyperparameters")
        hp = (method.get("supervised") or {}).get("hyperparameters") or {}
        prefix = "method.supervised.hyperparameters"
    if not isinstance(hp, dict):
        raise InvalidRequest(f"'{prefix}' must be an object.", param=prefix, code="invalid_type")
    out: JSON = {}
    for name, value in hp.items():
        param = f"{prefix}.{name}"
        if value == "auto" or value is None:
            continue
        if name == "n_epochs":
            out["epochCount"] = str(_int(value, param, fam.epochs if fam else None, fam))
        elif name == "batch_size":
            if fam is not None and fam.batch is None:
                raise InvalidRequest(f"Bedrock {fam.name} models do not let the batch size be set; use 'auto'.",
                                     param=param, code="invalid_hyperparameter")
            out["batchSize"] = str(_int(value, param, fam.batch if fam else None, fam))
        elif name == "learning_rate_multiplier":
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise InvalidRequest(f"'{param}' must be a positive number or 'auto'.", param=param,
                                     code="invalid_hyperparameter")
            if fam is not None and fam.base_learning_rate is None:  # the family takes a multiplier itself
                low, high = fam.learning_rate or (0.0, float("inf"))
                if not low <= value <= high:
                    raise InvalidRequest(f"'{param}' must be from {plain(low)} to {plain(high)} for Bedrock "
                                         f"{fam.name} models.", param=param, code="invalid_hyperparameter")
                out["learningRateMultiplier"] = plain(value)
                continue
            base = base_override or (fam.base_learning_rate if fam else None)
            if base is None:
                raise InvalidRequest(f"No documented base learning rate for '{body.get('model')}': send "
                                     "'x-portkey-bedrock-base-learning-rate' to scale the multiplier from.",
                                     param=param, code="invalid_hyperparameter")
            rate = value * base
            if fam is not None and fam.learning_rate and not fam.learning_rate[0] <= rate <= fam.learning_rate[1]:
                low, high = fam.learning_rate
                raise InvalidRequest(f"'{param}' × {plain(base)} = {plain(rate)}, outside Bedrock's learningRate range "
                                     f"{plain(low)}–{plain(high)} for {fam.name} models (multiplier "
                                     f"{plain(low / base)}–{plain(high / base)}).", param=param,
                                     code="invalid_hyperparameter")
            out["learningRate"] = plain(rate)
        else:
            raise InvalidRequest(f"Bedrock has no hyperparameter for '{name}'.", param=param,
                                 code="unsupported_parameter")
    return out


def job_tags(metadata: dict[str, str] | None) -> list[JSON]:
    tags = []
    for key, value in (metadata or {}).items():
        if not (1 <= len(key) <= 128 and len(value) <= 256 and TAG.fullmatch(key) and TAG.fullmatch(value)):
            raise InvalidRequest("Bedrock job tags (from 'metadata') take keys of 1–128 and values of up to 256 "
                                 "characters from letters, digits, spaces and _.:/=+-@.", param="metadata",
                                 code="invalid_metadata")
        tags.append({"key": key, "value": value})
    return tags


def timestamp(value: Any) -> int | None:
    """Bedrock's ISO 8601 timestamps (or epoch seconds) → unix seconds; naive times are UTC. A value that
    is neither (a job made elsewhere may carry anything) is None, never a 500."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            return int(value)
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp())
    except (ValueError, OverflowError):
        return None


def _echoed_int(value: Any) -> int | None:
    """An integer hyperparameter as Bedrock echoes it (a string: "2", maybe "2.0"); None when it is not one."""
    number = _echoed_number(value)
    return int(number) if number is not None and number.is_integer() else None


def _echoed_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    if isinstance(value, str) and not value.isascii():
        return None  # float() reads '٢' (ARABIC-INDIC DIGIT TWO) as 2: not a number Bedrock wrote
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def echoed_hyperparameters(raw: Any, base: float | None) -> JSON:
    """Bedrock's ``hyperParameters`` (a map of strings, any keys the model family takes) back in OpenAI's
    names. A value that is missing, empty or not a number is left out (the job is still answered): Bedrock
    echoes what it stores, and a job made outside tunegate may carry anything there."""
    hp_in = raw if isinstance(raw, dict) else {}
    hp: JSON = {}
    if (epochs := _echoed_int(hp_in.get("epochCount"))) is not None:
        hp["n_epochs"] = epochs
    if (batch := _echoed_int(hp_in.get("batchSize"))) is not None:
        hp["batch_size"] = batch
    multiplier = _echoed_number(hp_in.get("learningRateMultiplier"))
    rate = _echoed_number(hp_in.get("learningRate"))
    if multiplier is not None:
        hp["learning_rate_multiplier"] = multiplier
    elif rate is not None and base:
        hp["learning_rate_multiplier"] = float(f"{rate / base:.6g}")
    return hp


def status_of(raw: JSON) -> str:
    native = raw.get("status") or "InProgress"
    status = JOB_STATUS.get(native, "running")
    if native == "InProgress":  # statusDetails say which phase: validation, data processing, training
        details = raw.get("statusDetails") or {}
        phase = {k: (details.get(k) or {}).get("status") for k in
                 ("validationDetails", "dataProcessingDetails", "trainingDetails")}
        if phase["validationDetails"] == "InProgress" or phase["dataProcessingDetails"] == "InProgress":
            status = "validating_files"
        elif phase["trainingDetails"] == "NotStarted":
            status = "queued"
    return status


def file_id(uri: str | None) -> str | None:
    return ids.encode("file", uri) if uri else None


def to_job(raw: JSON, *, metadata: dict[str, str] | None = None, base_override: float | None = None) -> JSON:
    """A GetModelCustomizationJobResponse (or a ModelCustomizationJobSummary) → an OpenAI job."""
    native = raw.get("status") or "InProgress"
    status = status_of(raw)
    base_model = model_id(str(raw.get("baseModelArn") or raw.get("baseModelIdentifier") or ""))
    fam = family(base_model)
    hp = echoed_hyperparameters(raw.get("hyperParameters"), base_override or (fam.base_learning_rate if fam else None))
    validators = (raw.get("validationDataConfig") or {}).get("validators") or []
    error = None
    if native == "Failed":
        error = models.job_error(str(raw.get("failureMessage") or "The Bedrock customization job failed."),
                                 code="job_failed")
    extra: JSON = {"provider_status": native}
    if raw.get("customizationType"):
        extra["customization_type"] = raw["customizationType"]
    if (raw.get("trainingMetrics") or {}).get("trainingLoss") is not None and native == "Completed":
        extra["training_loss"] = raw["trainingMetrics"]["trainingLoss"]
    arn = raw.get("jobArn")
    if not isinstance(arn, str) or not arn:
        raise UpstreamError("Bedrock answered with a job that has no jobArn.", status=502,
                            code="upstream_invalid_response")
    return models.job(
        id=ids.encode("ftjob", arn),
        model=base_model,
        status=status,
        created_at=timestamp(raw.get("creationTime")) or 0,
        finished_at=timestamp(raw.get("endTime")) if native in TERMINAL else None,
        training_file=file_id((raw.get("trainingDataConfig") or {}).get("s3Uri")) or "",
        validation_file=file_id(validators[0].get("s3Uri")) if validators else None,
        fine_tuned_model=(raw.get("outputModelArn") or raw.get("customModelArn")) if native == "Completed" else None,
        hyperparameters=hp,
        error=error,
        metadata=metadata,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "batch_size": hp.get("batch_size", "auto"), "learning_rate_multiplier": hp.get(
                "learning_rate_multiplier", "auto"), "n_epochs": hp.get("n_epochs", "auto")}}},
        **extra,
    )



def from_summary(raw: JSON, *, base_override: float | None = None) -> JSON:
    """A ModelCustomizationJobSummary → an OpenAI job, with no GetModelCustomizationJob call. A summary names
    no training or validation data, hyperparameters or failure message (botocore's model): those are null
    here, and a retrieve gives them (MAPPING.md, "Paging")."""
    job = to_job(raw, base_override=base_override)
    job["training_file"] = None
    job["hyperparameters"] = None
    job["method"] = {"type": "supervised"}
    if job["error"] is not None:
        job["error"] = models.job_error("The Bedrock customization job failed (the job list does not say why: "
                                        "retrieve the job for Bedrock's failureMessage).", code="job_failed")
    return job


_PHASES = (("validationDetails", "Validating the training data"),
           ("dataProcessingDetails", "Processing the training data"),
           ("trainingDetails", "Training"))


def events(raw: JSON, job_id: str) -> list[JSON]:
    """The job's progress as OpenAI events, newest first. Bedrock keeps no event log, so the events are
    derived from what the job reports — its creation, each sub-task's status and times (``statusDetails``),
    its outcome and final training loss — and come out the same on every read."""
    found: list[tuple[int, str, str, str, str, JSON | None]] = []  # (time, name, level, message, type, data)

    def add(when: int | None, name: str, message: str, level: str = "info", kind: str = "message",
            data: JSON | None = None) -> None:
        if when:
            found.append((when, name, level, message, kind, data))

    model = f" for custom model {raw['outputModelName']}" if raw.get("outputModelName") else ""
    add(timestamp(raw.get("creationTime")), "created", f"Created fine-tuning job {raw.get('jobName') or job_id}{model}")
    details = raw.get("statusDetails") or {}
    for key, label in _PHASES:
        phase = details.get(key) or {}
        state = phase.get("status")
        if state and state != "NotStarted":
            add(timestamp(phase.get("creationTime")), f"{key}-started", f"{label}: started")
        if state in ("Completed", "Failed", "Stopped"):
            add(timestamp(phase.get("lastModifiedTime")), f"{key}-{state.lower()}", f"{label}: {state.lower()}",
                "error" if state == "Failed" else "info")
    native = raw.get("status")
    end = timestamp(raw.get("endTime")) or timestamp(raw.get("lastModifiedTime"))
    loss = (raw.get("trainingMetrics") or {}).get("trainingLoss")
    if native == "Completed":
        if loss is not None:
            add(end, "metrics", f"Final training loss {loss}", kind="metrics", data={"train_loss": loss})
        add(end, "succeeded", "The job has successfully completed"
            + (f": {raw['outputModelArn']}" if raw.get("outputModelArn") else ""))
    elif native == "Failed":
        add(end, "failed", str(raw.get("failureMessage") or "The job failed"), "error")
    elif native == "Stopping":
        add(timestamp(raw.get("lastModifiedTime")), "stopping", "Cancelling the job")
    elif native == "Stopped":
        add(end, "cancelled", "The job was cancelled")
    ordered = sorted(enumerate(found), key=lambda item: (item[1][0], item[0]))  # by time, then as added
    return [models.event(id=models.derived_event_id(job_id, name), created_at=when, level=level, message=message,
                         type=kind, data=data)
            for _, (when, name, level, message, kind, data) in reversed(ordered)]
