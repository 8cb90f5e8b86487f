"""``tunegate migrate replay BUNDLE --to BACKEND``: re-create a bundle's jobs on another backend through the
gateway (``POST /v1/files``, then ``POST /v1/fine_tuning/jobs``), or with ``--dry-run`` only say what that
would do: tokens, estimated cost and time, and everything that will not carry over.

Idempotent: every create carries an ``Idempotency-Key`` derived from the bundle, the source job, the target
(backend and connection) and the base model, so a re-run after a crash gets the job the first run created
instead of a second one; what was uploaded and created is recorded in ``replays.json`` as soon as it
exists, so a re-run neither uploads a file twice nor calls create again for a job it has recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunegate.client.http import Client, GatewayError
from tunegate.data.converters import ConversionError, convert_lines
from tunegate.data.validator import validate_path

from .bundle import REPLAYS, BundleError, load_replays, member, write_json
from .hyperparameters import TARGETS, Mapped, map_job
from .tables import prices

ROLES = (("training_file", "training"), ("validation_file", "validation"))
MAX_LISTED_LINE_ERRORS = 3


@dataclass
class FilePlan:
    source_id: str
    role: str
    path: Path | None
    sha256: str | None
    method: str = "supervised"  # what the file holds, as the job trains it
    examples: int | None = None
    tokens: int | None = None
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source_id": self.source_id, "role": self.role, "path": str(self.path) if self.path else None,
                "examples": self.examples, "estimated_tokens": self.tokens, "problems": self.problems}


@dataclass
class JobPlan:
    job: dict[str, Any]
    mapped: Mapped
    files: list[FilePlan] = field(default_factory=list)
    skipped: str | None = None  # why this job is left out of the replay (status, --job)
    estimate: dict[str, Any] = field(default_factory=dict)

    @property
    def replayable(self) -> bool:
        return self.skipped is None and not self.mapped.blockers

    def to_dict(self) -> dict[str, Any]:
        return {"source_job": self.job.get("id"), "source_status": self.job.get("status"),
                "source_model": self.job.get("model"), "source_trained_tokens": self.job.get("trained_tokens"),
                "skipped": self.skipped, "replayable": self.replayable, **self.mapped.to_dict(),
                "files": [f.to_dict() for f in self.files], "estimate": self.estimate}


def target_key(client: Client) -> str:
    """Where a replay goes: the backend, and the stored connection when one is used (another account)."""
    return f"{client.provider}@{client.connection}" if client.connection else str(client.provider)


def idempotency_key(bundle_id: str, job_id: str, target: str, model: str | None) -> str:
    digest = hashlib.sha256("\n".join((bundle_id, job_id, target, model or "")).encode()).hexdigest()
    return f"tunegate-migrate-{digest[:40]}"


# ---- planning ----------------------------------------------------------------------------------------


def plan(root: Path, manifest: dict[str, Any], target: str, overrides: dict[str, str], *,
         only: set[str] | None = None, all_statuses: bool = False) -> list[JobPlan]:
    plans = []
    for job in manifest.get("jobs", []):
        job_id = str(job.get("id"))
        mapped = map_job(job, target, overrides)
        p = JobPlan(job, mapped)
        if only is not None and job_id not in only:
            p.skipped = "not named by --job"
        elif job.get("status") != "succeeded" and not all_statuses:
            p.skipped = f"the source job ended '{job.get('status')}' (pass --all-statuses to replay it anyway)"
        p.files = _files(root, manifest, job, mapped)
        for f in p.files:
            for problem in f.problems:  # a file that is absent or will not convert stops the job
                blocking = f.path is None or problem.startswith("cannot convert")
                (mapped.blockers if blocking else mapped.notes).append(f"{f.role} file {f.source_id}: {problem}")
        p.estimate = _estimate(p)
        plans.append(p)
    return plans


def _files(root: Path, manifest: dict[str, Any], job: dict[str, Any], mapped: Mapped) -> list[FilePlan]:
    out = []
    entries = manifest.get("files") or {}
    for field_name, role in ROLES:
        file_id = job.get(field_name)
        if not file_id:
            continue
        entry = entries.get(file_id) or {}
        path, refused = None, None
        if entry.get("path"):
            try:  # never a file outside the bundle (load_manifest refuses such a bundle whole)
                path = member(root, entry["path"], "its path")
            except BundleError as exc:
                refused = str(exc)
            path = path if path is not None and path.is_file() else None
        fp = FilePlan(str(file_id), role, path, entry.get("sha256"), mapped.method)
        if refused is not None:
            fp.problems.append(refused)
        elif path is None:
            fp.problems.append(f"not in the bundle ({entry.get('error') or 'never exported'}): run export again")
        else:
            _measure(fp, mapped)
        out.append(fp)
    return out


def _measure(fp: FilePlan, mapped: Mapped) -> None:
    """Examples and tokens (the validator's estimate), and whether the target's converter takes every line."""
    assert fp.path is not None
    report = validate_path(fp.path, method=mapped.method if mapped.method in ("supervised", "dpo") else
                           "reinforcement")
    fp.examples = report.stats.get("examples")
    fp.tokens = report.stats.get("estimated_tokens")
    if not report.ok:
        fp.problems.append(f"{report.error_count} validation error(s), e.g. {report.errors[0]}")
    target = TARGETS.get(mapped.target)
    converter = target.converter(mapped.model or "", mapped.method) if target else None
    if converter is not None:
        failures = _conversion_failures(fp.path, converter)
        if failures:
            count, first = failures
            fp.problems.append(f"cannot convert {count} line(s) to {mapped.target}'s format ({converter}), e.g. "
                               + "; ".join(first))


def _conversion_failures(path: Path, converter: str) -> tuple[int, list[str]] | None:
    count, first = 0, list[str]()
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                for _ in convert_lines([line], converter):
                    pass
            except ConversionError as exc:
                count += 1
                if len(first) < MAX_LISTED_LINE_ERRORS:
                    first.append(f"line {number}: {exc.message}")
    return (count, first) if count else None


def _estimate(p: JobPlan) -> dict[str, Any]:
    target = TARGETS.get(p.mapped.target)
    training = sum(f.tokens or 0 for f in p.files if f.role == "training")
    validation = sum(f.tokens or 0 for f in p.files if f.role == "validation")
    out: dict[str, Any] = {"training_tokens": training, "validation_tokens": validation,
                           "tokens_are": "estimates (bytes/4 heuristic, tunegate.data.tokens)"}
    if target is None or p.mapped.model is None:
        return {**out, "cost": None, "cost_unknown": "no target model"}
    epochs = p.mapped.n_epochs
    if epochs is None:
        epochs = target.default_epochs(p.mapped.model)
        out["epochs_assumed"] = f"n_epochs is auto: estimated for {epochs} epoch(s), {p.mapped.target}'s default"
    billed = training * epochs + (validation * epochs if target.bills_validation else 0)
    out.update(epochs=epochs, billed_tokens=billed)
    price = prices().price(p.mapped.target, p.mapped.model, p.mapped.method)
    if price is None:
        out.update(cost=None, cost_unknown=f"no price in prices.toml for {p.mapped.target} {p.mapped.model}")
    else:
        out.update(cost=round(billed / 1e6 * price.usd_per_1m_tokens, 4), price=price.to_dict())
    speed = prices().throughput.get(p.mapped.target)
    if speed is not None and speed.tokens_per_second > 0:
        minutes = speed.queue_minutes + training * epochs / speed.tokens_per_second / 60
        out["time_minutes"] = round(minutes, 1)
        out["time_assumption"] = (f"{speed.queue_minutes:g} min queue + {speed.tokens_per_second:g} tokens/s "
                                  f"({speed.source})")
    return out


# ---- running -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    source_job: str
    result: str  # created | already | skipped | blocked | failed
    job: dict[str, Any] | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source_job": self.source_job, "result": self.result, "job": self.job, "message": self.message}


class Replayer:
    def __init__(self, client: Client, root: Path, manifest: dict[str, Any],
                 upload_progress: Callable[[str, int], Callable[[int], None]] | None = None) -> None:
        self.client = client
        self.root = root
        self.bundle_id = str(manifest["bundle_id"])
        self.key = target_key(client)
        self.record = load_replays(root)
        self.mine: dict[str, Any] = self.record["targets"].setdefault(self.key, {"files": {}, "jobs": {}})
        self.upload_progress = upload_progress

    def _save(self) -> None:
        write_json(self.root / REPLAYS, self.record)

    def preflight(self) -> None:
        """One cheap call first: a refusal (no connection for this backend, a bad key) reads as the gateway's
        own message here, not as a broken pipe half-way through streaming an upload."""
        self.client.json("GET", "/v1/fine_tuning/jobs", params={"limit": 1})

    def run(self, plans: list[JobPlan]) -> list[Outcome]:
        if any(p.replayable and str(p.job.get("id")) not in self.mine["jobs"] for p in plans):
            try:
                self.preflight()
            except GatewayError as exc:
                return [Outcome(str(p.job.get("id")), "failed" if p.replayable else "skipped", message=str(exc)
                                if p.replayable else p.skipped or "; ".join(p.mapped.blockers)) for p in plans]
        outcomes = []
        for p in plans:
            job_id = str(p.job.get("id"))
            if p.skipped:
                outcomes.append(Outcome(job_id, "skipped", message=p.skipped))
            elif p.mapped.blockers:
                outcomes.append(Outcome(job_id, "blocked", message="; ".join(p.mapped.blockers)))
            elif job_id in self.mine["jobs"]:
                outcomes.append(Outcome(job_id, "already", self.mine["jobs"][job_id],
                                        "recorded in replays.json by an earlier run"))
            else:
                outcomes.append(self._replay(p))
        return outcomes

    def _replay(self, p: JobPlan) -> Outcome:
        job_id = str(p.job.get("id"))
        body = dict(p.mapped.body)
        try:
            for f in p.files:
                body[f"{f.role}_file"] = self._upload(f)
            key = idempotency_key(self.bundle_id, job_id, self.key, p.mapped.model)
            created = self._create(body, key)
        except GatewayError as exc:
            return Outcome(job_id, "failed", message=str(exc))
        entry = {"id": created.get("id"), "status": created.get("status"), "model": created.get("model"),
                 "idempotency_key": key, "replayed_at": datetime.now(UTC).isoformat(timespec="seconds"),
                 "body": body, "notes": p.mapped.notes}
        self.mine["jobs"][job_id] = entry
        self._save()
        return Outcome(job_id, "created", entry)

    def _upload(self, f: FilePlan) -> str:
        """The target's id for a bundle file: the one recorded, or a new upload (recorded at once)."""
        known = self.mine["files"].get(f.source_id)
        if known and known.get("sha256") == f.sha256 and known.get("id"):
            return str(known["id"])
        assert f.path is not None
        progress = self.upload_progress(f.path.name, f.path.stat().st_size) if self.upload_progress else None
        # The gateway validates uploads as supervised data unless told otherwise.
        method = {"x-portkey-validation-method": f.method} if f.method != "supervised" else None
        created = self.client.upload(f.path, "fine-tune", progress, headers=method)
        if not isinstance(created, dict) or not created.get("id"):
            raise GatewayError(f"the gateway answered the upload of {f.source_id} without a file id")
        self.mine["files"][f.source_id] = {"id": created["id"], "sha256": f.sha256, "bytes": created.get("bytes"),
                                           "uploaded_at": datetime.now(UTC).isoformat(timespec="seconds")}
        self._save()
        return str(created["id"])

    def _create(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        with self.client.open("POST", "/v1/fine_tuning/jobs", body=json.dumps(body).encode(),
                              headers=headers) as resp:
            created = json.loads(resp.read() or b"null")
        if not isinstance(created, dict) or not created.get("id"):
            raise GatewayError("the gateway answered the job create without a job id")
        return created
