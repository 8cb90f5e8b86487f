"""Streaming behaviour, stats, report shape, CLI."""

from __future__ import annotations

import copy
import json
import random

import orjson
import pytest
from datatest_util import CHAT, DPO, LEGACY, MULTI_TURN, TOOL_CHAT, file_with, jsonl, validate_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

from tunegate.data import Validator, text_tokens
from tunegate.data.cli import validate_command
from tunegate.data.tokens import context_window, messages_tokens

MIXED = (
    jsonl([CHAT, TOOL_CHAT, MULTI_TURN] * 4)
    + b'{"messages": [{"role": "user", "content": "caf\xc3\xa9 \xe6\x9d\xb1\xe4\xba\xac"}]}\n'
    + b'{"messages": [{"role": "user", "content": "\xff"}]}\n'
    + b"\n"
    + b"[1]\n"
    + b'{"messages": [{"role": "assistant", "content": "", "weight": 5}]}'
)


def test_byte_by_byte_equals_whole() -> None:
    whole = validate_bytes(MIXED, chunk=len(MIXED))
    tiny = validate_bytes(MIXED, chunk=1)
    assert tiny.to_dict() == whole.to_dict()
    assert whole.error_count >= 5
    assert {p.line for p in whole.errors} >= {14, 15, 16, 17}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(MIXED)), max_size=20))
def test_any_chunking_gives_the_same_report(cuts: list[int]) -> None:
    expected = validate_bytes(MIXED).to_dict()
    points = sorted(set(cuts))
    v = Validator()
    prev = 0
    for c in [*points, len(MIXED)]:
        v.feed(MIXED[prev:c])
        prev = c
    assert v.finish().to_dict() == expected


def test_partial_buffer_only_holds_the_current_line() -> None:
    data = jsonl([CHAT] * 50)
    longest = max(len(x) for x in data.split(b"\n"))
    v = Validator()
    rng = random.Random(0)
    i = 0
    while i < len(data):
        n = rng.randint(1, 97)
        v.feed(data[i : i + n])
        assert len(v._partial) <= longest
        i += n
    assert v.finish().ok


def test_feed_after_finish_raises_and_finish_is_idempotent() -> None:
    v = Validator()
    v.feed(jsonl([CHAT] * 10))
    r = v.finish()
    assert v.finish() is r
    with pytest.raises(RuntimeError):
        v.feed(b"x")


def test_problem_lists_are_capped_but_counted() -> None:
    data = b"oops\n" * 250 + jsonl([CHAT] * 10)
    r = validate_bytes(data)
    assert r.error_count == 250
    assert len(r.errors) == 100
    assert r.counts["invalid_json"] == 250
    assert r.errors[0].line == 1 and r.errors[-1].line == 100
    d = r.to_dict()
    assert d["error_count"] == 250 and len(d["errors"]) == 100
    json.dumps(d)  # plain JSON types only


def test_stats_weights_and_tokens() -> None:
    r = validate_bytes(jsonl([MULTI_TURN] * 10 + [TOOL_CHAT] * 2))
    s = r.stats
    assert s["examples"] == 12
    # MULTI_TURN trains 1 of its 2 assistant turns; TOOL_CHAT trains 2
    assert s["assistant_turns_trained"] == 10 * 1 + 2 * 2
    assert (s["messages_min"], s["messages_max"]) == (5, 5)
    expected = 10 * messages_tokens(MULTI_TURN["messages"])
    assert s["estimated_tokens"] >= expected
    assert s["bytes"] == len(jsonl([MULTI_TURN] * 10 + [TOOL_CHAT] * 2))


def test_dpo_and_legacy_stats() -> None:
    r = validate_bytes(jsonl([DPO] * 10), method="dpo")
    assert r.ok and r.stats["assistant_turns_trained"] == 10 and r.stats["messages_min"] == 3
    r = validate_bytes(jsonl([LEGACY] * 10))
    assert r.ok and r.stats["format"] == "prompt_completion" and r.stats["messages_min"] is None


def test_token_heuristic() -> None:
    assert text_tokens("") == 0
    assert text_tokens("abcd") == 1
    assert text_tokens("abcde") == 2
    assert text_tokens("é") == 1  # 2 bytes
    assert text_tokens("東京東京") == 3  # 12 bytes
    msgs = [{"role": "user", "content": "abcd"}, {"role": "assistant", "content": "abcdabcd", "name": "bob"}]
    assert messages_tokens(msgs) == 3 + (3 + 1) + (3 + 2 + 1 + 1)


def test_context_windows() -> None:
    assert context_window("gpt-4o-mini-2024-07-18") == 65_536
    assert context_window("gpt-4o-2024-08-06") == 65_536
    assert context_window("gpt-3.5-turbo-0125") == 16_385
    assert context_window("gpt-3.5-turbo") == 16_385
    assert context_window("ft:gpt-3.5-turbo-0125:org:x:id") == 16_385
    assert context_window(None) == 65_536
    assert context_window("some-new-model") == 65_536


def test_over_context_depends_on_model() -> None:
    big = copy.deepcopy(CHAT)
    big["messages"][2]["content"] = "word " * 20_000  # ~25k tokens by the heuristic
    data = file_with(big)
    assert validate_bytes(data, model="gpt-4o-mini-2024-07-18").counts.get("example_over_context") is None
    r = validate_bytes(data, model="gpt-3.5-turbo-1106")
    assert r.counts["example_over_context"] == 1 and r.warnings[0].line == 4
    assert r.ok and r.stats["examples_over_context"] == 1


def test_summary_limit() -> None:
    r = validate_bytes(b"oops\n" * 12)
    text = r.summary(limit=3)
    assert text.count("[invalid_json]") == 3
    assert "... and 9 more" in text  # 12 invalid_json (too_few_examples is a warning)


def test_cli(tmp_path, capsys) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl([CHAT] * 10))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(file_with({"messages": []}))
    assert validate_command(str(good)) == 0
    assert "OK" in capsys.readouterr().out
    assert validate_command(str(bad)) == 1
    out = capsys.readouterr().out
    assert "line 4" in out and "empty_messages" in out
    assert validate_command(str(tmp_path / "nope.jsonl")) == 2
    assert "no such file" in capsys.readouterr().err
    assert validate_command(str(bad), as_json=True) == 1
    payload = orjson.loads(capsys.readouterr().out)
    assert (
        payload["ok"] is False
        and payload["errors"][0]["line"] == 4
        and payload["errors"][0]["code"] == "empty_messages"
    )
    assert validate_command(str(good), method="dpo") == 1
    assert validate_command(str(good), method="bogus") == 1
    assert validate_command(str(tmp_path)) == 2
