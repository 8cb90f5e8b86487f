"""The worker side of the ``local`` provider: one scheduler task per gateway instance.

It runs inside the gateway's event loop but never trains there: each job runs in a
``tunegate.trainer.TrainingProcess`` child (its own interpreter). Every blocking call (starting,
polling, cancelling a child; validating a file; packing the adapter) goes through
``asyncio.to_thread``. Per tick the scheduler

1. validates jobs in ``validating_files`` (→ ``queued``, or ``failed`` with the reason),
2. polls its children: stores their events, progress and checkpoints; acts on cancel/pause requests;
   records the outcome (result files registered as managed files),
3. heartbeats the jobs it holds (and kills a child whose job another instance has taken over),
4. recovers jobs whose instance stopped heartbeating (requeued to resume from their last checkpoint,
   or failed after ``max_attempts`` runs),
5. claims queued jobs while it has room (``local_concurrency``) — by a conditional UPDATE, so
   several instances sharing the database never start the same job.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import logging
import os
import re
import secrets
import socket
import tarfile
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunegate.files import FileStore, new_file_id
from tunegate.localjobs.db import JobDB, Row, now
from tunegate.localjobs.limits import (
    PathScrubber,
    best_checkpoint,
    lower_auto_epochs,
    model_reference,
    model_unavailable,
    prune_checkpoints,
)
from tunegate.store import Store

log = logging.getLogger("tunegate.localjobs")

_SCHEDULERS: weakref.WeakSet[Scheduler] = weakref.WeakSet()

# The engine announces its own file checks; here validation is a separate, earlier stage.
_ENGINE_DUPLICATES = {"Files validated, moving job to queued state"}
_ENGINE_PREFIXES = ("Validating training file:",)


def wake_all() -> None:
    """Make every scheduler in this process look at the database now (after a create, cancel, …)."""
    for scheduler in list(_SCHEDULERS):
        scheduler.wake()


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def job_dir(data_dir: Path, job_id: str) -> Path:
    return data_dir / "local" / "jobs" / job_id


def checkpoint_step(path: str | None) -> int:
    """The step a checkpoint directory was written at (``step-N`` or ``pause-step-N``)."""
    match = re.search(r"step-(\d+)$", os.path.basename((path or "").rstrip("/")))
    return int(match.group(1)) if match else -1


# ---- validation (blocking; runs in a thread) ---------------------------------------------------


def model_available(reference: str) -> bool:
    """A model directory (an absolute path ``model_reference`` allowed), or a Hugging Face id already in
    the local cache (never downloaded). An id is never looked up as a path: "gpt2" is no folder of the
    gateway's working directory."""
    if reference.startswith("/"):
        return Path(reference).is_dir()
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(reference, "config.json"), str)
    except Exception:  # an id the hub library refuses (bad characters) is simply not there
        return False


def _file_error(report: Any, field: str) -> dict[str, Any]:
    first = report.errors[0] if report.errors else None
    where = f"Line {first.line}: " if first is not None and first.line is not None else ""
    detail = f"{where}{first.message}" if first is not None else "it could not be read"
    more = f" (and {report.error_count - 1} more problem(s))" if report.error_count > 1 else ""
    return {"code": f"invalid_{field}", "message": f"The {field.replace('_', ' ')} is not valid. {detail}{more}",
            "param": field}


def _too_few_examples(examples: int) -> dict[str, Any] | None:
    """The local provider's training minimum (its `dataset_rules`), for files the create could not check
    (uploaded with validation off): the job fails as OpenAI's does, with `invalid_n_examples`."""
    from tunegate.providers.local import Local

    minimum = Local.dataset_rules.min_training_examples
    if minimum is None or examples >= minimum:
        return None
    return {"code": "invalid_n_examples", "param": "training_file",
            "message": f"Training file has {examples} example(s), but must have at least {minimum} examples"}


