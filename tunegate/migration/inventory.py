"""``tunegate migrate inventory``: what an account has — every job, the tuned models, the base models with
their announced shutdown dates, and every file the jobs reference (training, validation, results)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from tunegate.client.http import Client

from .api import every_job, file_info
from .bases import base_of
from .hyperparameters import source_method, source_suffix
from .tables import retirements

ROLES = ("training_file", "validation_file")


def job_files(job: dict[str, Any]) -> list[tuple[str, str]]:
    """(file id, role) for every file a job names: training, validation and result files."""
    refs = [(str(job[role]), role.removesuffix("_file")) for role in ROLES if job.get(role)]
    refs += [(str(f), "result") for f in job.get("result_files") or [] if f]
    return refs


def today() -> date:
    return datetime.now(UTC).date()


def _retirement(model: str, on: date, within_days: int) -> dict[str, Any] | None:
    row = retirements().lookup(model)
    return row.to_dict(on, within_days) if row else None


def build(client: Client, provider: str, within_days: int = 90, on: date | None = None,
          progress: Callable[[str, int, int | None], None] | None = None) -> dict[str, Any]:
    """The inventory as one JSON-able dict. ``progress(stage, advance, total)`` drives a progress bar."""
    on = on or today()
    jobs = []
    for job in every_job(client, on_page=lambda n: progress("jobs", n, None) if progress else None):
        jobs.append(job)
    refs: dict[str, list[dict[str, str]]] = {}
    for job in jobs:
        for file_id, role in job_files(job):
            refs.setdefault(file_id, []).append({"job": str(job["id"]), "role": role})
    files = []
    for file_id, used in refs.items():
        info = file_info(client, file_id)
        files.append({"id": file_id, "filename": info.get("filename"), "purpose": info.get("purpose"),
                      "bytes": info.get("bytes"), "status": info.get("status"), "used_by": used,
                      **({"error": info["error"]} if info.get("error") else {})})
        if progress:
            progress("files", 1, len(refs))
    return {
        "source": provider, "listed_at": datetime.now(UTC).isoformat(timespec="seconds"), "today": on.isoformat(),
        "flag_within_days": within_days, "jobs": [_job_row(j) for j in jobs],
        "tuned_models": _tuned_models(jobs, on, within_days), "base_models": _base_models(jobs, on, within_days),
        "files": files, "platform": _platform(on, within_days), "totals": _totals(jobs, files),
    }


def _job_row(job: dict[str, Any]) -> dict[str, Any]:
    kind, hp = source_method(job)
    suffix, _ = source_suffix(job)
    base, continued = base_of(str(job.get("model") or ""))
    return {"id": job.get("id"), "status": job.get("status"), "model": job.get("model"), "base_model": base,
            "continued_from_tuned_model": continued, "fine_tuned_model": job.get("fine_tuned_model"),
            "method": kind, "hyperparameters": hp, "suffix": suffix, "seed": job.get("seed"),
            "trained_tokens": job.get("trained_tokens"), "created_at": job.get("created_at"),
            "finished_at": job.get("finished_at"), "training_file": job.get("training_file"),
            "validation_file": job.get("validation_file"), "result_files": job.get("result_files") or [],
            "metadata": job.get("metadata")}


def _tuned_models(jobs: list[dict[str, Any]], on: date, within: int) -> list[dict[str, Any]]:
    out = []
    for job in jobs:
        name = job.get("fine_tuned_model")
        if not name:
            continue
        base, _ = base_of(str(job.get("model") or ""))
        # A tuned model answers only while its base model does.
        out.append({"model": name, "job": job.get("id"), "base_model": base,
                    "retirement": _retirement(base, on, within)})
    return out


def _base_models(jobs: list[dict[str, Any]], on: date, within: int) -> list[dict[str, Any]]:
    counts: dict[str, int] = {}
    for job in jobs:
        base, _ = base_of(str(job.get("model") or ""))
        counts[base] = counts.get(base, 0) + 1
    return [{"model": m, "jobs": n, "retirement": _retirement(m, on, within)} for m, n in sorted(counts.items())]


def _platform(on: date, within: int) -> dict[str, Any] | None:
    p = retirements().platform
    if p is None:
        return None
    left = (p.no_new_jobs_after - on).days
    return {"no_new_jobs_after": p.no_new_jobs_after.isoformat(), "days_left": left, "flagged": left <= within,
            "source": p.source, "checked": p.checked, "verified": p.verified}


def _totals(jobs: list[dict[str, Any]], files: list[dict[str, Any]]) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for job in jobs:
        by_status[str(job.get("status"))] = by_status.get(str(job.get("status")), 0) + 1
    return {"jobs": len(jobs), "jobs_by_status": by_status, "files": len(files),
            "bytes": sum(f["bytes"] for f in files if isinstance(f.get("bytes"), int)),
            "missing_files": sum(1 for f in files if f.get("status") == "missing")}
