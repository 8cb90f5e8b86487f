"""OpenAI fine-tuning job ⇄ Vertex AI ``TuningJob`` (aiplatform v1). See MAPPING.md."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from tunegate import models
from tunegate.errors import InvalidRequest, NotFound
from tunegate.providers import ids
from tunegate.providers.base import JSON

JOB_PREFIX = "ftjob"
FILE_PREFIX = "file"
CHECKPOINT_PREFIX = "ftckpt"

# JobState → OpenAI status. Vertex's order is QUEUED ("just created, processing has not begun") → PENDING
# ("preparing to run") → RUNNING; it has no separate validation phase, so both map to `queued`.
JOB_STATUS = {
    "JOB_STATE_UNSPECIFIED": "queued",
    "JOB_STATE_QUEUED": "queued",
    "JOB_STATE_PENDING": "queued",
    "JOB_STATE_RUNNING": "running",
    "JOB_STATE_UPDATING": "running",  # goes back to RUNNING afterwards
    "JOB_STATE_CANCELLING": "running",  # may still end SUCCEEDED or FAILED
    "JOB_STATE_PAUSED": "queued",  # stopped, can be resumed
    "JOB_STATE_SUCCEEDED": "succeeded",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "succeeded",  # a tuned model exists; provider_status tells the rest
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_EXPIRED": "failed",
    "JOB_STATE_CANCELLED": "cancelled",
}

# google.rpc.Code numbers → their names (lower-cased for OpenAI's `error.code`).
RPC_CODES = {0: "ok", 1: "cancelled", 2: "unknown", 3: "invalid_argument", 4: "deadline_exceeded", 5: "not_found",
             6: "already_exists", 7: "permission_denied", 8: "resource_exhausted", 9: "failed_precondition",
             10: "aborted", 11: "out_of_range", 12: "unimplemented", 13: "internal", 14: "unavailable",
             15: "data_loss", 16: "unauthenticated"}

ADAPTER_SIZES = {1: "ADAPTER_SIZE_ONE", 2: "ADAPTER_SIZE_TWO", 4: "ADAPTER_SIZE_FOUR", 8: "ADAPTER_SIZE_EIGHT",
                 16: "ADAPTER_SIZE_SIXTEEN", 32: "ADAPTER_SIZE_THIRTY_TWO"}
ADAPTER_SIZE_NUMBERS = {v: k for k, v in ADAPTER_SIZES.items()}
# Which of those each method and base model takes, first match wins (the wire enum is the same for both methods:
# SupervisedHyperParameters and PreferenceOptimizationHyperParameters.adapterSize, discovery revision 20261106).
# Sources: Vertex docs "About supervised fine-tuning for Gemini models", Limitations (Gemini 2.5 Flash and
# Flash-Lite: 1, 2, 4, 8, 16; the Gemini 1.5 page: Pro 1 and 4, "higher values … will result in failure",
# Flash 1, 4, 8, 16) and "About preference tuning for Gemini models", Limitations (1, 2, 4, 8, 16). Other models:
# every size of the enum goes through and Vertex decides (unverified; vertexai.tuning.sft.train offers 1, 4, 8,
# 16, 32).
ADAPTER_SIZES_FOR: tuple[tuple[str, str, frozenset[int]], ...] = (
    ("dpo", "", frozenset({1, 2, 4, 8, 16})),
    ("supervised", "gemini-2.5-flash", frozenset({1, 2, 4, 8, 16})),
    ("supervised", "gemini-1.5-pro", frozenset({1, 4})),
    ("supervised", "gemini-1.5-flash", frozenset({1, 4, 8, 16})),
)

CREATE_FIELDS = {"model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed",
                 "metadata", "integrations"}
HP_FIELDS = {"supervised": {"n_epochs", "learning_rate_multiplier", "batch_size", "adapter_size"},
             "dpo": {"n_epochs", "learning_rate_multiplier", "batch_size", "adapter_size", "beta"}}
SPEC_FIELD = {"supervised": "supervisedTuningSpec", "dpo": "preferenceOptimizationSpec"}

# Vertex labels (TuningJob.labels): keys and values up to 64 characters of lowercase letters, digits, '_' and '-'
# (international letters allowed); keys start with a letter, as everywhere in Google Cloud.
_LABEL_KEY = re.compile(r"^[a-z\u00c0-\uffff][a-z0-9_\-\u00c0-\uffff]{0,63}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_\-\u00c0-\uffff]{0,64}$")
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")
# projects/{project id or number}/locations/{region}/tuningJobs/{number}: the location becomes part of a
# host name (`{location}-aiplatform.googleapis.com`), so it is held to a region's grammar.
_JOB_NAME = re.compile(r"projects/[a-z0-9][a-z0-9.:-]{0,62}/locations/([a-z][a-z0-9-]{0,39})/tuningJobs/[0-9]{1,25}")


# ---- ids ---------------------------------------------------------------------------------------


def job_id(name: str) -> str:
    return ids.encode(JOB_PREFIX, name)


def job_name(public_id: str) -> str:
    """The TuningJob resource name inside a public job id; 404 when it is not one."""
    name = ids.decode(JOB_PREFIX, public_id, "fine-tuning job")
    if not _JOB_NAME.fullmatch(name):
        raise NotFound(f"No such fine-tuning job: '{public_id}'.")
    return name


def job_location(name: str) -> str:
    m = _JOB_NAME.fullmatch(name)
    assert m is not None
    return m.group(1)


def file_id(uri: str) -> str:
    return ids.encode(FILE_PREFIX, uri)


def dataset_uri(value: str, param: str) -> str:
    """A `training_file`/`validation_file` as Vertex wants it: a file id of ours or a ``gs://`` URI as is."""
    if value.startswith("gs://"):
        return value
    try:
        uri = ids.decode(FILE_PREFIX, value, "file")
    except NotFound:
        uri = ""
    if not uri.startswith("gs://"):
        raise InvalidRequest(f"'{param}' must be a file id returned by this gateway's Vertex AI files API or a "
                             f"gs:// URI; got '{value}'.", param=param, code="invalid_file")
    return uri


