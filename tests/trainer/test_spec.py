"""Hyperparameter rules and naming: pure Python, no torch needed."""

from __future__ import annotations

import pytest

from tunegate.trainer.spec import (
    BASE_LEARNING_RATE,
    TrainingError,
    TrainResult,
    TrainSpec,
    auto_batch_size,
    auto_n_epochs,
    fine_tuned_model_name,
    resolve_hyperparameters,
)


def test_auto_rules():
    assert auto_n_epochs(10) == 10  # ceil(100 / 10)
    assert auto_n_epochs(3) == 25  # capped
    assert auto_n_epochs(50) == 3
    assert auto_n_epochs(20_000) == 1
    assert auto_batch_size(10) == 1
    assert auto_batch_size(64) == 2
    assert auto_batch_size(10_000) == 8


def test_resolve_auto_and_explicit():
    hp = resolve_hyperparameters({"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}, 100, "supervised")
    assert hp["n_epochs"] == 3 and hp["batch_size"] == 3
    assert hp["learning_rate_multiplier"] == 1.0
    assert hp["learning_rate"] == BASE_LEARNING_RATE["supervised"]
    assert "beta" not in hp
    hp = resolve_hyperparameters({"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5, "beta": "auto"}, 10, "dpo")
    assert (hp["n_epochs"], hp["batch_size"], hp["beta"]) == (2, 4, 0.1)
    assert hp["learning_rate"] == pytest.approx(0.5 * BASE_LEARNING_RATE["dpo"])
    assert resolve_hyperparameters({}, 10, "supervised")["lora_r"] == 8


@pytest.mark.parametrize(
    "hp,param",
    [
        ({"n_epochs": 0}, "hyperparameters.n_epochs"),
        ({"n_epochs": 1.5}, "hyperparameters.n_epochs"),
        ({"batch_size": "big"}, "hyperparameters.batch_size"),
        ({"learning_rate_multiplier": 0}, "hyperparameters.learning_rate_multiplier"),
        ({"beta": 0.2}, "hyperparameters.beta"),  # beta on supervised
        ({"warmup": 3}, "hyperparameters.warmup"),
    ],
)
def test_resolve_rejects(hp, param):
    with pytest.raises(TrainingError) as ei:
        resolve_hyperparameters(hp, 10, "supervised")
    assert ei.value.code == "invalid_hyperparameters"
    assert ei.value.to_dict()["param"] == param


def test_unknown_method():
    with pytest.raises(TrainingError) as ei:
        resolve_hyperparameters({}, 10, "reinforcement")
    assert ei.value.code == "invalid_method"


def test_fine_tuned_model_name():
    assert fine_tuned_model_name("/models/My Model/", "v1", "ftjob-1") == "ft:My-Model:v1:ftjob-1"
    assert fine_tuned_model_name("Qwen/Qwen2.5-0.5B-Instruct", None, "ftjob-2") == "ft:Qwen--Qwen2.5-0.5B-Instruct::ftjob-2"
    assert fine_tuned_model_name("m", "a:b", "j").count(":") == 3


def test_spec_and_result_roundtrip():
    spec = TrainSpec("j", "m", "t.jsonl", None, "supervised", {}, 1, None, "/tmp/o")
    assert TrainSpec.from_dict(spec.to_dict()) == spec
    res = TrainResult("ft:m::j", "/a", "/m.csv", 10)
    assert TrainResult.from_dict(res.to_dict()) == res
