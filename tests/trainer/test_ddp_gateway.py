"""A `local` job through the gateway with `[local_training] processes = 2`: the official openai SDK creates
it, the scheduler starts a torchrun group, and the job's events are those of a one-process run (each step
once, from rank 0)."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
openai = pytest.importorskip("openai")

from .conftest import sft_rows, write_jsonl  # noqa: E402


def test_job_on_two_processes_through_the_gateway(tmp_path, tmp_path_factory, tiny_model) -> None:
    from tests.gateway import Gateway

    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(10))
    with Gateway(tmp_path / "data", local_model_roots=[tmp_path_factory.getbasetemp()],
                 local_training={"processes": 2}) as gw:
        sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=60,
                            default_headers={"x-portkey-provider": "local"})
        with open(train, "rb") as fh:
            file_id = sdk.files.create(file=("train.jsonl", fh), purpose="fine-tune").id
        job = sdk.fine_tuning.jobs.create(model=tiny_model, training_file=file_id, seed=3, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}})
        deadline = time.monotonic() + 240
        final: Any = None
        while time.monotonic() < deadline:
            final = sdk.fine_tuning.jobs.retrieve(job.id)
            if final.status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.2)
        assert final.status == "succeeded", final.error
        events = list(reversed(list(sdk.fine_tuning.jobs.list_events(job.id, limit=100))))
        steps = [e.data["step"] for e in events if e.type == "metrics"]
        assert steps == [1, 2, 3, 4, 5, 6]  # 10 examples / batch 4 = 3 steps per epoch, each reported once
        started = next(e for e in events if e.message == "Fine-tuning job started")
        assert started.data["processes"] == 2
        assert final.trained_tokens and final.fine_tuned_model.endswith(job.id)
        assert len(final.result_files) == 2
