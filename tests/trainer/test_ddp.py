"""Training on 2 processes under torchrun (DDP, gloo on CPU): the same run as one process, checkpoints that
resume, pause, cancel and a dead rank. Each torchrun start costs ~10-20 s here (two interpreters importing
torch on shared cores): 6 starts in all.

Tolerance: with ``lora_dropout = 0`` the 2-process loss curve equals the 1-process one (same global batch,
same order) to a relative 1e-5 (seen: ~1e-7, float summation order only). With dropout the ranks draw
their own masks, so the curves differ by the noise of dropout itself: not compared.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tunegate.trainer import TorchrunProcess, TrainSpec, make_training_process, run_training  # noqa: E402
from tunegate.trainer.launch import pid_running, rank_deaths  # noqa: E402

from .conftest import sft_rows, write_jsonl  # noqa: E402

REL = 1e-5
EPOCHS = 20  # 10 examples, batch 3 -> 4 steps per epoch (the last one 1 example: rank 1 runs none), 80 steps


def spec_for(tmp, model, train, name, valid=None, **hp) -> TrainSpec:
    return TrainSpec(job_id=f"ftjob-{name}", model=model, training_file=train, validation_file=valid,
                     method="supervised", hyperparameters={"n_epochs": EPOCHS, "batch_size": 3, "lora_dropout": 0.0,
                                                           **hp},
                     seed=7, suffix="ddp", output_dir=str(tmp / name))


def losses(events: list[dict], key: str = "train_loss") -> dict[int, float]:
    return {e["data"]["step"]: e["data"][key] for e in events if e["type"] == "metrics"}


def close(a: dict[int, float | None], b: dict[int, float | None]) -> bool:
    assert a.keys() == b.keys()
    return all((x is None and y is None) or (x is not None and y is not None and abs(x - y) <= REL * abs(y))
               for x, y in ((a[k], b[k]) for k in a))


def wait_for(proc, events: list[dict], pred, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(pred(e) for e in events):
        assert proc.poll() == "running", (proc.status, proc.error, proc.traceback)
        assert time.monotonic() < deadline, "timed out waiting for an event"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp-data")
    return write_jsonl(d / "train.jsonl", sft_rows(10)), write_jsonl(d / "valid.jsonl", sft_rows(4))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_model, data):
    """The uninterrupted 2-process run every other test compares with."""
    tmp = tmp_path_factory.mktemp("ddp-run")
    events: list[dict] = []
    proc = make_training_process(spec_for(tmp, tiny_model, data[0], "full", data[1]), events.append, processes=2)
    assert isinstance(proc, TorchrunProcess)
    proc.start()
    assert proc.wait(timeout=300) == "succeeded", (proc.error, proc.traceback)
    return proc, events


def test_two_processes_match_one(tmp_path, tiny_model, data, ddp_run):
    proc, events = ddp_run
    single: list[dict] = []
    result = run_training(spec_for(tmp_path, tiny_model, data[0], "single", data[1]), single.append)
    assert close(losses(events), losses(single))
    assert close(losses(events, "valid_loss"), losses(single, "valid_loss"))
    assert any(v is not None for v in losses(events, "valid_loss").values())
    assert proc.result.trained_tokens == result.trained_tokens  # summed over ranks = one process's count
    # rank 0 alone reports: every step once, in order
    assert [e["step"] for e in events if e["type"] == "progress"] == list(range(1, 4 * EPOCHS + 1))
    started = next(e for e in events if e.get("message") == "Fine-tuning job started")
    assert started["data"]["processes"] == 2 and started["data"]["strategy"] == "ddp"
    assert all(e["data"]["peak_memory_mib"] > 0 for e in events if e["type"] == "metrics")
    assert [e["message"] for e in events if e["type"] == "message"][-1] == "The job has successfully completed"
    assert os.path.isfile(os.path.join(proc.result.adapter_dir, "adapter_model.safetensors"))
    assert proc.ctrl is not None and not os.path.exists(proc.ctrl)  # the control directory is cleaned up


def test_ddp_checkpoint_resumes_in_one_process(tmp_path, tiny_model, data, ddp_run):
    """An epoch checkpoint the 2-process run wrote (rank 0) resumes on a different process count."""
    proc, events = ddp_run
    ckpt = next(c["path"] for c in proc.result.checkpoints if c["step"] == 8)
    spec = spec_for(tmp_path, tiny_model, data[0], "resumed1", data[1])
    spec.resume_from = ckpt
    resumed: list[dict] = []
    run_training(spec, resumed.append)
    full = losses(events)
    assert close(losses(resumed), {k: v for k, v in full.items() if k > 8})


def test_pause_then_resume_on_two_processes(tmp_path, tiny_model, data, ddp_run):
    _, full_events = ddp_run
    spec = spec_for(tmp_path, tiny_model, data[0], "paused", data[1])
    events: list[dict] = []
    proc = make_training_process(spec, events.append, processes=2)
    proc.start()
    wait_for(proc, events, lambda e: e["type"] == "progress" and e["step"] >= 3)
    proc.pause()
    assert proc.wait(timeout=60) == "paused", (proc.error, proc.traceback)
    assert proc.exitcode == 0  # every rank exited cleanly
    paused = proc.result
    assert 3 <= paused.step < paused.total_steps
    assert [e for e in events if e["type"] == "paused"][0]["step"] == paused.step
    assert os.path.isfile(os.path.join(paused.resume_checkpoint, "optimizer.pt"))

    spec.resume_from = paused.resume_checkpoint
    events2: list[dict] = []
    proc2 = make_training_process(spec, events2.append, processes=2)
    proc2.start()
    assert proc2.wait(timeout=300) == "succeeded", (proc2.error, proc2.traceback)
    assert f"Resuming from checkpoint at step {paused.step}" in [e.get("message") for e in events2]
    full = losses(full_events)
    assert close(losses(events2), {k: v for k, v in full.items() if k > paused.step})
    assert close(losses(events), {k: v for k, v in full.items() if k <= paused.step})


def test_cancel_ends_every_rank(tmp_path, tiny_model, data):
    events: list[dict] = []
    proc = make_training_process(spec_for(tmp_path, tiny_model, data[0], "cancel", n_epochs=50), events.append,
                                 processes=2)
    proc.start()
    wait_for(proc, events, lambda e: e["type"] == "progress")
    pids = proc.rank_pids()
    assert sorted(pids) == [0, 1] and all(pid_running(p) for p in pids.values())
    t0 = time.monotonic()
    proc.cancel(timeout=10)
    assert time.monotonic() - t0 < 15
    assert proc.status == "cancelled" and proc.poll() == "cancelled"
    assert not proc.is_alive()
    assert not any(pid_running(p) for p in pids.values())
    assert proc.result is None


def test_killed_rank_fails_the_job(tmp_path, tiny_model, data):
    events: list[dict] = []
    proc = make_training_process(spec_for(tmp_path, tiny_model, data[0], "killed", n_epochs=50), events.append,
                                 processes=2)
    proc.start()
    wait_for(proc, events, lambda e: e["type"] == "progress" and e["step"] >= 2)
    pids = proc.rank_pids()
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.monotonic()
    assert proc.wait(timeout=60) == "failed"
    assert time.monotonic() - t0 < 30  # torchrun's agent stopped rank 0: no hang on the lost peer
    assert proc.error == {"code": "training_error", "param": None,
                          "message": "training process rank 1 died unexpectedly (signal 9)"}
    assert events[-1] == {"type": "message", "level": "error", "message": proc.error["message"]}
    assert not any(pid_running(p) for p in pids.values())
    assert proc.traceback  # torchrun's own report, for the gateway's log


def report(*failures: tuple[int, int]) -> str:
    """torchrun's failure report (torch/distributed/elastic/multiprocessing/errors), as it prints it."""
    blocks = [f"[{i}]:\n  time      : 2026-12-02_06:52:54\n  host      : box\n  rank      : {rank} (local_rank: {rank})"
              f"\n  exitcode  : {code} (pid: {100 + rank})\n  error_file: <N/A>" for i, (rank, code) in enumerate(failures)]
    return "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n" + "\n".join(blocks)


