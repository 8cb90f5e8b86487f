"""Cancel and pause/resume of running local jobs, through the SDK against a real gateway."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.local.conftest import wait_until

pytest.importorskip("torch")
pytest.importorskip("peft")

LONG = {"n_epochs": 40, "batch_size": 1}  # 640 steps: far longer than the tests wait


def running_pid(gateway: Any, job_id: str) -> int:
    async def pid(store: Any) -> Any:
        from tunegate.localjobs import JobDB

        row = await JobDB(store.engine).get(job_id)
        return row["pid"] if row and row["status"] == "running" else None

    return int(wait_until(lambda: gateway.with_store(pid), timeout=60))


def has_metrics(sdk: Any, job_id: str, min_step: int = 1) -> bool:
    data = sdk.fine_tuning.jobs.list_events(job_id, limit=1).data
    return bool(data) and data[0].type == "metrics" and data[0].data["step"] >= min_step


def test_cancel_kills_the_training_process(sdk: Any, gateway: Any, training_file: str, tiny_model: str) -> None:
    job = sdk.fine_tuning.jobs.create(model=tiny_model, training_file=training_file, hyperparameters=LONG)
    pid = running_pid(gateway, job.id)
    os.kill(pid, 0)  # alive
    wait_until(lambda: has_metrics(sdk, job.id), timeout=60)
    cancelled = sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (and reaped), its memory returned to the OS
    assert gateway.app.state.local_jobs.running == {}
    assert sdk.fine_tuning.jobs.list_events(job.id, limit=1).data[0].message == "Job cancelled"
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        sdk.fine_tuning.jobs.cancel(job.id)
    assert info.value.body["code"] == "invalid_job_state"
    # A queued job is cancelled at once, without ever running.
    queued = sdk.fine_tuning.jobs.create(model=tiny_model, training_file=training_file, hyperparameters=LONG)
    assert sdk.fine_tuning.jobs.cancel(queued.id).status == "cancelled"


def test_pause_then_resume_continues_from_the_checkpoint(sdk: Any, gateway: Any, training_file: str,
                                                         tiny_model: str) -> None:
    job = sdk.fine_tuning.jobs.create(model=tiny_model, training_file=training_file, seed=3,
                                      hyperparameters={"n_epochs": 8, "batch_size": 1})  # 128 steps
    # (64 steps could finish before the pause arrived on an idle machine: the test then raced the trainer)
    running_pid(gateway, job.id)
    wait_until(lambda: has_metrics(sdk, job.id, 3), timeout=60, interval=0.02)
    paused = sdk.fine_tuning.jobs.pause(job.id)
    assert paused.status == "queued" and paused.model_extra["paused"] is True
    assert gateway.app.state.local_jobs.running == {}
    messages = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=50)]
    at = next(m for m in messages if m.startswith("Job paused at step"))
    step = int(at.split("step ")[1].split("/")[0])
    assert 3 <= step < 128
    # Paused jobs are not picked up again.
    gateway.app.state.local_jobs.wake()
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "queued"

    resumed = sdk.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued" and resumed.model_extra["paused"] is False
    final = wait_until(lambda: (r := sdk.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and r,
                       timeout=90)
    assert final.status == "succeeded", final.error
    events = list(reversed(list(sdk.fine_tuning.jobs.list_events(job.id, limit=200))))
    assert f"Resuming from checkpoint at step {step}" in [e.message for e in events]
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == list(range(1, 129))  # every step once: the resumed run went on where the pause stopped
    assert [c.step_number for c in sdk.fine_tuning.jobs.checkpoints.list(job.id, limit=20)] == list(range(128, 0, -16))


def test_a_job_whose_instance_died_resumes_from_its_checkpoint(sdk: Any, gateway: Any, training_file: str,
                                                                tiny_model: str) -> None:
    """The gateway instance dies mid-run (its scheduler stops, its child is killed, the row stays
    `running`); another scheduler on the same database requeues the job and finishes it from the
    epoch-1 checkpoint."""
    import asyncio

    from tunegate.localjobs import JobDB, Scheduler

    job = sdk.fine_tuning.jobs.create(model=tiny_model, training_file=training_file, seed=5,
                                      hyperparameters={"n_epochs": 8, "batch_size": 1})  # 128 steps, 16 per epoch
    # (long enough that the job cannot finish before the simulated crash, even on a loaded machine)
    running_pid(gateway, job.id)
    wait_until(lambda: list(sdk.fine_tuning.jobs.checkpoints.list(job.id)), timeout=60, interval=0.02)
    old = gateway.app.state.local_jobs
    loop = old._loop

    async def crash() -> None:  # what SIGKILL of the gateway process would leave behind
        old._task.cancel()
        for run in list(old.running.values()):
            await asyncio.to_thread(run.proc.cancel)
        old.running.clear()
        await JobDB(old.store.engine).cas(job.id, {}, {"heartbeat_at": 1.0})

    asyncio.run_coroutine_threadsafe(crash(), loop).result(30)
    row = gateway.with_store(lambda store: JobDB(store.engine).get(job.id))
    assert row["status"] == "running" and row["claimed_by"] == old.instance

    async def replace() -> Scheduler:
        new = Scheduler(old.store, old.files, old.data_dir, concurrency=1, model_roots=old.model_roots)
        await new.start()
        return new

    gateway.app.state.local_jobs = asyncio.run_coroutine_threadsafe(replace(), loop).result(30)
    final = wait_until(lambda: (r := sdk.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and r,
                       timeout=90)
    assert final.status == "succeeded", final.error
    messages = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=200)]
    requeued = next(m for m in messages if m.startswith("Job requeued"))
    step = int(requeued.split("checkpoint at step ")[1].split(":")[0])
    assert step >= 16 and step % 16 == 0
    assert f"Resuming from checkpoint at step {step}" in messages
    assert [c.step_number for c in sdk.fine_tuning.jobs.checkpoints.list(job.id)] == list(range(128, 0, -16))