def public_file(uri: str | None) -> str | None:
    if not uri:
        return None
    return file_id(uri) if uri.startswith("gs://") else uri


# ---- request -----------------------------------------------------------------------------------


def _method(body: JSON) -> tuple[str, JSON]:
    """(method type, its hyperparameters) from `method` or the legacy top-level `hyperparameters`."""
    method = body.get("method")
    top_hp = body.get("hyperparameters")
    if method is None:
        return "supervised", dict(top_hp or {})
    kind = method.get("type")
    if kind not in ("supervised", "dpo"):
        raise InvalidRequest(f"Vertex AI tuning supports method types 'supervised' and 'dpo' (preference "
                             f"optimization), not '{kind}'.", param="method.type", code="unsupported_method")
    section = method.get(kind) or {}
    if not isinstance(section, dict):
        raise InvalidRequest(f"'method.{kind}' must be an object.", param=f"method.{kind}")
    hp = section.get("hyperparameters")
    if hp and top_hp:
        raise InvalidRequest("Send hyperparameters either in 'method' or at the top level, not both.",
                             param="hyperparameters")
    extra = sorted(k for k in section if k != "hyperparameters")
    if extra:
        raise InvalidRequest(f"Vertex AI has no equivalent for 'method.{kind}.{extra[0]}'.",
                             param=f"method.{kind}.{extra[0]}", code="unsupported_parameter")
    return kind, dict(hp or top_hp or {})


def _positive_int(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{param}' must be 'auto' or a positive integer.", param=param,
                             code="invalid_hyperparameter")
    return value


def _positive_number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidRequest(f"'{param}' must be 'auto' or a positive number.", param=param,
                             code="invalid_hyperparameter")
    return float(value)


def adapter_sizes(kind: str, model: str) -> frozenset[int]:
    """The adapter sizes Vertex documents for this method and base model (a publisher path is read by its id)."""
    model_id = model.rsplit("/", 1)[-1]
    return next((sizes for method, prefix, sizes in ADAPTER_SIZES_FOR
                 if method == kind and model_id.startswith(prefix)), frozenset(ADAPTER_SIZES))


def _hyper_parameters(kind: str, hp: JSON, where: str, model: str = "") -> JSON:
    unknown = sorted(k for k in hp if k not in HP_FIELDS[kind])
    if unknown:
        raise InvalidRequest(f"Vertex AI has no equivalent for the hyperparameter '{unknown[0]}'.",
                             param=f"{where}.{unknown[0]}", code="unsupported_parameter")
    out: JSON = {}
    epochs = hp.get("n_epochs", "auto")
    if epochs != "auto":
        out["epochCount"] = str(_positive_int(epochs, f"{where}.n_epochs"))  # int64: a string in JSON
    lrm = hp.get("learning_rate_multiplier", "auto")
    if lrm != "auto":
        out["learningRateMultiplier"] = _positive_number(lrm, f"{where}.learning_rate_multiplier")
    batch = hp.get("batch_size", "auto")
    if batch != "auto":
        raise InvalidRequest("Vertex AI tuning chooses the batch size itself; 'batch_size' can only be 'auto'.",
                             param=f"{where}.batch_size", code="unsupported_parameter")
    size = hp.get("adapter_size", "auto")
    if size != "auto":
        allowed = adapter_sizes(kind, model)
        if isinstance(size, bool) or size not in allowed:
            method = "preference tuning" if kind == "dpo" else f"supervised tuning of '{model}'"
            raise InvalidRequest(f"'adapter_size' must be 'auto' or one of {sorted(allowed)} for {method}.",
                                 param=f"{where}.adapter_size", code="invalid_hyperparameter")
        out["adapterSize"] = ADAPTER_SIZES[size]
    beta = hp.get("beta", "auto")
    if kind == "dpo" and beta != "auto":
        if isinstance(beta, bool) or not isinstance(beta, int | float) or beta < 0:
            raise InvalidRequest("'beta' must be 'auto' or a non-negative number.", param=f"{where}.beta",
                                 code="invalid_hyperparameter")
        out["beta"] = float(beta)
    return out


