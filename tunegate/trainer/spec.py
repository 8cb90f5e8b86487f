"""Job description, result and hyperparameter rules. Importing this module does not import torch."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

METHODS = ("supervised", "dpo")

#: learning rate used when ``learning_rate_multiplier`` is 1.0 (LoRA adapters, AdamW).
BASE_LEARNING_RATE: dict[str, float] = {"supervised": 2e-4, "dpo": 5e-5}

#: ``n_epochs="auto"``: 3, raised so that at least MIN_TARGET_EXAMPLES examples are seen, lowered so
#: that at most MAX_TARGET_EXAMPLES are seen, always within [1, MAX_AUTO_EPOCHS].
DEFAULT_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MAX_AUTO_EPOCHS = 25

#: ``batch_size="auto"``: n_examples // AUTO_BATCH_DIVISOR clamped to [1, MAX_AUTO_BATCH_SIZE].
AUTO_BATCH_DIVISOR = 32
MAX_AUTO_BATCH_SIZE = 8

DEFAULT_BETA = 0.1

#: tunegate extensions (not OpenAI names), accepted in ``hyperparameters`` too.
EXTENSION_DEFAULTS: dict[str, Any] = {
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "lora_target_modules": "all-linear",
    "max_seq_length": None,  # None -> min(model's max positions, 2048)
}

MAX_TARGET_MODULES = 64
_MODULE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

_LIMITS = {
    "n_epochs": (1, 50),
    "batch_size": (1, 256),
    "learning_rate_multiplier": (0.0, 100.0),
    "beta": (0.0, 2.0),
    "lora_r": (1, 1024),
    "lora_alpha": (1, 4096),
    "lora_dropout": (0.0, 0.9),
    "max_seq_length": (8, 1_000_000),
}


class TrainingError(Exception):
    """A failure with an OpenAI-style error object: ``{"code", "message", "param"}``.

    Codes used: ``invalid_training_file``, ``invalid_validation_file``, ``invalid_hyperparameters``,
    ``invalid_method``, ``model_not_found``, ``invalid_checkpoint``, ``training_error``.
    """

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}


@dataclass
class TrainSpec:
    job_id: str
    model: str  # HF model id (local cache only, offline) or a local model directory
    training_file: str  # OpenAI-format JSONL
    validation_file: str | None
    method: str  # "supervised" | "dpo"
    hyperparameters: dict[str, Any]  # n_epochs, batch_size, learning_rate_multiplier (+ beta); "auto" ok
    seed: int
    suffix: str | None
    output_dir: str  # everything for this job goes here
    resume_from: str | None = None  # checkpoint dir to resume from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSpec:
        return cls(**d)


@dataclass
class TrainResult:
    fine_tuned_model: str  # "ft:{base}:{suffix}:{job_id}"
    adapter_dir: str  # final adapter (or, when paused, the pause checkpoint)
    metrics_csv: str  # step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy
    trained_tokens: int  # non-padding tokens actually run through training forward passes
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # the "checkpoint" events' payloads
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # resolved numbers
    status: str = "succeeded"  # "succeeded" | "paused"
    step: int = 0
    total_steps: int = 0
    resume_checkpoint: str | None = None  # set when paused: pass as TrainSpec.resume_from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainResult:
        return cls(**d)


def _is_auto(v: Any) -> bool:
    return v is None or v == "auto"


def _number(name: str, value: Any, integer: bool) -> float | int:
    # A JSON number only, as OpenAI takes it: no booleans, and no strings ("1000", " 12 ", "1_0" all pass
    # float()), which would also slip past the operator's ceilings (``localjobs.limits.check_ceilings``).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TrainingError("invalid_hyperparameters", f"{name} must be a number or 'auto', got {str(value)[:40]!r}",
                            f"hyperparameters.{name}")
    try:
        num = float(value)
    except (OverflowError, ValueError):  # an int past a double's range
        raise TrainingError(
            "invalid_hyperparameters", f"{name} is out of range {_LIMITS[name]}", f"hyperparameters.{name}"
        ) from None
    if integer:
        if not num.is_integer():
            raise TrainingError("invalid_hyperparameters", f"{name} must be an integer", f"hyperparameters.{name}")
        num = int(num)
    lo, hi = _LIMITS[name]
    if name in ("learning_rate_multiplier", "beta"):
        ok = lo < num <= hi
    else:
        ok = lo <= num <= hi
    if not ok or (isinstance(num, float) and not math.isfinite(num)):
        raise TrainingError(
            "invalid_hyperparameters", f"{name}={value!r} is out of range ({lo}, {hi}]", f"hyperparameters.{name}"
        )
    return num


def auto_n_epochs(n_examples: int) -> int:
    n = max(1, n_examples)
    epochs = DEFAULT_EPOCHS
    if n * epochs < MIN_TARGET_EXAMPLES:
        epochs = math.ceil(MIN_TARGET_EXAMPLES / n)
    elif n * epochs > MAX_TARGET_EXAMPLES:
        epochs = MAX_TARGET_EXAMPLES // n
    return max(1, min(MAX_AUTO_EPOCHS, epochs))


def auto_batch_size(n_examples: int) -> int:
    return max(1, min(MAX_AUTO_BATCH_SIZE, n_examples // AUTO_BATCH_DIVISOR))


def resolve_hyperparameters(spec_hparams: dict[str, Any] | None, n_examples: int, method: str) -> dict[str, Any]:
    """Turn OpenAI-style hyperparameters (values may be ``"auto"``/missing) into concrete numbers.

    Rules:
      * ``n_epochs``: ``auto_n_epochs(n)`` = 3, raised to ceil(100/n) for small sets, lowered to 25000//n
        for large ones, clamped to [1, 25].
      * ``batch_size``: ``auto_batch_size(n)`` = clamp(n // 32, 1, 8).
      * ``learning_rate_multiplier``: 1.0; the resolved dict also carries ``learning_rate`` =
        multiplier × ``BASE_LEARNING_RATE[method]`` (2e-4 supervised, 5e-5 dpo).
      * ``beta`` (dpo only): 0.1.
      * tunegate extensions ``lora_r`` (8), ``lora_alpha`` (16), ``lora_dropout`` (0.05),
        ``lora_target_modules`` ("all-linear"), ``max_seq_length`` (None = model limit, at most 2048).
    Unknown keys raise ``TrainingError("invalid_hyperparameters")``.
    """
    if method not in METHODS:
        raise TrainingError("invalid_method", f"method must be one of {METHODS}, got {method!r}", "method")
    hp = dict(spec_hparams or {})
    known = {"n_epochs", "batch_size", "learning_rate_multiplier", "beta", *EXTENSION_DEFAULTS}
    unknown = sorted(set(hp) - known)
    if unknown:
        raise TrainingError(
            "invalid_hyperparameters", f"unknown hyperparameter(s): {', '.join(unknown)}", f"hyperparameters.{unknown[0]}"
        )
    if method != "dpo" and not _is_auto(hp.get("beta")):
        raise TrainingError("invalid_hyperparameters", "beta is only valid for method 'dpo'", "hyperparameters.beta")

    out: dict[str, Any] = {}
    v = hp.get("n_epochs")
    out["n_epochs"] = auto_n_epochs(n_examples) if _is_auto(v) else _number("n_epochs", v, True)
    v = hp.get("batch_size")
    out["batch_size"] = auto_batch_size(n_examples) if _is_auto(v) else _number("batch_size", v, True)
    v = hp.get("learning_rate_multiplier")
    mult = 1.0 if _is_auto(v) else float(_number("learning_rate_multiplier", v, False))
    out["learning_rate_multiplier"] = mult
    out["learning_rate"] = mult * BASE_LEARNING_RATE[method]
    if method == "dpo":
        v = hp.get("beta")
        out["beta"] = DEFAULT_BETA if _is_auto(v) else float(_number("beta", v, False))
    for key, default in EXTENSION_DEFAULTS.items():
        v = hp.get(key)
        if _is_auto(v):
            out[key] = default
        elif key == "lora_target_modules":
            out[key] = _target_modules(v)
        else:
            out[key] = _number(key, v, key in ("lora_r", "lora_alpha", "max_seq_length"))
    return out


def _target_modules(value: Any) -> str | list[str]:
    """``"all-linear"``, one module name, or a list of up to MAX_TARGET_MODULES names. peft reads a string
    as a regular expression (``re.fullmatch`` over every module name), so a pattern such as ``(a+)+$``
    would pin the training process: only plain names are taken (no regex syntax but ``.``)."""
    names = [value] if isinstance(value, str) else value
    if not (isinstance(names, list) and 1 <= len(names) <= MAX_TARGET_MODULES
            and all(isinstance(x, str) and _MODULE_NAME.fullmatch(x) for x in names)):
        raise TrainingError(
            "invalid_hyperparameters", f"lora_target_modules must be 'all-linear', a module name or a list of up to "
            f"{MAX_TARGET_MODULES} module names (letters, digits, '_', '-', '.'; at most 128 characters each)",
            "hyperparameters.lora_target_modules",
        )
    return value if isinstance(value, str) else list(names)


_SANITISE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitise_model_name(model: str) -> str:
    """``/path/to/My Model/`` -> ``My-Model``; ``org/name`` -> ``org--name``; no ``:`` ever."""
    m = model.rstrip("/\\")
    if m.startswith(("/", ".", "~")) or "\\" in m or m.count("/") > 1:
        m = re.split(r"[/\\]", m)[-1]
    m = m.replace("/", "--")
    return _SANITISE.sub("-", m).strip("-") or "model"


def fine_tuned_model_name(model: str, suffix: str | None, job_id: str) -> str:
    """OpenAI-shaped id: ``ft:{base}:{suffix}:{job_id}``; with no suffix the field is empty (``ft:base::job``)."""
    sfx = _SANITISE.sub("-", suffix).strip("-") if suffix else ""
    return f"ft:{sanitise_model_name(model)}:{sfx}:{job_id}"
