"""Hypothesis properties: valid examples pass; any single corruption is caught on its line."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from datatest_util import validate_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
NAME = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)


@st.composite
def chat_examples(draw: st.DrawFn) -> dict[str, Any]:
    msgs: list[dict[str, Any]] = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(TEXT)})
    for _ in range(draw(st.integers(1, 4))):
        user: dict[str, Any] = {"role": "user", "content": draw(TEXT)}
        if draw(st.booleans()):
            user["name"] = draw(NAME)
        msgs.append(user)
        asst: dict[str, Any] = {"role": "assistant", "content": draw(TEXT)}
        w = draw(st.sampled_from([None, 0, 1, 0.0, 1.0]))
        if w is not None:
            asst["weight"] = w
        if draw(st.integers(0, 5)) == 0:
            fn = draw(NAME)
            call_id = "call_" + draw(NAME)
            asst["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": fn, "arguments": orjson.dumps({"x": draw(TEXT)}).decode()},
                }
            ]
            if draw(st.booleans()):
                asst["content"] = None
            msgs.append(asst)
            msgs.append({"role": "tool", "tool_call_id": call_id, "content": draw(TEXT)})
            asst = {"role": "assistant", "content": draw(TEXT)}
        msgs.append(asst)
    ex: dict[str, Any] = {"messages": msgs}
    if draw(st.booleans()):
        ex["tools"] = [
            {"type": "function", "function": {"name": draw(NAME), "parameters": {"type": "object"}}}
        ]
    return ex


@st.composite
def dpo_examples(draw: st.DrawFn) -> dict[str, Any]:
    msgs = [{"role": "system", "content": draw(TEXT)}, {"role": "user", "content": draw(TEXT)}]
    return {
        "input": {"messages": msgs},
        "preferred_output": [{"role": "assistant", "content": draw(TEXT)}],
        "non_preferred_output": [{"role": "assistant", "content": draw(TEXT)}],
    }


def _lines(objs: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(o) for o in objs]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(chat_examples(), min_size=10, max_size=14))
def test_valid_chat_always_passes(examples: list[dict[str, Any]]) -> None:
    report = validate_bytes(b"\n".join(_lines(examples)) + b"\n", chunk=7)
    assert report.ok, report.summary(10)
    assert report.stats["examples"] == len(examples)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(dpo_examples(), min_size=10, max_size=12))
def test_valid_dpo_always_passes(examples: list[dict[str, Any]]) -> None:
    report = validate_bytes(b"\n".join(_lines(examples)), method="dpo")
    assert report.ok and not report.warnings, report.summary(10)


def _corrupt_object(ex: dict[str, Any], kind: str, data: st.DataObject) -> dict[str, Any] | bytes:
    ex = copy.deepcopy(ex)
    msgs = ex["messages"]
    i = data.draw(st.integers(0, len(msgs) - 1))
    m = msgs[i]
    if kind == "drop_role":
        m.pop("role")
    elif kind == "bad_role":
        m["role"] = data.draw(
            st.text(max_size=10).filter(
                lambda r: r not in {"system", "user", "assistant", "tool", "function"}
            )
        )
    elif kind == "bad_content":
        if m.get("role") == "assistant" and m.get("tool_calls"):
            m.pop("tool_calls")
        m["content"] = data.draw(st.sampled_from(["", None, 0, 1.5, {}, [], True]))
    elif kind == "unknown_key":
        m[data.draw(st.sampled_from(["foo", "Role", "contents", "tool_call", "weights"]))] = 1
    elif kind == "bad_weight":
        a = [x for x in msgs if x["role"] == "assistant"][-1]
        a["weight"] = data.draw(st.sampled_from([2, -1, "1", True, False, 0.5, None, [0]]))
    elif kind == "weight_elsewhere":
        u = [x for x in msgs if x["role"] == "user"][0]
        u["weight"] = data.draw(st.sampled_from([0, 1]))
    elif kind == "no_assistant":
        ex["messages"] = [x for x in msgs if x["role"] in ("system", "user")]
    elif kind == "messages_type":
        ex["messages"] = data.draw(st.sampled_from([None, "x", 1, {}, []]))
    elif kind == "not_object":
        return orjson.dumps(data.draw(st.sampled_from([[], 1, "x", None, [ex]])))
    return ex


CORRUPTIONS = [
    "drop_role",
    "bad_role",
    "bad_content",
    "unknown_key",
    "bad_weight",
    "weight_elsewhere",
    "no_assistant",
    "messages_type",
    "not_object",
    "truncate",
    "bad_utf8",
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(chat_examples(), min_size=10, max_size=12), st.sampled_from(CORRUPTIONS), st.data())
def test_any_single_corruption_is_caught(
    examples: list[dict[str, Any]], kind: str, data: st.DataObject
) -> None:
    lines = _lines(examples)
    k = data.draw(st.integers(0, len(lines) - 1))
    if kind == "truncate":
        bad = lines[k][: data.draw(st.integers(1, len(lines[k]) - 1))]
    elif kind == "bad_utf8":
        pos = data.draw(st.integers(0, len(lines[k])))
        bad = (
            lines[k][:pos]
            + data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"]))
            + lines[k][pos:]
        )
    else:
        out = _corrupt_object(examples[k], kind, data)
        bad = out if isinstance(out, bytes) else orjson.dumps(out)
    lines[k] = bad
    report = validate_bytes(b"\n".join(lines) + b"\n", chunk=data.draw(st.integers(1, 4096)))
    assert not report.ok
    assert any(p.line == k + 1 for p in report.errors), (kind, bad, report.summary(10))
    assert all(p.line in (k + 1, None) for p in report.errors), report.summary(10)