def labels(metadata: dict[str, str] | None) -> dict[str, str] | None:
    if not metadata:
        return None
    for key, value in metadata.items():
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise InvalidRequest(f"Vertex AI keeps 'metadata' as labels: keys and values of up to 64 lowercase "
                                 f"letters, digits, '_' or '-', keys starting with a letter; '{key}' does not fit.",
                                 param="metadata", code="invalid_metadata")
    return dict(metadata)


def create_body(body: JSON) -> JSON:
    """The Vertex ``TuningJob`` for an OpenAI create request. Anything without a Vertex equivalent is a 400."""
    unknown = sorted(k for k, v in body.items() if k not in CREATE_FIELDS and v is not None)
    if unknown:
        raise InvalidRequest(f"Vertex AI does not accept '{unknown[0]}' on job creation.", param=unknown[0],
                             code="unsupported_parameter")
    if body.get("seed") is not None:
        raise InvalidRequest("Vertex AI tuning has no seed; leave 'seed' out.", param="seed",
                             code="unsupported_parameter")
    if body.get("integrations"):
        raise InvalidRequest("Vertex AI tuning has no integrations (Weights & Biases).", param="integrations",
                             code="unsupported_parameter")
    kind, hp = _method(body)
    where = f"method.{kind}.hyperparameters" if body.get("method") else "hyperparameters"
    spec: JSON = {"trainingDatasetUri": dataset_uri(body["training_file"], "training_file")}
    if body.get("validation_file"):
        spec["validationDatasetUri"] = dataset_uri(body["validation_file"], "validation_file")
    hyper = _hyper_parameters(kind, hp, where, str(body["model"]))
    if hyper:
        spec["hyperParameters"] = hyper
    job: JSON = {"baseModel": body["model"], SPEC_FIELD[kind]: spec}
    if body.get("suffix"):
        job["tunedModelDisplayName"] = body["suffix"]
    if (lab := labels(body.get("metadata"))) is not None:
        job["labels"] = lab
    return job


# ---- response ----------------------------------------------------------------------------------


def unix(value: str | None) -> int | None:
    """RFC 3339 (any number of fractional digits, Z or an offset) → unix seconds."""
    if not value:
        return None
    m = _RFC3339.match(value)
    if not m:
        return None
    offset = "+00:00" if m.group(3) == "Z" else m.group(3)
    dt = datetime.fromisoformat(m.group(1) + offset)
    return int(dt.astimezone(UTC).timestamp())


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def job_error(status: JSON | None) -> JSON:
    """google.rpc.Status → OpenAI's {code, message, param}."""
    status = status or {}
    code = status.get("code")
    name = RPC_CODES.get(code, str(code)) if isinstance(code, int) else "job_failed"
    return models.job_error(str(status.get("message") or "The tuning job failed."), code=name)


def to_job(raw: JSON) -> JSON:
    native = str(raw.get("state") or "JOB_STATE_UNSPECIFIED")
    status = JOB_STATUS.get(native, "running")
    kind = "dpo" if raw.get("preferenceOptimizationSpec") else "supervised"
    spec = raw.get(SPEC_FIELD[kind]) or {}
    vhp = spec.get("hyperParameters") or {}
    epochs = _int(vhp.get("epochCount"))
    hp: JSON = {"n_epochs": epochs if epochs is not None else "auto",
                "learning_rate_multiplier": vhp.get("learningRateMultiplier", "auto"),
                "batch_size": "auto"}
    if vhp.get("adapterSize") in ADAPTER_SIZE_NUMBERS:
        hp["adapter_size"] = ADAPTER_SIZE_NUMBERS[vhp["adapterSize"]]
    if kind == "dpo" and "beta" in vhp:
        hp["beta"] = vhp["beta"]
    tuned = raw.get("tunedModel") or {}
    stats = (raw.get("tuningDataStats") or {}).get(
        "preferenceOptimizationDataStats" if kind == "dpo" else "supervisedTuningDataStats") or {}
    dataset_tokens = _int(stats.get("totalBillableTokenCount"))
    trained = dataset_tokens * epochs if dataset_tokens is not None and epochs is not None else None
    error = None
    if status == "failed":
        error = job_error(raw.get("error")) if raw.get("error") else models.job_error(
            f"The tuning job ended in {native}.", code=native.removeprefix("JOB_STATE_").lower())
    name = str(raw.get("name", ""))
    return models.job(
        id=job_id(name),
        model=str(raw.get("baseModel") or ""),
        status=status,
        created_at=unix(raw.get("createTime")) or 0,
        finished_at=unix(raw.get("endTime")) if status in ("succeeded", "failed", "cancelled") else None,
        training_file=public_file(spec.get("trainingDatasetUri")) or "",
        validation_file=public_file(spec.get("validationDatasetUri")),
        fine_tuned_model=(tuned.get("endpoint") or tuned.get("model")) if status == "succeeded" else None,
        hyperparameters=hp,
        trained_tokens=trained if status == "succeeded" else None,
        error=error,
        metadata=dict(raw["labels"]) if raw.get("labels") else None,
        method={"type": kind, kind: {"hyperparameters": hp}},
        provider_status=native,
        tuned_model=tuned or None,
        user_provided_suffix=raw.get("tunedModelDisplayName"),
    )


