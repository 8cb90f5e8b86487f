"""``[local_training] engine = "ray"``: local jobs submitted to a real Ray head through its Job Submission
API, followed through its log, artifacts through the shared bucket (moto). The unmodified openai SDK drives
the gateway; the Ray head is asked directly what ran there."""

from __future__ import annotations

import json
import os
import signal
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import requests

pytest.importorskip("torch")
pytest.importorskip("peft")
openai = pytest.importorskip("openai")

from tests.cluster.conftest import AUTH, BUCKET, PREFIX, TOKEN, ray_settings  # noqa: E402
from tests.gateway import Gateway  # noqa: E402
from tests.trainer.conftest import sft_rows, write_jsonl  # noqa: E402

TERMINAL = ("succeeded", "failed", "cancelled")


def sdk(gw_url: str) -> Any:
    return openai.OpenAI(base_url=gw_url + "/v1", api_key="unused", max_retries=0, timeout=60,
                         default_headers={"x-portkey-provider": "local"})


def create_job(client: Any, tmp_path: Path, model: str, *, examples: int = 10, epochs: int = 2,
               batch: int = 4) -> Any:
    train = write_jsonl(tmp_path / f"train-{examples}.jsonl", sft_rows(examples))
    with open(train, "rb") as fh:
        file_id = client.files.create(file=("train.jsonl", fh), purpose="fine-tune").id
    return client.fine_tuning.jobs.create(model=model, training_file=file_id, seed=5, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": batch}}})


def wait_for(client: Any, job_id: str, until: Any, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if until(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not get there in {timeout}s: {job}")


def events(client: Any, job_id: str) -> list[Any]:
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=1000))))


def submission_of(client: Any, job_id: str) -> str:
    text = next(e.message for e in events(client, job_id) if e.message.startswith("Submitted to the Ray cluster"))
    return text.rsplit(" ", 1)[1]


def ray_jobs_for(address: str, job_id: str) -> list[dict[str, Any]]:
    listed = requests.get(f"{address}/api/jobs/", headers=AUTH, timeout=10).json()
    return [j for j in listed if (j.get("metadata") or {}).get("tunegate_job") == job_id]


