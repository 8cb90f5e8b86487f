"""What the gateway and the cluster agree on: the job document, the object-store keys, the log protocol.

Both sides import this module; it imports nothing of tunegate's beyond the standard library, so the
cluster's entrypoint stays light.

Object store (the gateway's ``file_store = "s3"`` bucket), for job J:

    <prefix>/cluster/J/control/pause                 the gateway asks for a pause (the job polls it)
    <prefix>/cluster/J/control/cancel-<submission>   that submission was cancelled: exit, never train
    <prefix>/cluster/J/checkpoints/<name>.tar        a checkpoint directory, packed (resume, pause)
    <prefix>/cluster/J/runs/<submission>/adapter.tar the final adapter (adapter/<file> members)
    <prefix>/cluster/J/runs/<submission>/step_metrics.csv

The job's input files are the managed files themselves (their keys in the same bucket): nothing is
copied for a job.

Log protocol: the entrypoint writes each event as one line ``TUNEGATE-EVENT <seq> <json>`` on stdout,
``seq`` counting from 1 within a submission. Ray keeps the whole log, so a gateway that comes back (or
another instance that adopts the job) reads it again and stores only events after the last ``seq`` it
stored (``engine_cursor`` on the job's row): each event is stored once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

JOB_ENV = "TUNEGATE_CLUSTER_JOB"  # the job document, JSON, in the entrypoint's environment
EVENT_PREFIX = "TUNEGATE-EVENT "
RESULT = "_tunegate_result"
ERROR = "_tunegate_error"
_EVENT_LINE = re.compile(r"^TUNEGATE-EVENT (\d+) (\{.*\})\s*$")


@dataclass
class ClusterJob:
    """Everything the entrypoint needs to run one attempt of one job."""

    job_id: str
    submission_id: str
    bucket: str
    root: str  # <prefix>/cluster/<job id>
    training_key: str
    validation_key: str | None
    resume_from: str | None  # s3://bucket/key of a checkpoint tar, or None
    spec: dict[str, Any]  # TrainSpec fields except the paths, which are the node's own
    processes: int = 1
    trainer_env: dict[str, str] = field(default_factory=dict)  # RuntimeOptions.to_env()
    region: str | None = None
    endpoint: str | None = None  # the object store's endpoint (MinIO …); None: AWS
    keep_checkpoints: int = 3

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ClusterJob:
        return cls(**json.loads(text))

    # ---- keys ----------------------------------------------------------------------------------
    @property
    def pause_key(self) -> str:
        return pause_key(self.root)

    @property
    def cancel_key(self) -> str:
        return cancel_key(self.root, self.submission_id)

    def checkpoint_key(self, name: str) -> str:
        return f"{self.root}/checkpoints/{name}.tar"

    @property
    def adapter_key(self) -> str:
        return f"{self.root}/runs/{self.submission_id}/adapter.tar"

    @property
    def metrics_key(self) -> str:
        return f"{self.root}/runs/{self.submission_id}/step_metrics.csv"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def job_root(store_prefix: str, job_id: str) -> str:
    prefix = store_prefix.strip("/")
    return f"{prefix}/cluster/{job_id}" if prefix else f"cluster/{job_id}"


def pause_key(root: str) -> str:
    return f"{root}/control/pause"


def cancel_key(root: str, submission_id: str) -> str:
    """Per submission: a job Ray keeps PENDING cannot be stopped there (its supervisor actor waits for the
    same resources); if it ever starts, this marker makes it exit before it trains."""
    return f"{root}/control/cancel-{submission_id}"


def split_uri(uri: str) -> tuple[str, str] | None:
    """(bucket, key) of ``s3://bucket/key``; None for anything else (a local path)."""
    if not uri.startswith("s3://"):
        return None
    bucket, _, key = uri[5:].partition("/")
    return (bucket, key) if bucket and key else None


def event_line(seq: int, event: dict[str, Any]) -> str:
    return f"{EVENT_PREFIX}{seq} {json.dumps(event, default=str, separators=(',', ':'))}\n"


def parse_events(log: str, after: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """The (seq, event) pairs of a job's log with seq > ``after``; other lines (warnings, tracebacks)
    are not events. A last line without its newline may still be being written: it waits."""
    complete = log[: log.rfind("\n") + 1]
    for line in complete.splitlines():
        match = _EVENT_LINE.match(line)
        if match is None or int(match.group(1)) <= after:
            continue
        try:
            yield int(match.group(1)), json.loads(match.group(2))
        except ValueError:
            continue


def new_events(log: str, after: int, start: int = 0) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """``parse_events`` over ``log[start:]`` (the part not read before: Ray's job log only grows), and the
    offset where the next read starts (the end of the last complete line). Blocking on a long log: run it
    in a thread."""
    if start > len(log):
        start = 0  # not the log it was (never seen; the cursor still keeps events from repeating)
    end = log.rfind("\n", start) + 1 or start
    return list(parse_events(log[start:end], after)), end


def log_tail(log: str, lines: int = 20, chars: int = 4000) -> str:
    """The last non-event lines of a log: what a failed job's error is made of."""
    other = [line for line in log.splitlines() if not line.startswith(EVENT_PREFIX) and line.strip()]
    return "\n".join(other[-lines:])[-chars:]
