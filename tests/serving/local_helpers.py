"""Shared pieces of the tests/serving/test_local_*.py files: tiny models built offline, a gateway whose
local model server is started for real (its own process), and small HTTP helpers."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

os.environ.setdefault("TUNEGATE_TRAINER_THREADS", "1")

LOCAL = {"x-portkey-provider": "local"}
ANSWER = "Paris"  # every answer of the training set: the tuned model says it, the base model does not
PROMPTS = ["What is 2+2?", "Say hi", "Name a colour.", "Who are you?", "Tell me a joke.", "Translate hello.",
           "What time is it?", "Write a haiku.", "Is the sky blue?", "Count to three.", "How far is the Moon?",
           "What is your name?", "Pick a number.", "Describe the sea.", "Spell cat.", "What day is today?"]


def build_model(root: Path, name: str, **shape: Any) -> str:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from tunegate.trainer import build_tiny_model

    return build_tiny_model(str(root / name), **shape)


def training_lines() -> bytes:
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": ANSWER}]} for p in PROMPTS]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def server_state(data_dir: Path) -> dict[str, Any]:
    return dict(json.loads((data_dir / "local" / "serving" / "server.json").read_text()))


def server_stats(data_dir: Path) -> dict[str, Any]:
    """The model server's own counters (GET /stats with its token from the state file)."""
    state = server_state(data_dir)
    answer = requests.get(state["url"].removesuffix("/v1") + "/stats",
                          headers={"Authorization": f"Bearer {state['token']}"}, timeout=10)
    answer.raise_for_status()
    return dict(answer.json())


def wait_until(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(interval)