def wait_ray(address: str, submission_id: str, statuses: tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = requests.get(f"{address}/api/jobs/{submission_id}", headers=AUTH, timeout=10).json()
        if body["status"] in statuses:
            return body
        time.sleep(0.3)
    raise AssertionError(f"Ray job {submission_id} is {body.get('status')}, not {statuses}")


def test_job_trains_on_ray_and_its_adapter_comes_back(tmp_path, tmp_path_factory, tiny_model, bucket,
                                                      ray_address, ray_jobs) -> None:
    with Gateway(tmp_path / "data", **ray_settings(ray_address, tmp_path_factory.getbasetemp())) as gw:
        client = sdk(gw.url)
        job = create_job(client, tmp_path, tiny_model)
        final = wait_for(client, job.id, lambda j: j.status in TERMINAL)
        assert final.status == "succeeded", final.error
        seen = events(client, job.id)
        submission = submission_of(client, job.id)
        ray_jobs.append(submission)
        # Every training step once, in order (10 examples / batch 4 = 3 steps per epoch), from the Ray log.
        assert [e.data["step"] for e in seen if e.type == "metrics"] == [1, 2, 3, 4, 5, 6]
        assert any(e.message == "Fine-tuning job started" for e in seen)
        assert final.fine_tuned_model.endswith(job.id) and final.trained_tokens > 0
        # The result files are the node's adapter and metrics, copied through the bucket.
        names = {client.files.retrieve(f).filename: f for f in final.result_files}
        assert set(names) == {f"{job.id}-step_metrics.csv", f"{job.id}-adapter.tar"}
        archive = tmp_path / "adapter.tar"
        archive.write_bytes(client.files.content(names[f"{job.id}-adapter.tar"]).content)
        with tarfile.open(archive) as tar:
            members = set(tar.getnames())
        assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= members
        metrics_csv = client.files.content(names[f"{job.id}-step_metrics.csv"]).text
        assert metrics_csv.splitlines()[0].startswith("step,train_loss") and len(metrics_csv.splitlines()) == 7
        # The tuned model answers at once, from the adapter that came back (the local model server).
        answer = client.chat.completions.create(model=final.fine_tuned_model, max_tokens=4, temperature=0,
                                                messages=[{"role": "user", "content": "Capital of France?"}])
        assert answer.model == final.fine_tuned_model and answer.usage.completion_tokens > 0
    # Ray ran it once, and says it succeeded; the node's copies are in the job's prefix of the bucket.
    runs = ray_jobs_for(ray_address, job.id)
    assert [r["submission_id"] for r in runs] == [submission] and runs[0]["status"] == "SUCCEEDED"
    keys = {o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/cluster/{job.id}/")
            .get("Contents", [])}
    assert f"{PREFIX}/cluster/{job.id}/runs/{submission}/adapter.tar" in keys
    # No AWS key in what the gateway stored about the job's events (the runtime env carries them to Ray).
    assert not any("moto-cluster-secret" in json.dumps(e.model_dump()) for e in seen)


def test_cancel_stops_the_ray_job(tmp_path, tmp_path_factory, tiny_model, bucket, ray_address, ray_jobs) -> None:
    with Gateway(tmp_path / "data", **ray_settings(ray_address, tmp_path_factory.getbasetemp())) as gw:
        client = sdk(gw.url)
        job = create_job(client, tmp_path, tiny_model, examples=40, epochs=20, batch=1)
        wait_for(client, job.id, lambda j: any(e.type == "metrics" for e in events(client, j.id)))
        submission = submission_of(client, job.id)
        ray_jobs.append(submission)
        cancelled = client.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status in ("cancelled", "running")
        final = wait_for(client, job.id, lambda j: j.status in TERMINAL, timeout=60)
        assert final.status == "cancelled"
        body = wait_ray(ray_address, submission, ("STOPPED",), timeout=30)
        assert body["status"] == "STOPPED"
        steps = [e.data["step"] for e in events(client, job.id) if e.type == "metrics"]
        assert steps and steps[-1] < 800  # stopped well before the end of its 800 steps


def test_a_job_that_fails_on_the_node_fails_with_its_error(tmp_path, tmp_path_factory, tiny_model, bucket,
                                                           ray_address, ray_jobs) -> None:
    root = tmp_path_factory.mktemp("broken-models")
    broken = root / "broken-llama"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": "not a number"}')
    with Gateway(tmp_path / "data", **ray_settings(ray_address, root)) as gw:
        client = sdk(gw.url)
        job = create_job(client, tmp_path, str(broken))
        final = wait_for(client, job.id, lambda j: j.status in TERMINAL, timeout=120)
        assert final.status == "failed"
        assert final.error.code in ("training_error", "model_not_available") and final.error.message
        assert str(tmp_path) not in final.error.message  # no path of the node's work directory
        submission = submission_of(client, job.id)
        ray_jobs.append(submission)
        assert any(e.level == "error" for e in events(client, job.id))
    assert wait_ray(ray_address, submission, ("FAILED",), timeout=30)["status"] == "FAILED"


def test_a_restarted_gateway_follows_the_job_it_left_on_ray(tmp_path, tmp_path_factory, tiny_model, bucket,
                                                            ray_address, ray_jobs) -> None:
    settings = ray_settings(ray_address, tmp_path_factory.getbasetemp())
    with Gateway(tmp_path / "data", **settings) as gw:
        client = sdk(gw.url)
        job = create_job(client, tmp_path, tiny_model, examples=24, epochs=3, batch=2)
        wait_for(client, job.id, lambda j: any(e.type == "metrics" for e in events(client, j.id)))
        submission = submission_of(client, job.id)
        ray_jobs.append(submission)
    # The instance stopped; the job trains on. A new instance on the same database finds it again.
    assert wait_ray(ray_address, submission, ("RUNNING", "SUCCEEDED"))["status"] in ("RUNNING", "SUCCEEDED")
    with Gateway(tmp_path / "data", **settings) as gw:
        client = sdk(gw.url)
        final = wait_for(client, job.id, lambda j: j.status in TERMINAL)
        assert final.status == "succeeded", final.error
        steps = [e.data["step"] for e in events(client, job.id) if e.type == "metrics"]
        assert steps == list(range(1, 37))  # 24 / 2 = 12 steps x 3 epochs, each stored exactly once
        assert len(final.result_files) == 2
    assert [r["submission_id"] for r in ray_jobs_for(ray_address, job.id)] == [submission]  # never twice


def test_a_killed_gateway_s_job_is_followed_by_the_next_one(tmp_path, tmp_path_factory, tiny_model, bucket,
                                                            ray_address, ray_jobs, moto_url) -> None:
    from tests.process import ServeProcess

    settings = ray_settings(ray_address, tmp_path_factory.getbasetemp())
    ray = settings["local_training"]["ray"]
    env = {"TUNEGATE_FILE_STORE": "s3", "TUNEGATE_FILE_STORE_S3_BUCKET": BUCKET,
           "TUNEGATE_FILE_STORE_S3_PREFIX": PREFIX, "TUNEGATE_FILE_STORE_S3_REGION": "us-east-1",
           "TUNEGATE_LOCAL_MODEL_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())]),
           "TUNEGATE_LOCAL_TRAINING__ENGINE": "ray", "TUNEGATE_LOCAL_TRAINING__THREADS": "1",
           "TUNEGATE_LOCAL_TRAINING__RAY__ADDRESS": ray["address"], "TUNEGATE_LOCAL_TRAINING__RAY__PYTHON":
           ray["python"], "TUNEGATE_LOCAL_TRAINING__RAY__POLL_INTERVAL": "0.3",
           "TUNEGATE_LOCAL_TRAINING__RAY__NUM_CPUS": "0.5", "TUNEGATE_LOCAL_TRAINING__RAY__FORWARD_AWS_CREDENTIALS":
           "true", "AWS_ENDPOINT_URL": moto_url, "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
           "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
           **({"TUNEGATE_LOCAL_TRAINING__RAY__TOKEN": TOKEN} if TOKEN else {})}
    with ServeProcess(tmp_path / "data", env=env) as first:
        client = sdk(first.url)
        job = create_job(client, tmp_path, tiny_model, examples=24, epochs=3, batch=2)
        wait_for(client, job.id, lambda j: any(e.type == "metrics" for e in events(client, j.id)))
        submission = submission_of(client, job.id)
        ray_jobs.append(submission)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    with Gateway(tmp_path / "data", **settings) as gw:
        client = sdk(gw.url)
        final = wait_for(client, job.id, lambda j: j.status in TERMINAL)
        assert final.status == "succeeded", final.error
        steps = [e.data["step"] for e in events(client, job.id) if e.type == "metrics"]
        assert steps == list(range(1, 37))
    assert [r["submission_id"] for r in ray_jobs_for(ray_address, job.id)] == [submission]


def test_pause_checkpoints_through_the_bucket_and_resume_continues(tmp_path, tmp_path_factory, tiny_model,
                                                                   bucket, ray_address, ray_jobs) -> None:
    with Gateway(tmp_path / "data", **ray_settings(ray_address, tmp_path_factory.getbasetemp())) as gw:
        client = sdk(gw.url)
        job = create_job(client, tmp_path, tiny_model, examples=80, epochs=6, batch=1)  # long enough to pause
        wait_for(client, job.id, lambda j: any(e.type == "metrics" for e in events(client, j.id)))
        ray_jobs.append(submission_of(client, job.id))
        client.fine_tuning.jobs.pause(job.id)
        # Paused as the local provider shows it (tests/local/test_control.py): queued, `paused: true`, once
        # the node has checkpointed (the checkpoint's tokens are counted).
        paused = wait_for(client, job.id, lambda j: j.status in TERMINAL or (
            j.model_extra.get("paused") and any(e.message.startswith("Job paused") for e in events(client, j.id))),
            timeout=90)
        assert paused.status == "queued" and paused.model_extra["paused"] is True, paused.error
        keys = [o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/cluster/{job.id}/")
                .get("Contents", [])]
        assert any("/checkpoints/pause-step-" in k for k in keys), keys
        client.fine_tuning.jobs.resume(job.id)
        final = wait_for(client, job.id, lambda j: j.status in TERMINAL)
        assert final.status == "succeeded", final.error
        seen = events(client, job.id)
        assert any(e.message.startswith("Resuming from checkpoint at step") for e in seen)
        steps = [e.data["step"] for e in seen if e.type == "metrics"]
        assert sorted(set(steps)) == list(range(1, 481)) and steps[-1] == 480  # 80 steps x 6 epochs
        for e in seen:
            if e.message.startswith("Submitted to the Ray cluster"):
                ray_jobs.append(e.message.rsplit(" ", 1)[1])
    runs = ray_jobs_for(ray_address, job.id)
    assert len(runs) == 2 and all(r["status"] == "SUCCEEDED" for r in runs)  # the paused run, the resumed one


def test_two_ranks_on_the_ray_node(tmp_path, tmp_path_factory, tiny_model, bucket, ray_address, ray_jobs) -> None:
    """[local_training] processes = 2 with engine = "ray": the entrypoint runs a torchrun group (gloo on CPU) on
    its node; the job reports like one process (each step once, from rank 0)."""
    settings = ray_settings(ray_address, tmp_path_factory.getbasetemp())
    settings["local_training"]["processes"] = 2
    with Gateway(tmp_path / "data", **settings) as gw:
        client = sdk(gw.url)
        job = create_job(client, tmp_path, tiny_model)
        final = wait_for(client, job.id, lambda j: j.status in TERMINAL)
        assert final.status == "succeeded", final.error
        seen = events(client, job.id)
        ray_jobs.append(submission_of(client, job.id))
        assert [e.data["step"] for e in seen if e.type == "metrics"] == [1, 2, 3, 4, 5, 6]
        started = next(e for e in seen if e.message == "Fine-tuning job started")
        assert started.data["processes"] == 2


def test_a_head_with_token_auth_refuses_a_gateway_without_the_token(tmp_path, tmp_path_factory, tiny_model, bucket,
                                                                   ray_address) -> None:
    if not TOKEN:
        pytest.skip("the Ray head runs without token authentication (TUNEGATE_TEST_RAY_TOKEN unset)")
    settings = ray_settings(ray_address, tmp_path_factory.getbasetemp())
    settings["local_training"]["ray"].pop("token")
    with Gateway(tmp_path / "data", **settings) as gw:
        client = sdk(gw.url)
        job = create_job(client, tmp_path, tiny_model)
        final = wait_for(client, job.id, lambda j: j.status in TERMINAL, timeout=120)
        assert final.status == "failed"
        assert "401" in final.error.message and "Ray cluster refused" in final.error.message
        assert ray_jobs_for(ray_address, job.id) == []  # nothing ran


def test_a_job_waiting_for_cluster_resources_is_queued_and_can_be_cancelled(tmp_path, tmp_path_factory, tiny_model,
                                                                             bucket, ray_address, ray_jobs) -> None:
    """Ray keeps a job PENDING while no node has its resources: the client sees `queued` (OpenAI's word for a
    job waiting for capacity), not `running`; a cancel stops it on Ray before it ever ran."""
    settings = ray_settings(ray_address, tmp_path_factory.getbasetemp(), resources={"tunegate_test_absent": 1.0})
    with Gateway(tmp_path / "data", **settings) as gw:
        client = sdk(gw.url)
        job = create_job(client, tmp_path, tiny_model)
        wait_for(client, job.id, lambda j: any(e.message.startswith("Submitted to the Ray cluster")
                                               for e in events(client, j.id)), timeout=60)
        submission = submission_of(client, job.id)
        ray_jobs.append(submission)
        time.sleep(2)  # several polls: still nothing from a node
        assert wait_ray(ray_address, submission, ("PENDING",))["status"] == "PENDING"
        assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
        assert [j.status for j in client.fine_tuning.jobs.list(limit=5) if j.id == job.id] == ["queued"]
        started = time.monotonic()
        client.fine_tuning.jobs.cancel(job.id)
        final = wait_for(client, job.id, lambda j: j.status in TERMINAL, timeout=60)
        assert final.status == "cancelled" and time.monotonic() - started < 15  # nothing waits for Ray
        # Ray cannot stop a job whose supervisor waits for resources; the marker makes it exit if it ever starts.
        marker = f"{PREFIX}/cluster/{job.id}/control/cancel-{submission}"
        assert bucket.head_object(Bucket=BUCKET, Key=marker)["ContentLength"] > 0
        assert requests.get(f"{ray_address}/api/jobs/{submission}", headers=AUTH, timeout=10).json()["status"] in (
            "PENDING", "STOPPED")
        assert not any(e.type == "metrics" for e in events(client, job.id))