def validate_job(model: str, method: str, requested: dict[str, Any], training: Path | None,
                 validation: Path | None, has_validation: bool, model_roots: Sequence[Path] = (),
                 max_epochs: int | None = None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(resolved hyperparameters, None) or (None, error object)."""
    from tunegate.data.validator import validate_path
    from tunegate.trainer import TrainingError, resolve_hyperparameters

    if training is None or not training.is_file():
        return None, {"code": "invalid_training_file", "message": "The training file no longer exists.",
                      "param": "training_file"}
    report = validate_path(training, method=method)
    if not report.ok:
        return None, _file_error(report, "training_file")
    if (few := _too_few_examples(int(report.stats.get("examples") or 0))) is not None:
        return None, few
    if has_validation:
        if validation is None or not validation.is_file():
            return None, {"code": "invalid_validation_file", "message": "The validation file no longer exists.",
                          "param": "validation_file"}
        vreport = validate_path(validation, method=method)
        if not vreport.ok:  # a count is never an error of the file itself; validation files have no minimum
            return None, _file_error(vreport, "validation_file")
    try:
        resolved = resolve_hyperparameters(requested, int(report.stats.get("examples") or 0), method)
    except TrainingError as exc:
        return None, exc.to_dict()
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("peft") is None:
        return None, {"code": "local_training_unavailable",
                      "message": "This gateway cannot train locally: install PyTorch, transformers and peft "
                                 "(pip install 'tunegate[local]').", "param": None}
    reference = model_reference(model, model_roots)
    if reference is None or not model_available(reference):
        return None, model_unavailable(model)  # the same words whatever is (or is not) at that path
    return (resolved if max_epochs is None else lower_auto_epochs(resolved, requested, max_epochs)), None


def pack_adapter(adapter_dir: str, archive: Path) -> None:
    """``adapter/adapter_model.safetensors`` + ``adapter/adapter_config.json`` (+ any other file) in a tar."""
    with tarfile.open(archive, "w") as tar:
        for name in sorted(os.listdir(adapter_dir)):
            full = os.path.join(adapter_dir, name)
            if os.path.isfile(full):
                tar.add(full, arcname=f"adapter/{name}")


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, 1024 * 1024):
            yield chunk
    finally:
        handle.close()


# ---- the scheduler ---------------------------------------------------------------------------


async def _call(method: Callable[[], Any]) -> Any:
    """A runner's method: a coroutine (a job on a cluster, over HTTP) is awaited on the loop; a blocking
    one (a child process of this host) runs in a thread."""
    if inspect.iscoroutinefunction(method):
        return await method()
    return await asyncio.to_thread(method)


def _engine_ref(proc: Any) -> str | None:
    """The id a job has on an outside engine (it outlives this instance), or None for a child process."""
    return getattr(proc, "engine_ref", None)


@dataclass
class Running:
    job_id: str
    row: Row
    proc: Any
    events: list[dict[str, Any]] = field(default_factory=list)
    pause_sent: bool = False
    stopping: bool = False  # paused because this instance is shutting down: requeue, not "paused"

    def take_events(self) -> list[dict[str, Any]]:
        taken, self.events[:] = list(self.events), []
        return taken


def _default_runner(spec: Any, on_event: Callable[[dict[str, Any]], None]) -> Any:
    from tunegate.trainer import TrainingProcess

    return TrainingProcess(spec, on_event)


def training_runner(training: Any) -> Callable[[Any, Callable[[dict[str, Any]], None]], Any]:
    """The runner for ``[local_training]`` settings: one child process, or a torchrun group of
    ``processes`` ranks; device, precision and memory savers reach the child as its environment."""

    def run(spec: Any, on_event: Callable[[dict[str, Any]], None]) -> Any:
        from tunegate.trainer import RuntimeOptions, make_training_process

        options = RuntimeOptions(device=None if training.device == "auto" else training.device,
                                 threads=training.threads, precision=training.precision,
                                 gradient_checkpointing=training.gradient_checkpointing,
                                 quantization=training.quantization, strategy=training.strategy)
        return make_training_process(spec, on_event, processes=training.processes, env=options.to_env())

    return run


class Scheduler:
    def __init__(self, store: Store, files: FileStore, data_dir: Path, *, concurrency: int = 1,
                 interval: float = 0.5, heartbeat_interval: float = 5.0, stale_after: float = 60.0,
                 max_attempts: int = 3, shutdown_grace: float = 15.0,
                 runner: Callable[[Any, Callable[[dict[str, Any]], None]], Any] | None = None,
                 instance: str | None = None, model_roots: Sequence[Path] = (), keep_checkpoints: int = 3,
                 max_epochs: int | None = None, training: Any = None) -> None:
        self.store = store
        self.files = files
        self.db = JobDB(store.engine)
        self.data_dir = Path(data_dir)
        self.model_roots = tuple(Path(r) for r in model_roots)
        self.keep_checkpoints = keep_checkpoints
        self.max_epochs = max_epochs
        self.scrub = PathScrubber(self.data_dir)  # what clients read names no absolute path of this host
        self.concurrency = max(0, concurrency)
        self.interval = interval
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.max_attempts = max_attempts
        self.shutdown_grace = shutdown_grace
        self.runner = runner or (training_runner(training) if training is not None else _default_runner)
        self.instance = instance or instance_id()
        self.running: dict[str, Running] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_heartbeat = 0.0
        self._last_recovery = 0.0

    # ---- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        _SCHEDULERS.add(self)
        await self.recover()  # jobs a dead instance left running, first thing
        self._task = self._loop.create_task(self._run(), name=f"tunegate-local-scheduler-{self.instance}")

    def wake(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad tick (database briefly away, …) must not end the worker
                log.exception("local job scheduler tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval if self.running else self.interval * 2)
            self._wake.clear()

    async def stop(self) -> None:
        """Stop claiming; ask every child to checkpoint and exit, and requeue its job so the next
        instance resumes it. Children still busy after ``shutdown_grace`` seconds are killed and their
        jobs requeued from their last epoch checkpoint."""
        _SCHEDULERS.discard(self)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for run in list(self.running.values()):
            if _engine_ref(run.proc) is not None:
                await self._release(run)  # it trains on, elsewhere: the next instance follows it
                continue
            run.stopping = True
            if not run.pause_sent:
                await _call(run.proc.pause)
                run.pause_sent = True
        deadline = time.monotonic() + self.shutdown_grace
        while self.running and time.monotonic() < deadline:
            await self._poll_all()
            if self.running:
                await asyncio.sleep(0.2)
        for run in list(self.running.values()):
            await _call(run.proc.cancel)
            self.running.pop(run.job_id, None)
            await self._requeue_lost(run.job_id, self.instance, None, reason="the gateway instance stopped")

    async def _release(self, run: Running) -> None:
        self.running.pop(run.job_id, None)
        await self._store_events(run)
        await self.db.cas(run.job_id, {"claimed_by": self.instance, "status": "running"},
                          {"claimed_by": None, "heartbeat_at": None})
        log.info("local job %s left running on %s (%s) for the next instance", run.job_id,
                 run.row.get("engine") or "its engine", _engine_ref(run.proc))

    # ---- one tick ------------------------------------------------------------------------------

    async def tick(self) -> None:
        await self._validate_pending()
        await self._poll_all()
        await self._apply_requests()
        t = time.monotonic()
        if t - self._last_heartbeat >= self.heartbeat_interval:
            self._last_heartbeat = t
            await self._heartbeat()
        if t - self._last_recovery >= self.heartbeat_interval:
            self._last_recovery = t
            await self.recover()
        while len(self.running) < self.concurrency:
            row = await self._claim()
            if row is None:
                break
            await self._launch(row)

    # ---- validation ----------------------------------------------------------------------------

    async def _validate_pending(self) -> None:
        for row in await self.db.ids_where(limit=5, status="validating_files", claimed_by=None):
            if not await self.db.cas(row["id"], {"status": "validating_files", "claimed_by": None},
                                     {"claimed_by": self.instance, "heartbeat_at": time.time()}):
                continue  # another instance is on it
            await self._validate(row)

    async def _validate(self, row: Row) -> None:
        method = row["method"]["type"]
        requested = dict((row["method"].get(method) or {}).get("hyperparameters") or {})
        paths = []
        for name in ("training_file", "validation_file"):
            found = await self.store.get_managed_file(row[name]) if row[name] else None
            paths.append(await self.files.local_path(found["location"]) if found else None)
        try:
            resolved, error = await asyncio.to_thread(validate_job, row["model"], method, requested, paths[0],
                                                      paths[1], bool(row["validation_file"]), self.model_roots,
                                                      self.max_epochs)
        except Exception as exc:  # a validator bug must fail the job, not wedge it in validating_files
            log.exception("validating local job %s failed", row["id"])
            resolved, error = None, {"code": "validation_error", "message": f"Validation failed: {exc}",
                                     "param": None}
        expect = {"status": "validating_files", "claimed_by": self.instance}
        if error is not None:
            if await self.db.cas(row["id"], expect, {"status": "failed", "error": error, "finished_at": now(),
                                                     "claimed_by": None}):
                await self.db.add_events(row["id"], [{"level": "error", "message": error["message"]}])
            return
        assert resolved is not None
        hp = {k: resolved[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
        if method == "dpo":
            hp["beta"] = resolved["beta"]
        hp.update({k: resolved[k] for k in requested if k in resolved and k not in hp})
        if await self.db.cas(row["id"], expect, {"status": "queued", "hyperparameters": hp, "claimed_by": None,
                                                 "heartbeat_at": None}):
            await self.db.add_events(row["id"], [
                {"message": f"Validating training file: {row['training_file']}"
                            + (f" and validation file: {row['validation_file']}" if row["validation_file"] else "")},
                {"message": "Files validated, moving job to queued state"}])
            self.wake()

    # ---- claiming and starting -----------------------------------------------------------------

    async def _claim(self) -> Row | None:
        """The oldest queued job, now held by this instance; None when none is left. Losing a race for
        one candidate just moves on to the next (and re-reads the queue when all were taken)."""
        for _ in range(5):
            candidates = await self.db.ids_where(limit=self.concurrency + 8, status="queued", claimed_by=None,
                                                 paused=False, cancel_requested=False)
            if not candidates:
                return None
            claimed = await self._claim_one(candidates)
            if claimed is not None:
                return claimed
        return None

    async def _claim_one(self, candidates: list[Row]) -> Row | None:
        for row in candidates:
            attempt = int(row["attempts"] or 0) + 1
            output_dir = str(job_dir(self.data_dir, row["id"]) / f"run-{time.time_ns() // 1_000_000:x}")
            if await self.db.cas(row["id"], {"status": "queued", "claimed_by": None, "paused": False,
                                             "cancel_requested": False},
                                 {"status": "running", "claimed_by": self.instance, "heartbeat_at": time.time(),
                                  "started_at": row["started_at"] or now(), "attempts": attempt,
                                  "output_dir": output_dir, "pause_requested": False}):
                return {**row, "attempts": attempt, "output_dir": output_dir}
        return None

    async def _launch(self, row: Row) -> None:
        from tunegate.trainer import TrainSpec

        method = row["method"]["type"]
        requested = dict((row["method"].get(method) or {}).get("hyperparameters") or {})
        paths: list[str | None] = []
        for name in ("training_file", "validation_file"):
            found = await self.store.get_managed_file(row[name]) if row[name] else None
            paths.append(str(await self.files.local_path(found["location"])) if found else None)
        if paths[0] is None:
            await self._finish(row["id"], {"status": "failed", "error": {
                "code": "invalid_training_file", "message": "The training file no longer exists.",
                "param": "training_file"}}, "The training file no longer exists.", level="error")
            return
        reference = model_reference(row["model"], self.model_roots)  # the roots may have changed since
        if reference is None:
            error = model_unavailable(row["model"])
            await self._finish(row["id"], {"status": "failed", "error": error}, error["message"], level="error")
            return
        if requested.get("n_epochs") in (None, "auto") and (row["hyperparameters"] or {}).get("n_epochs"):
            # The count validation settled on (an operator ceiling may have lowered it), not a new "auto".
            requested = {**requested, "n_epochs": row["hyperparameters"]["n_epochs"]}
        spec = TrainSpec(job_id=row["id"], model=reference, training_file=str(paths[0]),
                         validation_file=paths[1], method=method, hyperparameters=requested, seed=int(row["seed"]),
                         suffix=row["suffix"], output_dir=row["output_dir"], resume_from=row["resume_from"])
        run = Running(row["id"], row, None)
        try:
            run.proc = self.runner(spec, run.events.append)
            if (ref := _engine_ref(run.proc)) is not None:
                # Named before it is submitted: an instance that dies in between leaves a job another can find.
                await self.db.cas(row["id"], {"claimed_by": self.instance},
                                  {"engine": getattr(self.runner, "engine", None), "engine_job_id": ref,
                                   "engine_cursor": 0})
                run.row = {**row, "engine_job_id": ref}
            await _call(run.proc.start)
        except Exception as exc:
            log.exception("could not start the training process for %s", row["id"])
            await self._finish(row["id"], {"status": "failed", "error": {
                "code": "training_error", "message": f"Could not start the training process: {exc}", "param": None}},
                f"Could not start the training process: {exc}", level="error")
            return
        self.running[row["id"]] = run
        await self.db.cas(row["id"], {"claimed_by": self.instance}, {"pid": run.proc.pid})
        log.info("local job %s started (run %s, pid %s)", row["id"], row["attempts"], run.proc.pid)

    # ---- polling -------------------------------------------------------------------------------

    async def _poll_all(self) -> None:
        for run in list(self.running.values()):
            status = await _call(run.proc.poll)
            await self._store_events(run)
            if status != "running":
                await self._finalize(run, status)

    async def _store_events(self, run: Running) -> None:
        events = run.take_events()
        cursor = getattr(run.proc, "cursor", None)  # an outside engine's log position, stored with its events
        if not events:
            if cursor is not None and cursor != run.row.get("engine_cursor"):
                await self.db.add_events(run.job_id, [], cursor=cursor)
                run.row["engine_cursor"] = cursor
            return
        keep: list[dict[str, Any]] = []
        progress: dict[str, Any] | None = None
        checkpointed = False
        for ev in events:
            kind = ev.get("type")
            if kind in ("message", "metrics"):
                text = str(ev.get("message") or "")
                if kind == "message" and (text in _ENGINE_DUPLICATES or text.startswith(_ENGINE_PREFIXES)):
                    continue
                keep.append(self.scrub.event(ev))
            elif kind == "progress":
                progress = ev
            elif kind == "checkpoint":
                await self.db.put_checkpoint(run.job_id, int(ev["step"]), ev.get("metrics") or {}, str(ev["path"]))
                checkpointed = True
        await self.db.add_events(run.job_id, keep, cursor=cursor)
        if cursor is not None:
            run.row["engine_cursor"] = cursor
        if checkpointed:
            await self._retain_checkpoints(run)
        if progress is not None:
            await self.db.cas(run.job_id, {"claimed_by": self.instance, "status": "running"},
                              {"trained_tokens": int(progress.get("trained_tokens") or 0),
                               "estimated_finish": progress.get("estimated_finish")})

    async def _retain_checkpoints(self, run: Running, also: str | None = None) -> None:
        """Keep the job's newest ``keep_checkpoints`` checkpoint directories, its best one (lowest loss) and
        the one it resumes from (or ``also``); delete the others."""
        rows, _ = await self.db.list_checkpoints(run.job_id, limit=10_000, after_step=None)
        keep = [best_checkpoint(rows), run.row.get("resume_from"), also]
        await asyncio.to_thread(prune_checkpoints, job_dir(self.data_dir, run.job_id), self.keep_checkpoints, keep)

    async def _apply_requests(self) -> None:
        if not self.running:
            return
        rows = {r["id"]: r for r in await self.db.ids_where(limit=1000, claimed_by=self.instance, status="running")}
        for job_id, run in list(self.running.items()):
            row = rows.get(job_id)
            if row is None:
                continue  # finished in this tick, or taken over (the heartbeat handles that)
            if row["cancel_requested"]:
                await _call(run.proc.cancel)  # returns once the child (or the cluster's job) is gone
                await self._store_events(run)
                await self._finalize(run, "cancelled")
            elif row["pause_requested"] and not run.pause_sent:
                await _call(run.proc.pause)
                run.pause_sent = True

    async def _finalize(self, run: Running, status: str) -> None:
        self.running.pop(run.job_id, None)
        proc = run.proc
        result = getattr(proc, "result", None)
        if status == "succeeded" and result is not None:
            files = await self._result_files(run, result)
            await self._retain_checkpoints(run)
            await self._finish(run.job_id, {
                "status": "succeeded", "fine_tuned_model": result.fine_tuned_model,
                "trained_tokens": int(result.trained_tokens), "result_files": [f["id"] for f in files],
                "estimated_finish": None},
                "Result files: " + ", ".join(f"{f['filename']} ({f['id']})" for f in files),
                # Relative to the data directory: the host's own paths are no business of API clients.
                data={"adapter_dir": self.scrub.relative(result.adapter_dir),
                      "metrics_csv": self.scrub.relative(result.metrics_csv),
                      "result_files": [f["id"] for f in files]})
        elif status == "paused" and result is not None:
            values: dict[str, Any] = {"status": "queued", "resume_from": result.resume_checkpoint,
                                      "trained_tokens": int(result.trained_tokens), "pause_requested": False,
                                      "estimated_finish": None,
                                      # `attempts` counts runs that did not end cleanly; a pause is clean.
                                      "attempts": max(0, int(run.row["attempts"] or 1) - 1)}
            if run.stopping:
                text = (f"The gateway instance is stopping: job requeued, it will resume from step "
                        f"{result.step}/{result.total_steps}")
            else:
                values["paused"] = True
                text = "Job paused; resume it with POST /v1/fine_tuning/jobs/{id}/resume".replace("{id}", run.job_id)
            await self._retain_checkpoints(run, also=result.resume_checkpoint)
            await self._finish(run.job_id, values, text, terminal=False)
        elif status == "cancelled":
            await self._finish(run.job_id, {"status": "cancelled", "estimated_finish": None}, "Job cancelled")
        else:
            error = getattr(proc, "error", None) or {"code": "training_error",
                                                      "message": "The training process failed.", "param": None}
            error = {**error, "message": self.scrub.text(str(error.get("message") or ""))}
            if getattr(proc, "traceback", None):
                log.error("local job %s failed:\n%s", run.job_id, proc.traceback)
            # The child already emitted the error message as an event.
            await self._finish(run.job_id, {"status": "failed", "error": error, "estimated_finish": None}, None)

    async def _finish(self, job_id: str, values: dict[str, Any], message: str | None, *, level: str = "info",
                      terminal: bool = True, data: dict[str, Any] | None = None) -> None:
        values = {**values, "claimed_by": None, "pid": None, "heartbeat_at": None}
        if terminal:
            values["finished_at"] = now()
        if await self.db.cas(job_id, {"claimed_by": self.instance}, values) and message:
            await self.db.add_events(job_id, [{"level": level, "message": message, "data": data}])

    async def _result_files(self, run: Running, result: Any) -> list[Row]:
        """The metrics CSV and a tar of the adapter, registered as managed files of the job's owner."""
        out = Path(run.row["output_dir"])
        archive = out / "adapter.tar"
        await asyncio.to_thread(pack_adapter, result.adapter_dir, archive)
        made = []
        for filename, path in ((f"{run.job_id}-step_metrics.csv", Path(result.metrics_csv)),
                               (f"{run.job_id}-adapter.tar", archive)):
            if not path.is_file():
                continue
            file_id = new_file_id()
            stored = await self.files.write(file_id, _file_chunks(path))
            row = dict(id=file_id, key_id=run.row["key_id"], filename=filename, purpose="fine-tune-results",
                       bytes=stored.bytes, sha256=stored.sha256, location=stored.location, report=None,
                       created_at=now(), expires_at=None)
            await self.store.add_managed_file(row)
            await self.store.record("file", file_id, "local", None, run.row["key_id"], "processed", None)
            made.append(row)
        await asyncio.to_thread(archive.unlink, True)
        return made

    # ---- heartbeats and recovery ----------------------------------------------------------------

    async def _heartbeat(self) -> None:
        if not self.running:
            return
        held = await self.db.heartbeat(self.instance, list(self.running))
        for job_id in set(self.running) - held:
            run = self.running.pop(job_id)
            if _engine_ref(run.proc) is not None:
                log.warning("local job %s is now followed by another instance", job_id)
                continue  # one job on the cluster, followed by whoever holds it: nothing to stop
            # Another instance decided this one was gone and took the job: stop our copy of the run.
            log.warning("local job %s is no longer held by this instance; stopping its training process", job_id)
            await asyncio.to_thread(run.proc.cancel)

    def _gone_here(self, claimed_by: str) -> bool:
        """Whether an instance id names a process on this host that no longer exists."""
        host, _, rest = claimed_by.partition(":")
        pid_text = rest.partition(":")[0]
        if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
            return False
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False

    async def recover(self) -> None:
        t = time.time()
        stale = {r["id"]: r for r in await self.db.stale(t - self.stale_after)}
        for row in await self.db.stale(t - 2 * self.heartbeat_interval):
            if row["claimed_by"] and self._gone_here(row["claimed_by"]):
                stale.setdefault(row["id"], row)
        for row in stale.values():
            if row["claimed_by"] == self.instance or row["id"] in self.running:
                continue
            if row.get("engine_job_id") and row["status"] == "running":
                continue  # still running on its engine: followed again below, never started again
            if row["status"] == "validating_files":
                await self.db.cas(row["id"], {"status": "validating_files", "claimed_by": row["claimed_by"]},
                                  {"claimed_by": None, "heartbeat_at": None})
                continue
            _kill_orphan(row)
            await self._requeue_lost(row["id"], row["claimed_by"], row["heartbeat_at"],
                                     reason=f"the gateway instance running it ({row['claimed_by']}) stopped "
                                            "responding")
        await self._adopt_engine_jobs(t)

    async def _adopt_engine_jobs(self, t: float) -> None:
        """Follow jobs that run on an outside engine and that no live instance follows (released at a
        stop, held by an instance that stopped answering, or by a process of this host that is gone).
        Only an instance whose runner can follow them, and that trains at all, takes them."""
        adopt = getattr(self.runner, "adopt", None)
        if adopt is None or self.concurrency == 0:
            return
        for row in await self.db.unheld_engine_jobs(t - 2 * self.heartbeat_interval):
            if row["id"] in self.running or row["claimed_by"] == self.instance:
                continue
            lost = (row["claimed_by"] is None or row["heartbeat_at"] is None
                    or row["heartbeat_at"] < t - self.stale_after or self._gone_here(row["claimed_by"]))
            if not lost:
                continue
            held = {"status": "running", "claimed_by": row["claimed_by"], "engine_job_id": row["engine_job_id"]}
            if not await self.db.cas(row["id"], held, {"claimed_by": self.instance, "heartbeat_at": time.time()}):
                continue  # another instance got there first
            run = Running(row["id"], {**row, "claimed_by": self.instance}, None)
            proc = await adopt(row, run.events.append)
            if proc is None:  # the engine never got it: nothing runs, so it can be queued again
                await self._requeue_lost(row["id"], self.instance, None, reason="its submission never reached "
                                         f"{row.get('engine') or 'the engine'}")
                continue
            run.proc = proc
            self.running[row["id"]] = run
            log.info("local job %s: following %s on %s", row["id"], row["engine_job_id"], row.get("engine"))

    async def _requeue_lost(self, job_id: str, holder: str, heartbeat: float | None, *, reason: str) -> None:
        """A running job whose process is gone: cancelled if that was asked, else queued again to resume
        from its newest checkpoint, or failed once it has been started ``max_attempts`` times."""
        row = await self.db.get(job_id)
        if row is None or row["status"] != "running" or row["claimed_by"] != holder:
            return
        expect: dict[str, Any] = {"status": "running", "claimed_by": holder}
        if heartbeat is not None:
            expect["heartbeat_at"] = heartbeat
        base = {"claimed_by": None, "pid": None, "heartbeat_at": None, "estimated_finish": None,
                "engine_job_id": None}
        if row["cancel_requested"]:
            if await self.db.cas(job_id, expect, {**base, "status": "cancelled", "finished_at": now()}):
                await self.db.add_events(job_id, [{"message": "Job cancelled"}])
            return
        resume = self._best_checkpoint(row, await self.db.last_checkpoint(job_id))
        if int(row["attempts"] or 0) >= self.max_attempts and not row["pause_requested"]:
            error = {"code": "worker_lost", "param": None,
                     "message": f"The job was interrupted {row['attempts']} times ({reason}); giving up."}
            if await self.db.cas(job_id, expect, {**base, "status": "failed", "error": error, "finished_at": now()}):
                await self.db.add_events(job_id, [{"level": "error", "message": error["message"]}])
            return
        where = (f"resume from checkpoint at step {checkpoint_step(resume)}" if resume
                 else "start over (no checkpoint yet)")
        values = {**base, "status": "queued", "resume_from": resume, "pause_requested": False,
                  "paused": bool(row["pause_requested"])}
        if await self.db.cas(job_id, expect, values):
            await self.db.add_events(job_id, [{"level": "warn", "message": f"Job requeued to {where}: {reason}"}])
            log.warning("local job %s requeued (%s)", job_id, reason)
            self.wake()

    @staticmethod
    def _best_checkpoint(row: Row, last: Row | None) -> str | None:
        candidates = [p for p in (row.get("resume_from"), last["path"] if last else None)
                      if p and os.path.isdir(p)]
        return max(candidates, key=checkpoint_step) if candidates else None


def _kill_orphan(row: Row) -> None:
    """A training child left behind by a dead instance on this host still holds memory (GPU memory too):
    kill it, if the pid still names a multiprocessing child that is not ours."""
    pid, holder = row.get("pid"), row.get("claimed_by") or ""
    if not pid or holder.partition(":")[0] != socket.gethostname():
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
        with open(f"/proc/{pid}/stat") as fh:
            ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return
    # a multiprocessing child, or the torchrun agent of a several-process job (its ranks die with it)
    if (b"spawn_main" in cmdline or b"tunegate.trainer.worker" in cmdline) and ppid != os.getpid():
        with contextlib.suppress(OSError):
            os.kill(int(pid), 9)
            log.warning("killed training process %s left behind by %s", pid, holder)