def checkpoints(raw: JSON) -> list[JSON]:
    """``tunedModel.checkpoints`` as OpenAI checkpoints (oldest step first)."""
    name = str(raw.get("name", ""))
    public = job_id(name)
    created = unix(raw.get("endTime")) or unix(raw.get("updateTime")) or unix(raw.get("createTime")) or 0
    out = []
    for ck in (raw.get("tunedModel") or {}).get("checkpoints") or []:
        step = _int(ck.get("step")) or 0
        epoch = _int(ck.get("epoch"))
        metrics: JSON = {"step": step}
        if epoch is not None:
            metrics["epoch"] = epoch
        out.append(models.checkpoint(
            id=ids.encode(CHECKPOINT_PREFIX, f"{name}/checkpoints/{ck.get('checkpointId', step)}"),
            created_at=created, job_id=public, step_number=step,
            model_checkpoint=str(ck.get("endpoint") or ""), metrics=metrics))
    return sorted(out, key=lambda c: c["step_number"])


def events(raw: JSON) -> list[JSON]:
    """The job's progress as OpenAI events, newest first. Vertex keeps no event log for tuning jobs (metrics
    go to a Vertex Experiment), so the events are derived from the job — created, started (with the data
    statistics once Vertex has them), its outcome — and come out the same on every read."""
    job = job_id(str(raw.get("name", "")))
    found: list[tuple[int, str, str, str, JSON | None]] = []  # (time, name, level, message, data)

    def add(when: int | None, name: str, message: str, level: str = "info", data: JSON | None = None) -> None:
        if when:
            found.append((when, name, level, message, data))

    add(unix(raw.get("createTime")), "created",
        f"Created tuning job {raw.get('tunedModelDisplayName') or raw.get('name', job)}")
    data_stats = raw.get("tuningDataStats") or {}
    stats = data_stats.get("supervisedTuningDataStats") or data_stats.get("preferenceOptimizationDataStats") or {}
    examples, tokens, steps = (_int(stats.get(k)) for k in
                               ("tuningDatasetExampleCount", "totalBillableTokenCount", "tuningStepCount"))
    about = {k: v for k, v in (("examples", examples), ("billable_tokens", tokens), ("steps", steps)) if v is not None}
    add(unix(raw.get("startTime")), "started", "Tuning started" + (
        f" on {examples} examples" if examples is not None else "") + (
        f" ({tokens} billable tokens)" if tokens is not None else ""), data=about or None)
    state = str(raw.get("state") or "")
    end = unix(raw.get("endTime")) or unix(raw.get("updateTime"))
    tuned = raw.get("tunedModel") or {}
    if state in ("JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED"):
        target = tuned.get("endpoint") or tuned.get("model")
        add(end, "succeeded", "The job has successfully completed" + (f": {target}" if target else ""))
    elif state in ("JOB_STATE_FAILED", "JOB_STATE_EXPIRED"):
        add(end, "failed", str((raw.get("error") or {}).get("message") or f"The job ended in {state}"), "error")
    elif state == "JOB_STATE_CANCELLING":
        add(unix(raw.get("updateTime")), "cancelling", "Cancelling the job")
    elif state == "JOB_STATE_CANCELLED":
        add(end, "cancelled", "The job was cancelled")
    ordered = sorted(enumerate(found), key=lambda item: (item[1][0], item[0]))  # by time, then as added
    return [models.event(id=models.derived_event_id(job, name), created_at=when, level=level, message=message,
                         data=data)
            for _, (when, name, level, message, data) in reversed(ordered)]
