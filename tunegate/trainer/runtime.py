"""How a training run uses the machine: device, precision, memory savers, processes. No torch here.

These are operator choices (the gateway's ``[local_training]`` settings), not job hyperparameters: the
launcher passes them to the child as ``$TUNEGATE_TRAINER_*`` variables (the only gateway variables a
training child inherits besides paths and CUDA's own), and the engine reads them back with
``RuntimeOptions.from_env()``. Being plain environment variables, they reach every torchrun rank.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
QUANTIZATIONS = ("none", "4bit", "8bit")
STRATEGIES = ("ddp", "fsdp")

ENV_DEVICE = "TUNEGATE_TRAINER_DEVICE"
ENV_THREADS = "TUNEGATE_TRAINER_THREADS"
ENV_PRECISION = "TUNEGATE_TRAINER_PRECISION"
ENV_GRADIENT_CHECKPOINTING = "TUNEGATE_TRAINER_GRADIENT_CHECKPOINTING"
ENV_QUANTIZATION = "TUNEGATE_TRAINER_QUANTIZATION"
ENV_STRATEGY = "TUNEGATE_TRAINER_STRATEGY"


@dataclass(frozen=True)
class RuntimeOptions:
    device: str | None = None  # None: cuda when there is one, else cpu ("cuda" means cuda:LOCAL_RANK)
    threads: int | None = None  # torch CPU threads per process
    precision: str = "auto"  # auto: bf16 on a CUDA device that has it, else fp32; CPU always trains in fp32
    gradient_checkpointing: bool = False
    quantization: str = "none"  # QLoRA: base weights in 4 or 8 bits (bitsandbytes, CUDA only)
    strategy: str = "ddp"  # with several processes: ddp (replicated model) or fsdp (sharded, CUDA only)

    def __post_init__(self) -> None:
        for name, value, allowed in (("precision", self.precision, PRECISIONS),
                                     ("quantization", self.quantization, QUANTIZATIONS),
                                     ("strategy", self.strategy, STRATEGIES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeOptions:
        env = os.environ if environ is None else environ
        threads = env.get(ENV_THREADS)
        return cls(device=env.get(ENV_DEVICE) or None, threads=int(threads) if threads else None,
                   precision=env.get(ENV_PRECISION) or "auto",
                   gradient_checkpointing=env.get(ENV_GRADIENT_CHECKPOINTING, "") in ("1", "true", "yes"),
                   quantization=env.get(ENV_QUANTIZATION) or "none",
                   strategy=env.get(ENV_STRATEGY) or "ddp")

    def to_env(self) -> dict[str, str]:
        """The variables that make ``from_env`` return these options (unset ones are left out)."""
        env = {ENV_PRECISION: self.precision, ENV_QUANTIZATION: self.quantization, ENV_STRATEGY: self.strategy,
               ENV_GRADIENT_CHECKPOINTING: "1" if self.gradient_checkpointing else "0"}
        if self.device:
            env[ENV_DEVICE] = self.device
        if self.threads:
            env[ENV_THREADS] = str(self.threads)
        return env
