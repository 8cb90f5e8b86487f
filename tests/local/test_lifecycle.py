"""The `local` provider end to end: the official `openai` SDK against a real gateway that trains the tiny
model in a child process."""

from __future__ import annotations

import csv
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.local.conftest import wait_until

pytest.importorskip("torch")
pytest.importorskip("peft")


def events_of(sdk: Any, job_id: str) -> list[Any]:
    """Every event, oldest first, walking the pages with the SDK's auto-pagination."""
    return list(reversed(list(sdk.fine_tuning.jobs.list_events(job_id, limit=7))))


def test_full_lifecycle(sdk: Any, gateway: Any, training_file: str, tiny_model: str, tmp_path: Path) -> None:
    job = sdk.fine_tuning.jobs.create(
        model=tiny_model, training_file=training_file, suffix="quiz", seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10}}},
        metadata={"team": "demo"})
    assert job.status == "validating_files" and job.id.startswith("ftjob-")
    assert job.seed == 7 and job.model == tiny_model and job.training_file == training_file

    seen: list[str] = []

    def done() -> Any:
        current = sdk.fine_tuning.jobs.retrieve(job.id)
        if not seen or seen[-1] != current.status:
            seen.append(current.status)
        return current if current.status in ("succeeded", "failed", "cancelled") else None

    final = wait_until(done, timeout=90, interval=0.05)
    assert final.status == "succeeded", final.error
    order = ["validating_files", "queued", "running", "succeeded"]
    assert seen == sorted(seen, key=order.index) and seen[-1] == "succeeded" and "running" in seen
    assert final.fine_tuned_model == f"ft:tiny-llama:quiz:{job.id}"
    assert final.hyperparameters.n_epochs == 3 and final.hyperparameters.batch_size == 4
    assert final.hyperparameters.learning_rate_multiplier == 10
    assert final.method.supervised.hyperparameters.n_epochs == 3
    assert final.trained_tokens and final.trained_tokens > 0
    assert final.finished_at >= final.created_at and final.error is None
    assert final.metadata == {"team": "demo"}

    # Events: newest first on the wire; 16 examples / batch 4 × 3 epochs = 12 metrics events.
    first_page = sdk.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(first_page.data) == 3 and first_page.has_more
    events = events_of(sdk, job.id)
    assert [e.id for e in events] == sorted({e.id for e in events}, key=lambda i: int(i.split("-")[-1]))
    messages = [e.message for e in events]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert "Files validated, moving job to queued state" in messages
    assert "Fine-tuning job started" in messages and "The job has successfully completed" in messages
    metrics = [e for e in events if e.type == "metrics"]
    assert [m.data["step"] for m in metrics] == list(range(1, 13))
    assert metrics[-1].data["train_loss"] < metrics[0].data["train_loss"] * 0.8  # it learns

    # Checkpoints: one per epoch, newest first, each with OpenAI's metrics.
    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(job.id, limit=2))
    assert [c.step_number for c in checkpoints] == [12, 8, 4]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"ft:tiny-llama:quiz:{job.id}:ckpt-step-12"
    assert checkpoints[0].metrics.train_loss == pytest.approx(metrics[-1].data["train_loss"])

    # Result files: the metrics CSV and the adapter as a tar, both downloadable managed files.
    assert len(final.result_files) == 2
    infos = {sdk.files.retrieve(f).filename: sdk.files.retrieve(f) for f in final.result_files}
    csv_info = infos[f"{job.id}-step_metrics.csv"]
    tar_info = infos[f"{job.id}-adapter.tar"]
    assert csv_info.purpose == "fine-tune-results"
    rows = list(csv.reader(io.StringIO(sdk.files.content(csv_info.id).text)))
    assert rows[0] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert len(rows) == 13
    archive = sdk.files.content(tar_info.id).content
    assert len(archive) == tar_info.bytes
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(tar.getnames())
        tar.extractall(tmp_path, filter="data")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(tmp_path / "adapter"))
    assert any("lora_A" in name for name, _ in model.named_parameters())

    # The job is listed, and the child is gone.
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=5)] == [job.id]
    assert gateway.app.state.local_jobs.running == {}
    assert os.path.isdir(gateway.settings.data_dir / "local" / "jobs" / job.id)


def test_bad_model_fails_with_model_not_found(sdk: Any, training_file: str) -> None:
    jobs = [sdk.fine_tuning.jobs.create(model=m, training_file=training_file)
            for m in ("/nonexistent/model-dir", "no-such-org/no-such-model")]
    for job in jobs:
        final = wait_until(lambda j=job: (r := sdk.fine_tuning.jobs.retrieve(j.id)).status == "failed" and r)
        assert final.error.code == "model_not_found" and final.error.param == "model"
        assert job.model in final.error.message
        assert final.finished_at is not None and final.fine_tuned_model is None
        assert sdk.fine_tuning.jobs.list_events(job.id, limit=1).data[0].level == "error"


def test_create_refuses_what_it_cannot_map(sdk: Any, training_file: str, tiny_model: str) -> None:
    import openai

    cases = [
        (dict(hyperparameters={"n_epochs": 0}), "hyperparameters.n_epochs"),
        (dict(hyperparameters={"warmup": 3}), "hyperparameters.warmup"),
        (dict(method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 999}}}),
         "method.supervised.hyperparameters.batch_size"),
        (dict(method={"type": "reinforcement", "reinforcement": {"grader": {"type": "string_check"}}}),
         "method.type"),
        (dict(integrations=[{"type": "wandb", "wandb": {"project": "x"}}]), "integrations"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            sdk.fine_tuning.jobs.create(model=tiny_model, training_file=training_file, **extra)
        assert info.value.body["param"] == param, extra
    with pytest.raises(openai.BadRequestError) as info:
        sdk.fine_tuning.jobs.create(model=tiny_model, training_file="file-not-here")
    assert info.value.body["param"] == "training_file" and info.value.body["code"] == "file_not_found"
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("ftjob-000000000000000000000000")
