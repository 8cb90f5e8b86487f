"""TrainingProcess: the job in a spawned child process (each test starts 1-2 children, ~4 s each)."""

from __future__ import annotations

import os
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tunegate.trainer import TrainingProcess, TrainSpec  # noqa: E402

from .conftest import write_jsonl  # noqa: E402


def spec_for(tmp_path, model, train, name, **hp) -> TrainSpec:
    return TrainSpec(
        job_id=f"ftjob-{name}",
        model=model,
        training_file=train,
        validation_file=None,
        method="supervised",
        hyperparameters={"n_epochs": 3, "batch_size": 1, **hp},
        seed=5,
        suffix=None,
        output_dir=str(tmp_path / name),
    )


def wait_for(proc: TrainingProcess, events: list[dict], pred, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(pred(e) for e in events):
        assert proc.poll() == "running", (proc.status, proc.error)
        assert time.monotonic() < deadline, "timed out waiting for an event"
        time.sleep(0.02)


def test_cancel_kills_child_promptly(tmp_path, tiny_model, sft_file):
    events: list[dict] = []
    proc = TrainingProcess(spec_for(tmp_path, tiny_model, sft_file, "cancel", n_epochs=50), events.append)
    proc.start()
    wait_for(proc, events, lambda e: e["type"] == "progress")
    pid = proc.pid
    t0 = time.monotonic()
    proc.cancel(timeout=5)
    assert time.monotonic() - t0 < 5
    assert proc.status == "cancelled" and proc.poll() == "cancelled"
    assert not proc.is_alive()
    assert proc.exitcode is not None and proc.exitcode != 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert proc.result is None


def test_pause_then_resume_finishes(tmp_path, tiny_model, sft_file):
    events: list[dict] = []
    spec = spec_for(tmp_path, tiny_model, sft_file, "pause", n_epochs=20)
    proc = TrainingProcess(spec, events.append)
    proc.start()
    wait_for(proc, events, lambda e: e["type"] == "progress" and e["step"] >= 3)
    proc.pause()
    assert proc.wait(timeout=30) == "paused"
    assert not proc.is_alive() and proc.exitcode == 0
    paused = proc.result
    assert paused is not None and 3 <= paused.step < paused.total_steps == 200
    assert os.path.isdir(paused.resume_checkpoint)
    assert any(e["type"] == "paused" for e in events)

    events2: list[dict] = []
    spec.resume_from = paused.resume_checkpoint
    proc2 = TrainingProcess(spec, events2.append)
    proc2.start()
    assert proc2.wait(timeout=90) == "succeeded", proc2.error
    res = proc2.result
    assert res.step == res.total_steps == 200
    steps = [e["step"] for e in events2 if e["type"] == "progress"]
    assert steps == list(range(paused.step + 1, 201))
    msgs = [e["message"] for e in events2 if e["type"] == "message"]
    assert f"Resuming from checkpoint at step {paused.step}" in msgs
    assert msgs[-1] == "The job has successfully completed"
    assert os.path.isfile(os.path.join(res.adapter_dir, "adapter_model.safetensors"))
    assert res.fine_tuned_model == "ft:tiny-llama::ftjob-pause"


def test_bad_training_file_gives_error_dict(tmp_path, tiny_model):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}])
    events: list[dict] = []
    proc = TrainingProcess(spec_for(tmp_path, tiny_model, bad, "bad"), events.append)
    proc.start()
    assert proc.wait(timeout=60) == "failed"
    assert proc.error == {
        "code": "invalid_training_file",
        "message": "Line 1: messages has no assistant message with weight 1 to train on",
        "param": "training_file",
    }
    assert events[0]["message"] == "Validating training file: bad.jsonl"
    assert events[-1]["level"] == "error"
    assert proc.result is None and not proc.is_alive()


def test_model_not_found_in_child(tmp_path, sft_file):
    proc = TrainingProcess(spec_for(tmp_path, str(tmp_path / "missing-model"), sft_file, "nomodel"), lambda e: None)
    proc.start()
    assert proc.wait(timeout=60) == "failed"
    assert proc.error["code"] == "model_not_found"