def test_the_killed_rank_is_the_cause_not_the_ranks_torchrun_stopped():
    """torchrun stops the survivors with SIGTERM and may list one of them first (seen on CI: the job failed
    with "rank 0 died (signal 15)" when rank 1 had been SIGKILLed)."""
    assert rank_deaths(report((0, -15), (1, -9)), set()) == [(1, -9), (0, -15)]
    assert rank_deaths(report((1, -9), (0, -15)), set()) == [(1, -9), (0, -15)]
    assert rank_deaths(report((0, -15), (1, -15)), set()) == [(0, -15), (1, -15)]  # the group was stopped
    assert rank_deaths(report((0, -15), (1, -9)), {1}) == [(0, -15)]  # rank 1 wrote its own error
    assert rank_deaths(report((0, 1)), set()) == []  # an exit code, not a signal


def test_rank_error_is_the_job_error(tmp_path, tiny_model):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}])
    events: list[dict] = []
    proc = make_training_process(spec_for(tmp_path, tiny_model, bad, "bad"), events.append, processes=2)
    proc.start()
    assert proc.wait(timeout=120) == "failed"
    assert proc.error == {"code": "invalid_training_file", "param": "training_file",
                          "message": "Line 1: messages has no assistant message with weight 1 to train on"}
    assert events[0]["message"] == "Validating training file: bad.jsonl"
    assert events[-1]["level"] == "error"
