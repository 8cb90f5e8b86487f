"""One training attempt on a Ray node: ``python -m tunegate.cluster.entrypoint`` (Ray's job entrypoint).

The job document (``layout.ClusterJob``) arrives in the environment (``TUNEGATE_CLUSTER_JOB``). This
process is a small stand-in for the gateway's scheduler on the node:

1. fetch the training (and validation) file, and the checkpoint to resume from, from the object store
   into a private work directory;
2. train with the same ``tunegate.trainer`` processes an instance uses (one child, or a torchrun group
   for ``processes`` > 1), relaying each event to stdout (``layout.event_line``), which Ray keeps as the
   job's log;
3. publish each checkpoint (a tar in the object store, the event names its ``s3://`` URI), poll the
   pause marker, and at the end publish the adapter and the metrics CSV, then the result event.

A stop from Ray (the gateway's cancel) is SIGTERM to this process and all its children: the training
child is cancelled and the process exits 143; Ray SIGKILLs whatever is left after a few seconds.
Exit status: 0 succeeded or paused, 1 failed. Object-store access is boto3 with the node's credentials
(or the ones the gateway forwarded: ``[local_training.ray] forward_aws_credentials``).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunegate.cluster.layout import ERROR, JOB_ENV, RESULT, ClusterJob, event_line, split_uri

CONTROL_POLL_SECONDS = 1.0  # one LIST a second per job: cheap, and a pause lands within a step or two


class Relay:
    """Numbered event lines on stdout; node-local paths replaced by what the gateway can use."""

    def __init__(self, work: Path) -> None:
        self.seq = 0
        self.work = str(work)

    def put(self, event: dict[str, Any]) -> None:
        self.seq += 1
        text = event_line(self.seq, event).replace(self.work + "/", "").replace(self.work, ".")
        sys.stdout.write(text)
        sys.stdout.flush()


def _s3(job: ClusterJob) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=job.endpoint or None, region_name=job.region or None)


def _pack(directory: str, archive: Path, arcroot: str) -> None:
    with tarfile.open(archive, "w") as tar:
        for name in sorted(os.listdir(directory)):
            full = os.path.join(directory, name)
            tar.add(full, arcname=f"{arcroot}/{name}")


def _unpack(archive: Path, into: Path) -> Path:
    """Extract a checkpoint tar (tarfile's "data" filter: no absolute paths, links or devices)."""
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    entries = [p for p in into.iterdir() if p.is_dir()]
    if len(entries) != 1:
        raise ValueError("the checkpoint archive does not hold exactly one directory")
    return entries[0]


class Attempt:
    def __init__(self, job: ClusterJob, work: Path, relay: Relay) -> None:
        self.job = job
        self.work = work
        self.relay = relay
        self.s3 = _s3(job)
        self.uploaded: list[str] = []  # checkpoint keys, oldest first
        self.pause_sent = False
        self.next_pause_check = 0.0
        self.stop_asked = False

    # ---- inputs --------------------------------------------------------------------------------
    def fetch(self, key: str, name: str) -> str:
        path = self.work / name
        self.s3.download_file(self.job.bucket, key, str(path))
        return str(path)

    def spec(self) -> Any:
        from tunegate.trainer.spec import TrainSpec

        training = self.fetch(self.job.training_key, "training.jsonl")
        validation = self.fetch(self.job.validation_key, "validation.jsonl") if self.job.validation_key else None
        resume = None
        if self.job.resume_from:
            where = split_uri(self.job.resume_from)
            if where is None:
                raise ValueError("the checkpoint to resume from is not in the object store")
            archive = self.work / "resume.tar"
            self.s3.download_file(where[0], where[1], str(archive))
            resume = str(_unpack(archive, self.work / "resume"))
        return TrainSpec(**{**self.job.spec, "training_file": training, "validation_file": validation,
                            "output_dir": str(self.work / "out"), "resume_from": resume})

    # ---- publishing ----------------------------------------------------------------------------
    def publish_checkpoint(self, local: str) -> str:
        name = os.path.basename(local.rstrip("/"))
        archive = self.work / f"{name}.tar"
        _pack(local, archive, name)
        key = self.job.checkpoint_key(name)
        self.s3.upload_file(str(archive), self.job.bucket, key)
        archive.unlink()
        self.uploaded.append(key)
        while len(self.uploaded) > max(1, self.job.keep_checkpoints):
            self.s3.delete_object(Bucket=self.job.bucket, Key=self.uploaded.pop(0))
        return self.job.uri(key)

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "checkpoint" and event.get("path"):
            event = {**event, "path": self.publish_checkpoint(str(event["path"]))}
        self.relay.put(event)

    def publish_result(self, result: Any) -> dict[str, Any]:
        data = result.to_dict()
        if result.status == "paused" and result.resume_checkpoint:
            uri = self.publish_checkpoint(result.resume_checkpoint)
            self.s3.delete_object(Bucket=self.job.bucket, Key=self.job.pause_key)
            data.update(resume_checkpoint=uri, adapter_dir=uri, checkpoints=[])
            return data
        archive = self.work / "adapter.tar"
        _pack(result.adapter_dir, archive, "adapter")
        self.s3.upload_file(str(archive), self.job.bucket, self.job.adapter_key)
        if os.path.isfile(result.metrics_csv):
            self.s3.upload_file(result.metrics_csv, self.job.bucket, self.job.metrics_key)
        data.update(adapter_dir=self.job.uri(self.job.adapter_key), metrics_csv=self.job.uri(self.job.metrics_key),
                    checkpoints=[])
        return data

    def control(self) -> set[str]:
        """The control markers present (pause, this submission's cancel); one LIST a second at most."""
        now = time.monotonic()
        if now < self.next_pause_check:
            return set()
        self.next_pause_check = now + CONTROL_POLL_SECONDS
        try:
            listed = self.s3.list_objects_v2(Bucket=self.job.bucket, Prefix=f"{self.job.root}/control/")
        except Exception:  # the store briefly away: keep training
            return set()
        keys = {o["Key"] for o in listed.get("Contents", [])}
        return ({"pause"} if self.job.pause_key in keys else set()) | (
            {"cancel"} if self.job.cancel_key in keys else set())

    # ---- the run -------------------------------------------------------------------------------
    def run(self, make_process: Callable[..., Any]) -> int:
        if "cancel" in self.control():  # cancelled while Ray kept it waiting: never train
            self.relay.put({"type": ERROR, "error": {"code": "cancelled", "param": None,
                                                     "message": "The job was cancelled before it started."}})
            return 143
        proc = make_process(self.spec(), self.on_event, processes=self.job.processes, env=self.job.trainer_env)
        proc.start()
        while (status := proc.poll()) == "running":
            asked = self.control()
            if self.stop_asked or "cancel" in asked:
                proc.cancel()
                return 143
            if not self.pause_sent and "pause" in asked:
                proc.pause()
                self.pause_sent = True
            time.sleep(0.2)
        if status in ("succeeded", "paused") and proc.result is not None:
            self.relay.put({"type": RESULT, "result": self.publish_result(proc.result)})
            return 0
        error = proc.error or {"code": "training_error", "message": "The training process failed.", "param": None}
        self.relay.put({"type": ERROR, "error": error})
        if getattr(proc, "traceback", None):
            sys.stderr.write(str(proc.traceback))
        return 1


def main() -> int:
    job = ClusterJob.from_json(os.environ[JOB_ENV])
    os.umask(0o077)  # training data and adapters: this user's alone
    work = Path(tempfile.mkdtemp(prefix=f"tunegate-{job.job_id}-"))
    relay = Relay(work)
    attempt = Attempt(job, work, relay)

    def stop(signum: int, frame: Any) -> None:
        attempt.stop_asked = True

    signal.signal(signal.SIGTERM, stop)
    try:
        from tunegate.trainer import make_training_process

        return attempt.run(make_training_process)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the job's error, in the log
        relay.put({"type": ERROR, "error": {"code": "training_error", "param": None,
                                            "message": f"{type(exc).__name__}: {exc}"}})
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
