"""Training children get an allow-listed environment, never the gateway's secrets (finding 22): the
environment a real child process was started with, read from /proc while it runs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tunegate.trainer.process import TrainingProcess, child_environment
from tunegate.trainer.spec import TrainSpec

CANARIES = {"AWS_SECRET_ACCESS_KEY": "canary-aws", "TUNEGATE_SECRET_KEY": "canary-box",
            "TUNEGATE_DATABASE_URL": "postgresql://u:canary-pw@db/x", "OPENAI_API_KEY": "canary-openai",
            "GOOGLE_APPLICATION_CREDENTIALS": "/canary.json", "HF_TOKEN": "canary-hf",
            "TUNEGATE_METRICS_TOKEN": "canary-metrics"}
KEPT = {"HF_HOME": "/tmp/hf-home", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8",
        "TUNEGATE_TRAINER_THREADS": "1"}


def _environ(pid: int) -> bytes:
    """The environment ``pid`` was exec'd with: what the child could ever read. Empty for an instant
    while the kernel is still setting up the new program's stack, so read until it is there."""
    deadline = time.monotonic() + 10
    while not (raw := Path(f"/proc/{pid}/environ").read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return raw


def test_the_allow_list() -> None:
    env = child_environment({**CANARIES, **KEPT, "PATH": "/usr/bin", "HOME": "/root", "RANDOM_APP_SETTING": "x"})
    assert env == {**KEPT, "PATH": "/usr/bin", "HOME": "/root"}


def test_a_training_child_starts_without_the_gateways_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**CANARIES, **KEPT}.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "t.jsonl").write_text('{"messages": [{"role": "user", "content": "a"}, '
                                      '{"role": "assistant", "content": "b"}]}\n')
    spec = TrainSpec(job_id="ftjob-env", model=str(tmp_path / "no-model"), training_file=str(tmp_path / "t.jsonl"),
                     validation_file=None, method="supervised", hyperparameters={}, seed=1, suffix=None,
                     output_dir=str(tmp_path / "out"))
    proc = TrainingProcess(spec, on_event=lambda ev: None)
    proc.start()
    try:
        assert proc.pid is not None
        raw = _environ(proc.pid)
    finally:
        proc.cancel()
    started_with = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    for name, value in CANARIES.items():
        assert name not in started_with and value not in raw.decode(), name
    for name, value in KEPT.items():
        assert started_with.get(name) == value, name
    assert started_with.get("PATH") == os.environ["PATH"]
    assert proc.status == "cancelled"
