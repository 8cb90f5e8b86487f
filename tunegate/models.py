"""The OpenAI objects every adapter returns, defined once.

Builders take what a provider knows and fill the rest with the values OpenAI's spec requires
(``../shared/specs/openai-openapi.yaml``: FineTuningJob, FineTuningJobEvent, FineTuningJobCheckpoint,
OpenAIFile, Upload, and the list envelopes). A test checks their output against those schemas.
"""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]

JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
FILE_STATUSES = ("uploaded", "processed", "error")


def job(
    *,
    id: str,
    model: str,
    status: str,
    created_at: int,
    training_file: str,
    validation_file: str | None = None,
    fine_tuned_model: str | None = None,
    finished_at: int | None = None,
    hyperparameters: JSON | None = None,
    trained_tokens: int | None = None,
    result_files: list[str] | None = None,
    error: JSON | None = None,
    seed: int = 0,
    organization_id: str = "",
    estimated_finish: int | None = None,
    method: JSON | None = None,
    metadata: dict[str, str] | None = None,
    integrations: list[JSON] | None = None,
    **extra: Any,
) -> JSON:
    if status not in JOB_STATUSES:
        raise ValueError(f"not an OpenAI job status: {status!r}")
    hp = hyperparameters or {}
    obj: JSON = {
        "object": "fine_tuning.job",
        "id": id,
        "model": model,
        "created_at": int(created_at),
        "finished_at": int(finished_at) if finished_at is not None else None,
        "fine_tuned_model": fine_tuned_model,
        "organization_id": organization_id,
        "result_files": list(result_files or []),
        "status": status,
        "validation_file": validation_file,
        "training_file": training_file,
        "hyperparameters": {
            "batch_size": hp.get("batch_size", "auto"),
            "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto"),
            "n_epochs": hp.get("n_epochs", "auto"),
            **{k: v for k, v in hp.items() if k not in ("batch_size", "learning_rate_multiplier", "n_epochs")},
        },
        "trained_tokens": trained_tokens,
        "error": error,
        "seed": int(seed),
        "estimated_finish": estimated_finish,
        "integrations": integrations,
        "metadata": metadata,
    }
    if method is not None:
        obj["method"] = method
    obj.update(extra)
    return obj


def job_error(message: str, code: str = "job_failed", param: str | None = None) -> JSON:
    return {"code": code, "message": message, "param": param}


def event(*, id: str, created_at: int, message: str, level: str = "info", type: str = "message",
          data: JSON | None = None) -> JSON:
    obj: JSON = {"object": "fine_tuning.job.event", "id": id, "created_at": int(created_at), "level": level,
                 "message": message, "type": type}
    if data is not None:
        obj["data"] = data
    return obj


def derived_event_id(job_id: str, name: str) -> str:
    """A stable id for an event tunegate derives from a job's state (for providers with no event log):
    the same job and the same named moment give the same id on every read, so ``after`` cursors hold."""
    import hashlib

    return f"ftevent-{hashlib.sha256(job_id.encode()).hexdigest()[:16]}-{name}"


def checkpoint(*, id: str, created_at: int, job_id: str, step_number: int, model_checkpoint: str,
               metrics: JSON) -> JSON:
    return {"object": "fine_tuning.job.checkpoint", "id": id, "created_at": int(created_at),
            "fine_tuning_job_id": job_id, "step_number": int(step_number),
            "fine_tuned_model_checkpoint": model_checkpoint, "metrics": metrics}


def file(*, id: str, bytes: int, created_at: int, filename: str, purpose: str, status: str = "processed",
         expires_at: int | None = None, status_details: str | None = None, **extra: Any) -> JSON:
    obj: JSON = {"object": "file", "id": id, "bytes": int(bytes), "created_at": int(created_at),
                 "filename": filename, "purpose": purpose, "status": status}
    if expires_at is not None:
        obj["expires_at"] = int(expires_at)
    if status_details is not None:
        obj["status_details"] = status_details
    obj.update(extra)
    return obj


def deleted(id: str, object: str = "file") -> JSON:
    return {"id": id, "object": object, "deleted": True}


def page(data: list[JSON], has_more: bool, *, with_ids: bool = False) -> JSON:
    """A list envelope. ``with_ids`` adds ``first_id``/``last_id`` (files and checkpoints have them)."""
    obj: JSON = {"object": "list", "data": data, "has_more": bool(has_more)}
    if with_ids:
        obj["first_id"] = data[0]["id"] if data else None
        obj["last_id"] = data[-1]["id"] if data else None
    return obj
