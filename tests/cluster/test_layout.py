"""The log protocol between the cluster's entrypoint and the gateway (``tunegate.cluster.layout``), and the
Jobs API client against the real head: a submission id is never run twice."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.cluster.conftest import TOKEN
from tunegate.cluster.layout import ClusterJob, event_line, job_root, log_tail, parse_events, split_uri


def test_events_after_the_cursor_only_and_a_half_written_line_waits() -> None:
    log = ("2026 INFO job_manager.py -- Runtime env is setting up.\n"
           + event_line(1, {"type": "message", "message": "one"})
           + "UserWarning: something noisy\n"
           + event_line(2, {"type": "metrics", "data": {"step": 1}})
           + event_line(3, {"type": "metrics", "data": {"step": 2}})[:-5])  # still being written
    assert [seq for seq, _ in parse_events(log, 0)] == [1, 2]
    assert [e["data"]["step"] for _, e in parse_events(log, 1)] == [1]
    assert list(parse_events(log, 2)) == []
    complete = log + event_line(3, {"type": "metrics", "data": {"step": 2}})[-5:]
    assert [seq for seq, _ in parse_events(complete, 2)] == [3]


def test_a_line_that_only_looks_like_an_event_is_not_one() -> None:
    log = "TUNEGATE-EVENT x {}\nTUNEGATE-EVENT 4 {not json}\nTUNEGATE-EVENT 5 {\"type\":\"message\"}\n"
    assert [seq for seq, _ in parse_events(log, 0)] == [5]
    assert "TUNEGATE-EVENT" not in log_tail(log + "Traceback: boom\n") and "boom" in log_tail(log + "Traceback: boom\n")


def test_keys_and_uris() -> None:
    job = ClusterJob(job_id="ftjob-1", submission_id="tunegate-ftjob-1-ab", bucket="b", root=job_root("p/q/", "ftjob-1"),
                     training_key="p/q/file-1", validation_key=None, resume_from=None, spec={})
    assert job.root == "p/q/cluster/ftjob-1" and job.pause_key == "p/q/cluster/ftjob-1/control/pause"
    assert job.adapter_key == "p/q/cluster/ftjob-1/runs/tunegate-ftjob-1-ab/adapter.tar"
    assert split_uri(job.uri(job.checkpoint_key("step-3"))) == ("b", "p/q/cluster/ftjob-1/checkpoints/step-3.tar")
    assert split_uri("/data/local/jobs/x") is None and split_uri("s3://bucket-only") is None
    assert ClusterJob.from_json(job.to_json()) == job
    assert job_root("", "j") == "cluster/j"


def test_a_submission_id_already_taken_returns_that_job(ray_address: str) -> None:
    from tunegate.cluster.ray_jobs import RayJob, RayJobsClient
    from tunegate.upstream import Upstream

    async def run() -> tuple[RayJob, RayJob, str]:
        upstream = Upstream()
        try:
            client = RayJobsClient(upstream, ray_address, token=TOKEN)
            sid = f"tunegate-test-{time.time_ns()}"
            first = await client.submit(sid, "echo first", runtime_env={}, metadata={}, num_cpus=0, num_gpus=None,
                                        memory_bytes=None, resources={})
            again = await client.submit(sid, "echo second", runtime_env={}, metadata={}, num_cpus=0, num_gpus=None,
                                        memory_bytes=None, resources={})
            for _ in range(100):
                job = await client.get(sid)
                if job is not None and job.terminal:
                    break
                await asyncio.sleep(0.2)
            return first, again, await client.logs(sid)
        finally:
            await upstream.close()

    first, again, logs = asyncio.run(run())
    assert first.submission_id == again.submission_id
    assert "first" in logs and "second" not in logs  # the second submit started nothing


def test_an_unknown_job_is_none_and_cannot_be_stopped(ray_address: str) -> None:
    from tunegate.cluster.ray_jobs import RayJobsClient
    from tunegate.upstream import Upstream

    async def run() -> tuple[object, bool, str]:
        upstream = Upstream()
        try:
            client = RayJobsClient(upstream, ray_address, token=TOKEN)
            return await client.get("tunegate-nope"), await client.stop("tunegate-nope"), await client.logs("tunegate-nope")
        finally:
            await upstream.close()

    assert asyncio.run(run()) == (None, False, "")


def test_the_address_must_be_http() -> None:
    from tunegate.cluster.ray_jobs import RayJobsClient
    from tunegate.upstream import Upstream

    with pytest.raises(ValueError, match="http"):
        RayJobsClient(Upstream(), "ray://10.0.0.5:10001")


def test_a_cluster_that_does_not_answer_leaves_the_job_running() -> None:
    """A head that is briefly away (restart, network) says nothing about the job: poll keeps it running and
    raises nothing (a raise would fail every scheduler tick)."""
    from types import SimpleNamespace

    from tests.standins.openai_like import free_port
    from tunegate.cluster.ray_jobs import RayJobsClient
    from tunegate.cluster.runner import RayTrainingJob
    from tunegate.cluster.settings import RaySettings
    from tunegate.upstream import Upstream

    async def run() -> tuple[str, str]:
        upstream = Upstream()
        try:
            settings = RaySettings(poll_interval=0.01)
            client = RayJobsClient(upstream, f"http://127.0.0.1:{free_port()}", timeout=2)  # nothing listens
            client.policy.retry.attempts = 1
            runner = SimpleNamespace(client=client, settings=settings)
            seen: list[dict[str, object]] = []
            job = RayTrainingJob(runner, "ftjob-x", seen.append, "tunegate-ftjob-x-1")  # type: ignore[arg-type]
            job.status = "running"
            first = await job.poll()
            await asyncio.sleep(0.02)
            return first, await job.poll()
        finally:
            await upstream.close()

    assert asyncio.run(run()) == ("running", "running")


def test_only_the_unread_part_of_a_growing_log_is_parsed() -> None:
    from tunegate.cluster.layout import new_events

    log = "setup\n" + event_line(1, {"type": "message"}) + event_line(2, {"type": "message"})[:10]
    events, end = new_events(log, 0)
    assert [s for s, _ in events] == [1] and log[end:] == "TUNEGATE-E"  # the half-written line waits
    log += event_line(2, {"type": "message"})[10:] + "noise\n"
    events, end2 = new_events(log, 1, end)
    assert [s for s, _ in events] == [2] and end2 == len(log)
    assert new_events(log, 2, end2) == ([], end2)
    # Read from the start (an instance that adopts the job): the cursor alone keeps events from repeating.
    assert [s for s, _ in new_events(log, 1)[0]] == [2]
    assert new_events("short\n", 0, 10_000)[1] == len("short\n")
