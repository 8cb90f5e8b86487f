"""Loss curves from fine-tuning job events (shared by the dashboard and ``tunegate jobs watch``).

OpenAI-shaped providers report training progress as events of ``type: "metrics"`` whose ``data``
holds ``step``, ``train_loss`` and, at evaluation steps, ``valid_loss`` (or ``full_valid_loss``).
Checkpoints carry the same numbers under ``metrics``; they are the fallback when a provider sends no
metrics events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

SPARKS = "▁▂▃▄▅▆▇█"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _point(step: Any, metrics: dict[str, Any]) -> dict[str, Any] | None:
    if isinstance(step, bool) or not isinstance(step, int | float):
        return None
    train = _number(metrics.get("train_loss"))
    valid = _number(metrics.get("valid_loss"))
    if valid is None:
        valid = _number(metrics.get("full_valid_loss"))
    if train is None and valid is None:
        return None
    return {"step": int(step), "train_loss": train, "valid_loss": valid}


def loss_points(events: Iterable[dict[str, Any]], checkpoints: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """``[{"step", "train_loss", "valid_loss"}]`` sorted by step, one per step (the last report of a
    step wins; a missing value is None)."""
    by_step: dict[int, dict[str, Any]] = {}
    for event in events:
        data = event.get("data") if isinstance(event, dict) else None
        if not isinstance(data, dict) or (event.get("type") not in (None, "metrics") and "train_loss" not in data):
            continue
        point = _point(data.get("step"), data)
        if point is not None:
            _merge(by_step, point)
    if not by_step:
        for checkpoint in checkpoints:
            metrics = checkpoint.get("metrics") if isinstance(checkpoint, dict) else None
            if isinstance(metrics, dict):
                point = _point(metrics.get("step", checkpoint.get("step_number")), metrics)
                if point is not None:
                    _merge(by_step, point)
    return [by_step[s] for s in sorted(by_step)]


def _merge(by_step: dict[int, dict[str, Any]], point: dict[str, Any]) -> None:
    old = by_step.get(point["step"])
    if old is None:
        by_step[point["step"]] = point
    else:
        for name in ("train_loss", "valid_loss"):
            if point[name] is not None:
                old[name] = point[name]


def sparkline(values: list[float], width: int = 40) -> str:
    """Unicode block sparkline of the last ``width`` values."""
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low
    if span <= 0:
        return SPARKS[3] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - low) / span * (len(SPARKS) - 1) + 0.5))] for v in values)
