"""``RayTrainingJob``: a ``local`` job that trains on a Ray cluster, behind the scheduler's process interface.

The scheduler (``tunegate.localjobs.scheduler``) drives every runner the same way — start, poll, pause,
cancel; status, result, error — and a runner whose jobs outlive the instance (``engine_ref``) is named in
the job's row *before* it starts, and can be ``adopt``-ed by another instance later. For Ray:

* start: ``POST /api/jobs/`` with submission id ``tunegate-<job>-<random>`` (recorded first, so a gateway
  that dies mid-submit never leads to a second copy: the next instance finds that id and follows it, or,
  if Ray never got it, queues the job again), entrypoint ``python -m tunegate.cluster.entrypoint``, the
  job document in its runtime env, the operator's resources.
* poll (every ``poll_interval`` seconds, never faster): the job's status, and its log, of which only
  event lines after the last stored ``seq`` are delivered. RUNNING and PENDING stay ``running`` (an
  event says the job waits for cluster resources); the result event ends it: the adapter and the
  metrics CSV are copied from the object store into the job's output directory, where serving and
  the result files expect them. FAILED (or an exit without a result) fails the job with the
  entrypoint's error, or Ray's message and the log's last lines.
* pause: a marker object the entrypoint polls; it checkpoints to the object store and ends ``paused``.
* cancel: ``POST /api/jobs/{id}/stop``, then wait (bounded) for Ray to report it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tunegate import aws
from tunegate.cluster.layout import (
    ERROR,
    JOB_ENV,
    RESULT,
    ClusterJob,
    cancel_key,
    job_root,
    log_tail,
    new_events,
    pause_key,
    split_uri,
)
from tunegate.cluster.ray_jobs import RayJob, RayJobsClient
from tunegate.cluster.settings import RaySettings
from tunegate.errors import NotFound, UpstreamError, UpstreamTimeout, UpstreamUnreachable
from tunegate.files.s3 import S3Store
from tunegate.private import private_dir
from tunegate.store.schema import local_jobs

log = logging.getLogger("tunegate.cluster")

ENGINE = "ray"
_CANCEL_WAIT = 30.0


class RayRunner:
    """Makes ``RayTrainingJob``s for one cluster; the scheduler's ``runner``."""

    engine = ENGINE

    def __init__(self, settings: RaySettings, training: Any, files: Any, store: Any, upstream: Any,
                 keep_checkpoints: int = 3) -> None:
        if not isinstance(files, S3Store):
            raise ValueError('[local_training] engine = "ray" needs file_store = "s3": the cluster\'s nodes read '
                             "training files and write adapters in the shared bucket.")
        self.settings = settings
        self.training = training
        self.files = files
        self.store = store
        token = settings.token.get_secret_value() if settings.token is not None else None
        self.client = RayJobsClient(upstream, settings.address, settings.request_timeout, token,
                                    max_log_bytes=settings.max_log_bytes)
        self.keep_checkpoints = keep_checkpoints

    def __call__(self, spec: Any, on_event: Callable[[dict[str, Any]], None]) -> RayTrainingJob:
        return RayTrainingJob(self, spec.job_id, on_event, f"tunegate-{spec.job_id}-{secrets.token_hex(4)}",
                              spec=spec)

    async def adopt(self, row: dict[str, Any], on_event: Callable[[dict[str, Any]], None]) -> RayTrainingJob | None:
        """Follow a job another instance (or this one, before a restart) submitted — never a new submit.
        None when the cluster never got it (the instance died before its submit went through)."""
        submission_id = str(row["engine_job_id"])
        if await self.client.get(submission_id) is None:
            return None
        job = RayTrainingJob(self, row["id"], on_event, submission_id, output_dir=row["output_dir"],
                             cursor=int(row.get("engine_cursor") or 0))
        job.status = "running"
        return job

    # ---- the job document ------------------------------------------------------------------------
    def runtime_options(self) -> tuple[int, dict[str, str]]:
        from tunegate.trainer.runtime import RuntimeOptions

        t = self.training
        options = RuntimeOptions(device=None if t.device == "auto" else t.device, threads=t.threads,
                                 precision=t.precision, gradient_checkpointing=t.gradient_checkpointing,
                                 quantization=t.quantization, strategy=t.strategy)
        return t.processes, options.to_env()

    async def document(self, spec: Any, submission_id: str) -> ClusterJob:
        keys = await self._file_keys(spec.job_id)
        processes, env = self.runtime_options()
        bucket = self.files.client.bucket
        fields = ("job_id", "model", "method", "hyperparameters", "seed", "suffix")
        return ClusterJob(job_id=spec.job_id, submission_id=submission_id, bucket=bucket.name,
                          root=job_root(self.files.prefix, spec.job_id), training_key=keys[0],
                          validation_key=keys[1], resume_from=spec.resume_from if spec.resume_from and
                          split_uri(spec.resume_from) else None,
                          spec={k: getattr(spec, k) for k in fields}, processes=processes, trainer_env=env,
                          region=bucket.region, endpoint=bucket.endpoint, keep_checkpoints=self.keep_checkpoints)

    async def _file_keys(self, job_id: str) -> tuple[str, str | None]:
        """The object-store keys of the job's managed files: the nodes read them from the bucket."""
        # Read from the store's own table (not through tunegate.localjobs, which calls this runner).
        query = (sa.select(local_jobs.c.training_file, local_jobs.c.validation_file)
                 .where(local_jobs.c.id == job_id))
        async with self.store.engine.connect() as conn:
            job = (await conn.execute(query)).first()
        if job is None:
            raise RuntimeError(f"job {job_id} is gone")
        keys: list[str | None] = []
        for file_id in job:
            found = await self.store.get_managed_file(file_id) if file_id else None
            keys.append(found["location"] if found else None)
        if keys[0] is None:
            raise RuntimeError("the training file no longer exists")
        return str(keys[0]), keys[1]

    def runtime_env(self, document: ClusterJob) -> dict[str, Any]:
        env = dict(self.settings.runtime_env)
        variables = {str(k): str(v) for k, v in dict(env.get("env_vars") or {}).items()}  # type: ignore[call-overload]
        variables[JOB_ENV] = document.to_json()
        if self.settings.forward_aws_credentials:
            keys = aws.auth_from_env()
            for name, value in (("AWS_ACCESS_KEY_ID", keys.access_key), ("AWS_SECRET_ACCESS_KEY", keys.secret_key),
                                ("AWS_SESSION_TOKEN", keys.session_token)):
                if value:
                    variables[name] = value
        env["env_vars"] = variables
        return env

    def entrypoint(self) -> str:
        return f"{shlex.quote(self.settings.python)} -m tunegate.cluster.entrypoint"


