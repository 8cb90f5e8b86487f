"""What one key may ask of the ``local`` provider, and what a job may leave behind.

* A job's ``model`` is a Hugging Face id (the trainer reads the local cache only) or an absolute path
  under one of the operator's ``local_model_roots``. Every other value fails the same way, with the same
  words, whether or not something exists there: the API is no probe of the host's filesystem.
* Operator ceilings on ``lora_r``, ``max_seq_length`` and ``n_epochs`` (an "auto" epoch count is lowered
  to the ceiling, an explicit one above it is a 400).
* Per key: at most ``local_max_active_jobs_per_key`` jobs validating, queued or running, and at most
  ``managed_files_max_bytes_per_key`` bytes of managed files (429 ``quota_exceeded``).
* Per job: the newest ``local_keep_checkpoints`` checkpoint directories and the best one stay on disk.
* Events and errors name paths relative to the data directory, never the host's absolute paths.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tunegate.errors import InvalidRequest, RateLimited

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tunegate.config import Settings

ACTIVE = ("validating_files", "queued", "running")
# A Hub repository id: "name" or "owner/name" (the Hub's own character set), no "..".
_HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")


def model_shape_ok(model: object) -> bool:
    """At create: a Hugging Face id, or an absolute path (whether it is allowed is decided later, in
    words that do not depend on what is there)."""
    return isinstance(model, str) and ((_HF_ID.fullmatch(model) is not None and ".." not in model)
                                       or (model.startswith("/") and "\0" not in model and len(model) < 4096))


def model_reference(model: str, roots: Sequence[Path]) -> str | None:
    """What the trainer loads: the Hugging Face id as given, or the real path of a directory under one of
    ``roots`` (symbolic links resolved, so none leads out). None for anything else."""
    if _HF_ID.fullmatch(model) and ".." not in model:
        return model
    if not model.startswith("/"):
        return None
    real = os.path.realpath(model)
    for root in roots:
        top = os.path.realpath(root)
        if real == top or real.startswith(top.rstrip(os.sep) + os.sep):
            return real
    return None


def model_unavailable(model: str) -> dict[str, Any]:
    """The one error for a model the job cannot use, whatever the reason."""
    return {"code": "model_not_found", "param": "model",
            "message": f"Model '{model}' is not available on this gateway: name a Hugging Face model in its local "
                       "cache, or a model directory under one of the operator's model roots (local_model_roots)."}


def check_ceilings(requested: dict[str, Any], settings: Settings, hp_path: str) -> None:
    """Explicit values above the operator's ceilings are a 400 at create."""
    for name, ceiling in (("lora_r", settings.local_max_lora_r), ("max_seq_length", settings.local_max_seq_length),
                          ("n_epochs", settings.local_max_epochs)):
        value = requested.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > ceiling:
            raise InvalidRequest(f"{name}={value} is above this gateway's limit of {ceiling}.",
                                 param=f"{hp_path}.{name}", code="invalid_hyperparameters")


def lower_auto_epochs(resolved: dict[str, Any], requested: dict[str, Any], ceiling: int) -> dict[str, Any]:
    if requested.get("n_epochs") in (None, "auto") and int(resolved.get("n_epochs") or 0) > ceiling:
        return {**resolved, "n_epochs": ceiling}
    return resolved


async def check_active_jobs(engine: AsyncEngine, key_id: str | None, limit: int) -> None:
    from tunegate.store.schema import local_jobs

    owner = local_jobs.c.key_id.is_(None) if key_id is None else local_jobs.c.key_id == key_id
    async with engine.connect() as conn:
        active = (await conn.execute(sa.select(sa.func.count()).where(owner, local_jobs.c.status.in_(ACTIVE)))).scalar()
    if int(active or 0) >= limit:
        raise RateLimited(f"This key already has {active} local jobs validating, queued or running (the limit is "
                          f"{limit}); wait for one to finish or cancel one.", code="quota_exceeded",
                          headers={"Retry-After": "60"})


async def stored_bytes(engine: AsyncEngine, key_id: str | None) -> int:
    from tunegate.store.schema import managed_files

    owner = managed_files.c.key_id.is_(None) if key_id is None else managed_files.c.key_id == key_id
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.coalesce(sa.func.sum(managed_files.c.bytes), 0))
                                       .where(owner))).scalar() or 0)


def _over_quota(limit: int) -> RateLimited:
    return RateLimited(f"This key's managed files would exceed its quota of {limit} bytes; delete some first.",
                       code="quota_exceeded", param="file")


async def within_quota(chunks: AsyncIterator[bytes], used: int, limit: int | None) -> AsyncIterator[bytes]:
    """An upload's bytes, ended with a 429 as soon as they would take the key past ``limit``. Concurrent
    uploads of one key can each pass the check at its start; together they overshoot by at most what
    ``max_concurrent_uploads`` uploads hold."""
    if limit is not None and used >= limit:
        raise _over_quota(limit)
    size = used
    async for chunk in chunks:
        size += len(chunk)
        if limit is not None and size > limit:
            raise _over_quota(limit)
        yield chunk


def _metric(checkpoint: dict[str, Any]) -> float:
    metrics = checkpoint.get("metrics") or {}
    for name in ("full_valid_loss", "valid_loss", "train_loss"):
        if isinstance(metrics.get(name), int | float):
            return float(metrics[name])
    return float("inf")


def best_checkpoint(checkpoints: Iterable[dict[str, Any]]) -> str | None:
    """The path of the checkpoint with the lowest loss (validation loss first), if any."""
    ranked = sorted((c for c in checkpoints if c.get("path")), key=_metric)
    return str(ranked[0]["path"]) if ranked else None


def prune_checkpoints(job_root: Path, keep_last: int, keep: Iterable[str | None]) -> list[Path]:
    """Delete a job's checkpoint directories (every run's) but the newest ``keep_last`` and ``keep``;
    the removed ones. Blocking: run it in a thread."""
    from tunegate.localjobs.scheduler import checkpoint_step

    found = sorted((p for p in job_root.glob("run-*/checkpoints/*step-*") if p.is_dir()),
                   key=lambda p: checkpoint_step(str(p)))
    kept = {os.path.realpath(p) for p in found[-keep_last:]} | {os.path.realpath(k) for k in keep if k}
    removed = [p for p in found if os.path.realpath(p) not in kept]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


class PathScrubber:
    """Rewrites the data directory's absolute path to ``<data_dir>`` in texts meant for API clients."""

    def __init__(self, data_dir: Path) -> None:
        self._prefixes = sorted({str(data_dir), os.path.realpath(data_dir), str(data_dir.absolute())},
                                key=len, reverse=True)

    def text(self, value: str) -> str:
        for prefix in self._prefixes:
            value = value.replace(prefix, "<data_dir>")
        return value

    def relative(self, path: str) -> str:
        """A path as the client may see it: relative to the data directory, else its last part only."""
        for prefix in self._prefixes:
            if path.startswith(prefix.rstrip(os.sep) + os.sep):
                return path[len(prefix.rstrip(os.sep)) + 1:]
        return os.path.basename(path.rstrip(os.sep))

    def event(self, ev: dict[str, Any]) -> dict[str, Any]:
        """A copy of an event without absolute paths: in its message, and in its data (a path-valued
        entry becomes relative to the data directory)."""
        out = dict(ev)
        if isinstance(out.get("message"), str):
            out["message"] = self.text(out["message"])
        if isinstance(out.get("data"), dict):
            out["data"] = {k: self.relative(v) if isinstance(v, str) and v.startswith("/") else v
                           for k, v in out["data"].items()}
        return out
