"""[local_training] settings -> the child's runtime options; GPU-path options that can be checked on CPU."""

from __future__ import annotations

import pytest

from tunegate.config import LocalTraining, Settings
from tunegate.localjobs.scheduler import training_runner
from tunegate.trainer import RuntimeOptions, TorchrunProcess, TrainingProcess, TrainSpec
from tunegate.trainer.runtime import ENV_GRADIENT_CHECKPOINTING, ENV_PRECISION, ENV_QUANTIZATION

from .conftest import sft_rows, write_jsonl


def spec(tmp_path, model="m", train="t.jsonl", **hp) -> TrainSpec:
    return TrainSpec(job_id="ftjob-s", model=model, training_file=train, validation_file=None, method="supervised",
                     hyperparameters={"n_epochs": 1, "batch_size": 2, "lora_dropout": 0.0, **hp}, seed=1, suffix=None,
                     output_dir=str(tmp_path / "out"))


def test_settings_from_toml_and_environment(tmp_path, monkeypatch):
    conf = tmp_path / "tunegate.toml"
    conf.write_text('[local_training]\nprocesses = 2\nprecision = "bf16"\ngradient_checkpointing = true\n')
    s = Settings.load(conf)
    assert s.local_training.processes == 2 and s.local_training.precision == "bf16"
    assert s.local_training.gradient_checkpointing and s.local_training.strategy == "ddp"
    monkeypatch.setenv("TUNEGATE_LOCAL_TRAINING__PROCESSES", "4")
    assert Settings.load(conf).local_training.processes == 4
    assert Settings().local_training.processes == 4 and Settings(_env_file=None).local_training.device == "auto"
    with pytest.raises(ValueError):
        LocalTraining(processes=0)
    with pytest.raises(ValueError):
        LocalTraining(quantization="2bit")  # type: ignore[arg-type]


def test_runner_picks_torchrun_for_several_processes(tmp_path):
    many = training_runner(LocalTraining(processes=2, precision="fp16", quantization="4bit"))(spec(tmp_path), print)
    assert isinstance(many, TorchrunProcess) and many.processes == 2
    assert many.env[ENV_PRECISION] == "fp16" and many.env[ENV_QUANTIZATION] == "4bit"
    assert many.env[ENV_GRADIENT_CHECKPOINTING] == "0"
    one = training_runner(LocalTraining(device="cpu", threads=3))(spec(tmp_path), print)
    assert isinstance(one, TrainingProcess)
    assert RuntimeOptions.from_env(one.env) == RuntimeOptions(device="cpu", threads=3)


def test_runtime_options_round_trip_and_refuse_unknown_values():
    opts = RuntimeOptions(device="cuda:1", threads=2, precision="bf16", gradient_checkpointing=True,
                          quantization="8bit", strategy="fsdp")
    assert RuntimeOptions.from_env(opts.to_env()) == opts
    assert RuntimeOptions.from_env({}) == RuntimeOptions()
    with pytest.raises(ValueError, match="precision"):
        RuntimeOptions.from_env({ENV_PRECISION: "fp8"})


def _losses(events):
    return [e["data"]["train_loss"] for e in events if e["type"] == "metrics"]


def test_gradient_checkpointing_gives_the_same_losses(tmp_path, tiny_model, monkeypatch):
    pytest.importorskip("torch")
    from tunegate.trainer import run_training

    train = write_jsonl(tmp_path / "t.jsonl", sft_rows(6))
    plain: list[dict] = []
    run_training(spec(tmp_path / "a", tiny_model, train, n_epochs=2), plain.append)
    monkeypatch.setenv(ENV_GRADIENT_CHECKPOINTING, "1")
    saved: list[dict] = []
    run_training(spec(tmp_path / "b", tiny_model, train, n_epochs=2), saved.append)
    started = next(e for e in saved if e.get("message") == "Fine-tuning job started")
    assert started["data"]["gradient_checkpointing"] is True
    assert _losses(saved) == pytest.approx(_losses(plain), rel=1e-6)


def test_cpu_trains_in_fp32_and_refuses_quantization(tmp_path, tiny_model, monkeypatch):
    torch = pytest.importorskip("torch")
    from tunegate.trainer import TrainingError, run_training
    from tunegate.trainer.engine import compute_dtype

    assert compute_dtype("cpu", "bf16") == torch.float32 and compute_dtype("cpu", "fp16") == torch.float32
    train = write_jsonl(tmp_path / "t.jsonl", sft_rows(4))
    monkeypatch.setenv("TUNEGATE_TRAINER_DEVICE", "cpu")
    monkeypatch.setenv(ENV_QUANTIZATION, "4bit")
    with pytest.raises(TrainingError) as info:
        run_training(spec(tmp_path, tiny_model, train), lambda e: None)
    assert info.value.code == "training_error" and "CUDA" in info.value.message


def test_fsdp_is_refused_on_cpu_before_joining_a_group(tmp_path, tiny_model, monkeypatch):
    """torch's FSDP needs an accelerator: on CPU the job fails at once with a message that says what to do
    (checked before the process group is joined, so this rank-0 view of a 2-rank group needs no peer)."""
    pytest.importorskip("torch")
    from tunegate.trainer import TrainingError, run_training
    from tunegate.trainer.runtime import ENV_STRATEGY

    train = write_jsonl(tmp_path / "t.jsonl", sft_rows(4))
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"), (ENV_STRATEGY, "fsdp"),
                        ("TUNEGATE_TRAINER_DEVICE", "cpu")):
        monkeypatch.setenv(name, value)
    with pytest.raises(TrainingError) as info:
        run_training(spec(tmp_path, tiny_model, train), lambda e: None)
    assert info.value.message == "strategy 'fsdp' needs CUDA devices; use 'ddp' on CPU"
