"""Engine of tunegate's ``local`` provider: real LoRA fine-tuning (supervised and DPO) in a child process.

Importing this package is cheap (no torch); torch/transformers/peft are imported by the engine only.
See README.md in this directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .launch import TorchrunProcess, make_training_process
from .process import TrainingProcess
from .runtime import RuntimeOptions
from .spec import (
    BASE_LEARNING_RATE,
    TrainingError,
    TrainResult,
    TrainSpec,
    fine_tuned_model_name,
    resolve_hyperparameters,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "BASE_LEARNING_RATE",
    "TrainResult",
    "TrainSpec",
    "RuntimeOptions",
    "TorchrunProcess",
    "TrainingError",
    "TrainingProcess",
    "build_tiny_model",
    "fine_tuned_model_name",
    "make_training_process",
    "resolve_hyperparameters",
    "run_training",
]


def run_training(
    spec: TrainSpec, emit: Callable[[dict[str, Any]], None], should_stop: Callable[[], bool] | None = None
) -> TrainResult:
    """Run a job in the current process; see ``tunegate.trainer.engine.run_training``."""
    from .engine import run_training as _run

    return _run(spec, emit, should_stop)


def build_tiny_model(path: str, **kwargs: Any) -> str:
    """Write a tiny random causal LM + offline tokenizer to ``path``; see ``tunegate.trainer.tiny``."""
    from .tiny import build_tiny_model as _build

    return _build(path, **kwargs)
