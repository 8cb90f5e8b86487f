"""The OpenAI cookbook's toy chat file (5 lines) from shared/specs."""

from __future__ import annotations

import pytest
from datatest_util import SPECS

from tunegate.data import validate_path

COOKBOOK = SPECS / "openai-cookbook-toy_chat_fine_tuning.jsonl"


@pytest.fixture(scope="module")
def report():
    if not COOKBOOK.exists():
        pytest.skip(f"{COOKBOOK} not present")
    return validate_path(COOKBOOK)


def test_valid_with_a_warning_for_too_few_examples(report) -> None:
    # 5 examples: too few for an OpenAI training file, which the job create checks; the file is valid.
    assert report.ok and not report.errors
    few = [p for p in report.warnings if p.code == "too_few_examples"]
    assert len(few) == 1 and few[0].line is None and "5 example(s)" in few[0].message


def test_exactly_one_missing_system_and_one_missing_user(report) -> None:
    assert report.counts.get("missing_system_message") == 1
    assert report.counts.get("missing_user_message") == 1
    assert [(p.code, p.line) for p in report.warnings] == [
        ("missing_system_message", 3),
        ("missing_user_message", 4),
        ("too_few_examples", None),
    ]


def test_stats_match_the_notebook(report) -> None:
    # The cookbook notebook reports 5 examples, 2..9 messages per example, none over 65,536 tokens.
    s = report.stats
    assert s["examples"] == 5
    assert (s["messages_min"], s["messages_max"]) == (2, 9)
    assert s["messages_mean"] == pytest.approx(19 / 5)
    assert s["assistant_turns_trained"] == 8
    assert s["examples_over_context"] == 0
    # notebook: 26..8032 cl100k tokens per example; the byte heuristic lands in the same range in total
    assert 5000 < s["estimated_tokens"] < 12000


def test_summary_names_lines(report) -> None:
    text = report.summary()
    assert text.startswith("OK")
    assert "line 3" in text and "line 4" in text and "too_few_examples" in text