class RayTrainingJob:
    """One attempt of one job on Ray. Every method is a coroutine (the scheduler awaits them)."""

    pid = None  # nothing of this host's to kill

    def __init__(self, runner: RayRunner, job_id: str, on_event: Callable[[dict[str, Any]], None],
                 submission_id: str, *, spec: Any = None, output_dir: str | None = None, cursor: int = 0) -> None:
        self.runner = runner
        self.job_id = job_id
        self.spec = spec
        self.on_event = on_event
        self.engine_ref = submission_id
        self.output_dir = output_dir or (spec.output_dir if spec is not None else None)
        self.cursor = cursor  # the last event seq delivered
        self.status = "created"
        self.result: Any = None
        self.error: dict[str, Any] | None = None
        self.traceback: str | None = None
        self._next_poll = 0.0
        self._last_warning = 0.0
        self._offset = 0  # where the unread part of the job's log starts
        self._ray_status: str | None = None

    @property
    def client(self) -> RayJobsClient:
        return self.runner.client

    # ---- control -----------------------------------------------------------------------------------
    async def start(self) -> None:
        document = await self.runner.document(self.spec, self.engine_ref)
        with contextlib.suppress(Exception):  # a marker left by an earlier attempt's pause
            await self.runner.files.delete(document.pause_key)
        settings = self.runner.settings
        await self.client.submit(self.engine_ref, self.runner.entrypoint(),
                                 runtime_env=self.runner.runtime_env(document),
                                 metadata={"tunegate_job": self.spec.job_id}, num_cpus=settings.num_cpus,
                                 num_gpus=settings.num_gpus, memory_bytes=settings.memory_bytes,
                                 resources=settings.resources)
        self.status = "running"
        self.on_event({"type": "message", "message": f"Submitted to the Ray cluster as {self.engine_ref}"})

    async def _mark(self, key: str) -> None:
        """Write a control marker; ``key`` is relative to the store's prefix (which ``write`` adds)."""

        async def body() -> AsyncIterator[bytes]:
            yield b"1"

        await self.runner.files.write(key, body())

    async def pause(self) -> None:
        await self._mark(pause_key(job_root("", self.job_id)))

    async def cancel(self) -> None:
        """Stop the Ray job and wait (bounded) until Ray reports it ended; its processes are Ray's to kill.
        A job Ray still keeps PENDING cannot be stopped there (its supervisor actor waits for the same
        resources): the cancel marker makes it exit at once if it ever starts, and nothing waits for it."""
        if self.status != "running":
            return
        await self._mark(cancel_key(job_root("", self.job_id), self.engine_ref))
        stopped = await self.client.stop(self.engine_ref)
        deadline = time.monotonic() + _CANCEL_WAIT
        while stopped and time.monotonic() < deadline:
            job = await self.client.get(self.engine_ref)
            if job is None or job.terminal or job.status == "PENDING":
                break
            await asyncio.sleep(0.5)
        self.status = "cancelled"

    # ---- following the job ---------------------------------------------------------------------
    async def poll(self) -> str:
        if self.status != "running" or time.monotonic() < self._next_poll:
            return self.status
        self._next_poll = time.monotonic() + self.runner.settings.poll_interval
        try:
            return await self._follow()
        except (UpstreamUnreachable, UpstreamTimeout, UpstreamError) as exc:
            # The head briefly away (restart, network) says nothing about the job: keep following it.
            if time.monotonic() - self._last_warning > 60:
                self._last_warning = time.monotonic()
                log.warning("Ray job %s: the cluster did not answer (%s); still following it", self.engine_ref,
                            exc.message)
            return self.status

    async def _follow(self) -> str:
        job = await self.client.get(self.engine_ref)
        if job is None:
            self._lost()
            return self.status
        self._announce(job)
        text = await self._read_log()
        if self.status == "running" and job.terminal:
            # The log may lag the status by a moment: read it once more before deciding.
            text = await self._read_log()
            if self.status == "running":
                self._ended_without_result(job, await asyncio.to_thread(log_tail, text))
        return self.status

    async def _read_log(self) -> str:
        """Deliver the log's events after the cursor; only the part not read before is parsed (in a thread)."""
        text = await self.client.logs(self.engine_ref)
        events, end = await asyncio.to_thread(new_events, text, self.cursor, self._offset)
        for seq, event in events:
            await self._handle(event)
            self.cursor = seq
            if self.status != "running":
                return text
        self._offset = end
        return text

    def _announce(self, job: RayJob) -> None:
        if job.status == self._ray_status:
            return
        if job.status == "PENDING" and self._ray_status is None:
            self.on_event({"type": "message", "message": "Waiting for the Ray cluster's resources"})
        self._ray_status = job.status

    async def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == RESULT:
            await self._take_result(event["result"])
        elif kind == ERROR:
            self.error = dict(event.get("error") or {})
            self.status = "failed"
            message = str(self.error.get("message") or "Training failed.")
            self.on_event({"type": "message", "level": "error", "message": message})
        else:
            self.on_event(event)

    async def _take_result(self, data: dict[str, Any]) -> None:
        from tunegate.trainer.spec import TrainResult

        result = TrainResult.from_dict(data)
        if result.status == "succeeded":
            out = Path(self.output_dir or ".")
            await asyncio.to_thread(private_dir, out)
            try:
                adapter = await self._fetch_adapter(result.adapter_dir, out)
                metrics = out / "step_metrics.csv"
                if split_uri(result.metrics_csv):
                    await self._download(result.metrics_csv, metrics)
            except (ValueError, tarfile.TarError, NotFound) as exc:  # never fixed by trying again (a store away is)
                message = f"The trained adapter could not be copied back from the object store: {exc}"
                self.error = {"code": "training_error", "message": message, "param": None}
                self.status = "failed"
                self.on_event({"type": "message", "level": "error", "message": message})
                return
            result.adapter_dir, result.metrics_csv = str(adapter), str(metrics)
        self.result = result
        self.status = result.status

    async def _download(self, uri: str, path: Path) -> None:
        where = split_uri(uri)
        assert where is not None
        limit = self.runner.settings.max_artifact_bytes
        handle = await asyncio.to_thread(open, path, "wb")
        size = 0
        try:
            async for chunk in self.runner.files.read(where[1]):
                size += len(chunk)
                if size > limit:
                    raise ValueError(f"{uri} is larger than max_artifact_bytes ({limit})")
                await asyncio.to_thread(handle.write, chunk)
        finally:
            await asyncio.to_thread(handle.close)

    async def _fetch_adapter(self, uri: str, out: Path) -> Path:
        archive = out / "adapter.download.tar"
        await self._download(uri, archive)
        await asyncio.to_thread(_extract, archive, out)
        await asyncio.to_thread(os.unlink, archive)
        return out / "adapter"

    def _ended_without_result(self, job: RayJob, tail: str) -> None:
        if job.status == "STOPPED":
            message = "The job was stopped on the Ray cluster (not by tunegate)."
        else:
            message = f"The job ended on the Ray cluster without a result: {job.message or job.status}"
        self.error = {"code": "training_error", "message": message, "param": None}
        self.traceback = tail or None
        self.status = "failed"
        self.on_event({"type": "message", "level": "error", "message": message})

    def _lost(self) -> None:
        message = f"The Ray cluster no longer knows the job {self.engine_ref}."
        self.error = {"code": "worker_lost", "message": message, "param": None}
        self.status = "failed"
        self.on_event({"type": "message", "level": "error", "message": message})


def _extract(archive: Path, out: Path) -> None:
    """The adapter tar holds ``adapter/<file>`` members only; anything else is refused ("data" filter)."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not (member.isfile() or member.isdir()) or not member.name.startswith("adapter"):
                raise ValueError(f"unexpected member in the adapter archive: {member.name!r}")
        tar.extractall(out, filter="data")
