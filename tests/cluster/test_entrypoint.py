"""The node side alone (``python -m tunegate.cluster.entrypoint``), against moto's S3: a submission the gateway
cancelled while Ray kept it waiting exits at once if it ever starts, before fetching or training anything."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.cluster.conftest import BUCKET, PREFIX
from tunegate.cluster.layout import JOB_ENV, ClusterJob, job_root, parse_events


def test_a_cancelled_submission_never_trains(bucket, moto_url: str) -> None:
    job = ClusterJob(job_id="ftjob-entry", submission_id="tunegate-ftjob-entry-1", bucket=BUCKET,
                     root=job_root(PREFIX, "ftjob-entry"), training_key=f"{PREFIX}/missing-training-file",
                     validation_key=None, resume_from=None, spec={}, region="us-east-1", endpoint=moto_url)
    bucket.put_object(Bucket=BUCKET, Key=job.cancel_key, Body=b"cancel")
    env = {**os.environ, JOB_ENV: job.to_json()}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tunegate.cluster.entrypoint"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 143, done.stderr[-2000:]
    events = [e for _, e in parse_events(done.stdout, 0)]
    assert [e["error"]["code"] for e in events] == ["cancelled"]  # and no training event before it
    assert time.monotonic() - started < 30


def test_without_the_marker_it_goes_on_to_fetch_its_inputs(bucket, moto_url: str) -> None:
    """The same document without the marker: it does not stop there (it fails on the missing training file),
    so the test above fails if the marker is not what stops it."""
    job = ClusterJob(job_id="ftjob-entry2", submission_id="tunegate-ftjob-entry2-1", bucket=BUCKET,
                     root=job_root(PREFIX, "ftjob-entry2"), training_key=f"{PREFIX}/missing-training-file",
                     validation_key=None, resume_from=None, spec={}, region="us-east-1", endpoint=moto_url)
    env = {**os.environ, JOB_ENV: job.to_json()}
    done = subprocess.run([sys.executable, "-m", "tunegate.cluster.entrypoint"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    events = [e for _, e in parse_events(done.stdout, 0)]
    assert events[-1]["error"]["code"] == "training_error" and "404" in events[-1]["error"]["message"]
