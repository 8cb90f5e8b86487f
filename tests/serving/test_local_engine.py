"""Pieces of the local model server's engine that need no model: tool-call parsing, stop sequences held
back while streaming, and the adapter gate (one adapter at a time, in arrival order)."""

from __future__ import annotations

import threading
import time

from tunegate.serving.local.engine import _first_stop, _Gate, _held_back, parse_tool_calls


def test_tool_calls_are_parsed_from_the_answer() -> None:
    text, calls = parse_tool_calls('Sure.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
                                   '</tool_call>')
    assert text == "Sure."
    assert calls[0]["type"] == "function" and calls[0]["function"] == {"name": "get_weather",
                                                                       "arguments": '{"city": "Paris"}'}
    assert calls[0]["id"].startswith("call_")
    assert parse_tool_calls("no calls here") == ("no calls here", [])
    assert parse_tool_calls("<tool_call>not json</tool_call>") == ("<tool_call>not json</tool_call>", [])


def test_stop_sequences() -> None:
    assert _first_stop("Hello STOP there", ["STOP"], 0) == 6
    assert _first_stop("Hello", ["STOP"], 0) is None
    assert _held_back("Hello ST", ["STOP"]) == 2  # could still become STOP: not sent yet
    assert _held_back("Hello", ["STOP"]) == 0
    assert _held_back("abc", []) == 0


def test_gate_switches_only_when_idle_and_in_order() -> None:
    gate = _Gate()
    switches: list[str | None] = []
    events: list[str] = []
    inside_a = threading.Event()
    release_a = threading.Event()

    def use(mode: str | None, hold: threading.Event | None = None) -> None:
        with gate.use(mode, switches.append):
            events.append(f"in {mode}")
            if hold is not None:
                inside_a.set()
                hold.wait(10)
            events.append(f"out {mode}")

    first = threading.Thread(target=use, args=("a", release_a))
    first.start()
    inside_a.wait(10)
    other = threading.Thread(target=use, args=("b",))
    other.start()
    while not gate.queue:  # b is waiting for the model to be idle
        time.sleep(0.01)
    same = threading.Thread(target=use, args=("a",))
    same.start()  # came after b: waits for b, although the model is on "a" now
    time.sleep(0.2)
    assert events == ["in a"]
    release_a.set()
    for t in (first, other, same):
        t.join(10)
    assert events == ["in a", "out a", "in b", "out b", "in a", "out a"]
    assert switches == ["a", "b", "a"]
