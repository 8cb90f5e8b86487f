"""Shared helpers for the tunegate.data tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson

from tunegate.data import Validator

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
SPECS = Path(__file__).resolve().parents[2].parent / "shared" / "specs"

CHAT = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
}
TOOL_CHAT = {
    "messages": [
        {"role": "system", "content": "You can look up weather."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 3}'},
        {"role": "assistant", "content": "It is 3 degrees C in Oslo.", "weight": 1},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "parallel_tool_calls": False,
}
MULTI_TURN = {
    "messages": [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "weight": 0},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Great, thanks."},
    ]
}
LEGACY = {"prompt": "2+2=", "completion": " 4"}
DPO = {
    "input": {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Best fruit?"},
        ]
    },
    "preferred_output": [{"role": "assistant", "content": "Apples."}],
    "non_preferred_output": [{"role": "assistant", "content": "I cannot say."}],
}
RFT = {
    "messages": [
        {"role": "developer", "content": "Solve the puzzle."},
        {"role": "user", "content": "What is 6*7?"},
    ],
    "reference_answer": "42",
}

GOOD = {"supervised": CHAT, "dpo": DPO, "reinforcement": RFT}


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def jsonl(objs: list[Any]) -> bytes:
    return b"".join((o if isinstance(o, bytes) else dumps(o)) + b"\n" for o in objs)


def file_with(bad: Any, method: str = "supervised", at: int = 4, n: int = 10, good: Any = None) -> bytes:
    """n good examples with ``bad`` (object or raw bytes) inserted as line ``at``."""
    good = GOOD[method] if good is None else good
    lines: list[Any] = [copy.deepcopy(good) for _ in range(n)]
    lines.insert(at - 1, bad)
    return jsonl(lines)


def validate_bytes(
    data: bytes, method: str = "supervised", model: str | None = None, chunk: int = 1 << 20, **kw: Any
):
    v = Validator(method=method, model=model, **kw)
    for i in range(0, len(data), chunk):
        v.feed(data[i : i + chunk])
    return v.finish()


def problems_at(report, line: int | None) -> list:
    return [p for p in report.errors + report.warnings if p.line == line]
