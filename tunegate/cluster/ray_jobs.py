"""Ray's Job Submission REST API, the part tunegate uses, over the gateway's ``Upstream``.

Wire shapes from Ray 2.60.0's own server, ``python/ray/dashboard/modules/job/job_head.py`` and
``common.py`` (``JobSubmitRequest``, ``JobDetails``, ``JobStatus``, ``JobStopResponse``,
``JobLogsResponse``), and checked against a real head (``ray start --head``, see tests/cluster):

* ``POST /api/jobs/`` ``{entrypoint, submission_id, runtime_env, metadata, entrypoint_num_cpus,
  entrypoint_num_gpus, entrypoint_memory, entrypoint_resources}`` → ``{job_id, submission_id}``. A
  ``submission_id`` already taken is refused — with a **500** and a Python traceback as plain text
  ("Job with submission_id … already exists"), so a refused submit is told apart by asking for the job.
* ``GET /api/jobs/{id}`` → ``JobDetails`` (``status``: PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED;
  ``message``, ``error_type``, ``driver_exit_code``, ``start_time``/``end_time`` in ms); 404 when unknown.
* ``POST /api/jobs/{id}/stop`` → ``{stopped}``: SIGTERM to the entrypoint and all its descendants, SIGKILL
  after ``RAY_JOB_STOP_WAIT_TIME_S`` (3 s by default; ``job_supervisor.py``).
* ``GET /api/jobs/{id}/logs`` → ``{logs}``: the entrypoint's whole stdout+stderr so far (no offset).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from tunegate.config import RetryPolicy, Timeouts
from tunegate.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from tunegate.upstream import CallPolicy, Upstream

TERMINAL = frozenset({"STOPPED", "SUCCEEDED", "FAILED"})


@dataclass
class RayJob:
    submission_id: str
    status: str  # PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    message: str
    error_type: str | None
    exit_code: int | None

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> RayJob:
        code = body.get("driver_exit_code")
        return cls(submission_id=str(body.get("submission_id") or ""), status=str(body.get("status") or "PENDING"),
                   message=str(body.get("message") or ""), error_type=body.get("error_type"),
                   exit_code=int(code) if isinstance(code, int) else None)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class RayJobsClient:
    """One cluster's Jobs API. ``address`` is the operator's (settings), so it connects as a trusted host."""

    def __init__(self, upstream: Upstream, address: str, timeout: float = 30.0, token: str | None = None,
                 submit_attempts: int = 5, max_log_bytes: int = 64 * 1024 * 1024) -> None:
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"[local_training.ray] address must be an http(s) URL, got {address!r}")
        self.base = address.rstrip("/")
        self.upstream = upstream
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.submit_attempts = max(1, submit_attempts)
        self.policy = CallPolicy(Timeouts(connect=min(10.0, timeout), first_byte=timeout, idle=timeout),
                                 RetryPolicy(attempts=3, backoff_base=0.5, backoff_max=4.0),
                                 trusted_hosts=frozenset({parts.hostname.lower()}))
        # A job's log may be far larger than any other answer: its own bound (a larger log fails the poll).
        self.log_policy = CallPolicy(self.policy.timeouts, self.policy.retry, trusted_hosts=self.policy.trusted_hosts,
                                     max_answer_bytes=max_log_bytes)

    def _url(self, submission_id: str, tail: str = "") -> str:
        return f"{self.base}/api/jobs/{quote(submission_id, safe='')}{tail}"

    def _fail(self, what: str, status: int, body: bytes) -> UpstreamError:
        # Ray answers errors as plain text, often a traceback: keep its last line, never the whole thing.
        last = (body.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:300]
        return UpstreamError(f"The Ray cluster refused to {what} (HTTP {status}): {last}", status=502,
                             code="ray_error")

    async def submit(self, submission_id: str, entrypoint: str, *, runtime_env: dict[str, Any],
                     metadata: dict[str, str], num_cpus: float | None, num_gpus: float | None,
                     memory_bytes: int | None, resources: dict[str, float]) -> RayJob:
        """Submit once; when the id is already taken (a submit whose answer was lost, another instance),
        the job that holds it is returned instead — the same job is never started twice."""
        body: dict[str, Any] = {"entrypoint": entrypoint, "submission_id": submission_id,
                                "runtime_env": runtime_env, "metadata": metadata}
        for name, value in (("entrypoint_num_cpus", num_cpus), ("entrypoint_num_gpus", num_gpus),
                            ("entrypoint_memory", memory_bytes), ("entrypoint_resources", resources or None)):
            if value is not None:
                body[name] = value
        for attempt in range(self.submit_attempts):
            try:
                response = await self.upstream.request("POST", f"{self.base}/api/jobs/", self.policy, json=body,
                                                       headers=self.headers)
            except (UpstreamUnreachable, UpstreamTimeout):
                if attempt == self.submit_attempts - 1:
                    raise
                await asyncio.sleep(min(8.0, 0.5 * 2 ** attempt))  # the answer may be lost, not the submit:
                continue  # the next round asks for the id before deciding
            if not response.ok and response.status < 500:  # refused (auth, a bad request): no retry helps
                raise self._fail("start the training job", response.status, response.body)
            existing = await self.get(submission_id)
            if response.ok or existing is not None:
                return existing or RayJob(submission_id, "PENDING", "", None, None)
            if attempt == self.submit_attempts - 1:
                raise self._fail("start the training job", response.status, response.body)
            # "No available agent to submit job, please try again later": a head still starting its
            # agents. Resending is safe: the submission id makes a second copy impossible.
            await asyncio.sleep(min(8.0, 0.5 * 2 ** attempt))
        raise AssertionError("unreachable")

    async def get(self, submission_id: str) -> RayJob | None:
        response = await self.upstream.request("GET", self._url(submission_id), self.policy, idempotent=True,
                                               headers=self.headers)
        if response.status == 404:
            return None
        if not response.ok:
            raise self._fail("report the training job", response.status, response.body)
        return RayJob.from_wire(response.json() or {})

    async def stop(self, submission_id: str) -> bool:
        response = await self.upstream.request("POST", self._url(submission_id, "/stop"), self.policy,
                                               idempotent=True, headers=self.headers)
        if response.status == 404:
            return False
        if not response.ok:
            raise self._fail("stop the training job", response.status, response.body)
        return bool((response.json() or {}).get("stopped"))

    async def logs(self, submission_id: str) -> str:
        response = await self.upstream.request("GET", self._url(submission_id, "/logs"), self.log_policy,
                                               idempotent=True,
                                               headers=self.headers)
        if response.status == 404:
            return ""
        if not response.ok:
            raise self._fail("send the training job's log", response.status, response.body)
        # A long job's log is megabytes of JSON: decoded off the event loop.
        return await asyncio.to_thread(_logs_text, response.body)


def _logs_text(body: bytes) -> str:
    decoded = orjson.loads(body) if body else None
    return str((decoded or {}).get("logs") or "") if isinstance(decoded, dict) else ""
