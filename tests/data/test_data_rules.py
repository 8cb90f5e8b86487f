"""One test per validation rule: exact line number, path and code."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from datatest_util import (
    CHAT,
    DPO,
    GOOD,
    LEGACY,
    MULTI_TURN,
    RFT,
    TOOL_CHAT,
    file_with,
    jsonl,
    validate_bytes,
)

from tunegate.data import RULES, validate_path


def chat(*msgs: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"messages": list(msgs), **top}


SYS = {"role": "system", "content": "s"}
USER = {"role": "user", "content": "u"}
ASST = {"role": "assistant", "content": "a"}


def with_msg(i: int, **changes: Any) -> dict[str, Any]:
    ex = copy.deepcopy(CHAT)
    for k, v in changes.items():
        if v is ...:
            ex["messages"][i].pop(k, None)
        else:
            ex["messages"][i][k] = v
    return ex


def tool_chat(mut) -> dict[str, Any]:
    ex = copy.deepcopy(TOOL_CHAT)
    mut(ex)
    return ex


def dpo(mut) -> dict[str, Any]:
    ex = copy.deepcopy(DPO)
    mut(ex)
    return ex


# (id, code, method, bad line (object or bytes), expected path, severity)
CASES: list[tuple[str, str, str, Any, str, str]] = [
    ("invalid_json", "invalid_json", "supervised", b'{"messages": [', "", "error"),
    ("bom", "invalid_json", "supervised", b"\xef\xbb\xbf" + b'{"messages": []}', "", "error"),
    (
        "invalid_utf8",
        "invalid_utf8",
        "supervised",
        b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
        "",
        "error",
    ),
    ("not_an_object", "not_an_object", "supervised", b"[1, 2, 3]", "", "error"),
    ("empty_line", "empty_line", "supervised", b"", "", "error"),
    ("blank_line", "empty_line", "supervised", b"   \r", "", "error"),
    ("mixed_formats", "mixed_formats", "supervised", LEGACY, "", "error"),
    ("missing_messages", "missing_messages_list", "supervised", {"tools": []}, "messages", "error"),
    ("messages_not_list", "missing_messages_list", "supervised", {"messages": "hi"}, "messages", "error"),
    ("empty_messages", "empty_messages", "supervised", {"messages": []}, "messages", "error"),
    (
        "message_not_object",
        "message_not_object",
        "supervised",
        chat(SYS, "hello", ASST),
        "messages[1]",
        "error",
    ),
    ("missing_role", "message_missing_key", "supervised", with_msg(1, role=...), "messages[1].role", "error"),
    (
        "missing_content",
        "message_missing_key",
        "supervised",
        with_msg(1, content=...),
        "messages[1].content",
        "error",
    ),
    (
        "tool_missing_id",
        "message_missing_key",
        "supervised",
        tool_chat(lambda e: e["messages"][3].pop("tool_call_id")),
        "messages[3].tool_call_id",
        "error",
    ),
    (
        "function_missing_name",
        "message_missing_key",
        "supervised",
        chat(SYS, USER, {"role": "function", "content": "42"}, ASST),
        "messages[2].name",
        "error",
    ),
    (
        "unrecognized_role",
        "unrecognized_role",
        "supervised",
        with_msg(1, role="human"),
        "messages[1].role",
        "error",
    ),
    (
        "unrecognized_key",
        "message_unrecognized_key",
        "supervised",
        with_msg(1, foo=1),
        "messages[1].foo",
        "error",
    ),
    (
        "tool_calls_on_user",
        "message_unrecognized_key",
        "supervised",
        with_msg(1, tool_calls=[]),
        "messages[1].tool_calls",
        "error",
    ),
    (
        "empty_content",
        "missing_content",
        "supervised",
        with_msg(2, content=""),
        "messages[2].content",
        "error",
    ),
    (
        "null_content",
        "missing_content",
        "supervised",
        with_msg(1, content=None),
        "messages[1].content",
        "error",
    ),
    ("int_content", "missing_content", "supervised", with_msg(0, content=5), "messages[0].content", "error"),
    (
        "bad_part",
        "invalid_content_part",
        "supervised",
        with_msg(1, content=[{"type": "audio", "data": "x"}]),
        "messages[1].content[0].type",
        "error",
    ),
    (
        "image_on_assistant",
        "invalid_content_part",
        "supervised",
        with_msg(2, content=[{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]),
        "messages[2].content[0]",
        "error",
    ),
    ("name_not_str", "invalid_field_type", "supervised", with_msg(1, name=7), "messages[1].name", "error"),
    ("no_assistant", "example_missing_assistant_message", "supervised", chat(SYS, USER), "messages", "error"),
    ("weight_2", "invalid_weight", "supervised", with_msg(2, weight=2), "messages[2].weight", "error"),
    ("weight_bool", "invalid_weight", "supervised", with_msg(2, weight=True), "messages[2].weight", "error"),
    (
        "weight_on_user",
        "weight_not_on_assistant",
        "supervised",
        with_msg(1, weight=0),
        "messages[1].weight",
        "error",
    ),
    (
        "tool_calls_not_list",
        "invalid_tool_calls",
        "supervised",
        tool_chat(lambda e: e["messages"][2].update(tool_calls={"id": "x"})),
        "messages[2].tool_calls",
        "error",
    ),
    (
        "tool_call_type",
        "invalid_tool_calls",
        "supervised",
        tool_chat(lambda e: e["messages"][2]["tool_calls"][0].update(type="fn")),
        "messages[2].tool_calls[0].type",
        "error",
    ),
    (
        "arguments_object",
        "invalid_tool_call_arguments",
        "supervised",
        tool_chat(lambda e: e["messages"][2]["tool_calls"][0]["function"].update(arguments={"city": "Oslo"})),
        "messages[2].tool_calls[0].function.arguments",
        "error",
    ),
    (
        "arguments_not_json",
        "invalid_tool_call_arguments",
        "supervised",
        tool_chat(lambda e: e["messages"][2]["tool_calls"][0]["function"].update(arguments="{city: Oslo")),
        "messages[2].tool_calls[0].function.arguments",
        "error",
    ),
    (
        "function_call_args",
        "invalid_function_call",
        "supervised",
        chat(SYS, USER, {"role": "assistant", "function_call": {"name": "f", "arguments": {}}}),
        "messages[2].function_call.arguments",
        "error",
    ),
    (
        "tools_not_list",
        "invalid_tools",
        "supervised",
        tool_chat(lambda e: e.update(tools={})),
        "tools",
        "error",
    ),
    (
        "tool_bad_name",
        "invalid_tools",
        "supervised",
        tool_chat(lambda e: e["tools"][0]["function"].update(name="get weather!")),
        "tools[0].function.name",
        "error",
    ),
    (
        "tool_type",
        "invalid_tools",
        "supervised",
        tool_chat(lambda e: e["tools"][0].update(type="retrieval")),
        "tools[0].type",
        "error",
    ),
    (
        "parallel_tool_calls",
        "invalid_parallel_tool_calls",
        "supervised",
        tool_chat(lambda e: e.update(parallel_tool_calls="yes")),
        "parallel_tool_calls",
        "error",
    ),
    (
        "functions_empty",
        "invalid_functions",
        "supervised",
        chat(SYS, USER, ASST, functions=[]),
        "functions",
        "error",
    ),
    (
        "functions_bad",
        "invalid_functions",
        "supervised",
        chat(SYS, USER, ASST, functions=[{"description": "no name"}]),
        "functions[0].name",
        "error",
    ),
    ("missing_system", "missing_system_message", "supervised", chat(USER, ASST), "messages", "warning"),
    ("missing_user", "missing_user_message", "supervised", chat(SYS, ASST), "messages", "warning"),
    (
        "all_weight_0",
        "no_trained_assistant_message",
        "supervised",
        with_msg(2, weight=0),
        "messages",
        "warning",
    ),
    ("top_level_key", "example_unrecognized_key", "supervised", {**CHAT, "id": 3}, "id", "warning"),
    (
        "over_context",
        "example_over_context",
        "supervised",
        chat(SYS, USER, {"role": "assistant", "content": "x" * 300_000}),
        "",
        "warning",
    ),
    # legacy prompt/completion (first line decides the format, so the whole file is legacy)
    (
        "legacy_missing_completion",
        "invalid_prompt_completion",
        "legacy",
        {"prompt": "p"},
        "completion",
        "error",
    ),
    (
        "legacy_empty_completion",
        "invalid_prompt_completion",
        "legacy",
        {"prompt": "p", "completion": ""},
        "completion",
        "error",
    ),
    (
        "legacy_prompt_type",
        "invalid_prompt_completion",
        "legacy",
        {"prompt": 1, "completion": "c"},
        "prompt",
        "error",
    ),
    ("legacy_mixed", "mixed_formats", "legacy", CHAT, "", "error"),
    # DPO
    ("dpo_no_input", "dpo_missing_input", "dpo", dpo(lambda e: e.pop("input")), "input", "error"),
    (
        "dpo_input_messages",
        "missing_messages_list",
        "dpo",
        dpo(lambda e: e["input"].pop("messages")),
        "input.messages",
        "error",
    ),
    (
        "dpo_old_names",
        "dpo_missing_output",
        "dpo",
        dpo(lambda e: e.update(preferred_completion=e.pop("preferred_output"))),
        "preferred_output",
        "error",
    ),
    (
        "dpo_output_str",
        "dpo_missing_output",
        "dpo",
        dpo(lambda e: e.update(non_preferred_output="no")),
        "non_preferred_output",
        "error",
    ),
    (
        "dpo_two_outputs",
        "dpo_output_length",
        "dpo",
        dpo(lambda e: e["preferred_output"].append({"role": "assistant", "content": "x"})),
        "preferred_output",
        "error",
    ),
    (
        "dpo_user_output",
        "dpo_output_not_assistant",
        "dpo",
        dpo(lambda e: e["preferred_output"][0].update(role="user")),
        "preferred_output[0].role",
        "error",
    ),
    (
        "dpo_tool_call_output",
        "dpo_non_text_content",
        "dpo",
        dpo(lambda e: e["preferred_output"][0].update(tool_calls=[])),
        "preferred_output[0].tool_calls",
        "error",
    ),
    (
        "dpo_image_input",
        "dpo_non_text_content",
        "dpo",
        dpo(
            lambda e: e["input"]["messages"][1].update(
                content=[{"type": "image_url", "image_url": {"url": "u"}}]
            )
        ),
        "input.messages[1].content[0]",
        "error",
    ),
    (
        "dpo_empty_output",
        "missing_content",
        "dpo",
        dpo(lambda e: e["non_preferred_output"][0].update(content="")),
        "non_preferred_output[0].content",
        "error",
    ),
    (
        "dpo_ends_with_assistant",
        "dpo_input_not_ending_with_user",
        "dpo",
        dpo(lambda e: e["input"]["messages"].append({"role": "assistant", "content": "hm"})),
        "input.messages[2]",
        "warning",
    ),
    (
        "dpo_input_key",
        "example_unrecognized_key",
        "dpo",
        dpo(lambda e: e["input"].update(meta=1)),
        "input.meta",
        "warning",
    ),
    # reinforcement
    (
        "rft_system_role",
        "unrecognized_role",
        "reinforcement",
        {**RFT, "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "q"}]},
        "messages[0].role",
        "error",
    ),
    (
        "rft_weight",
        "message_unrecognized_key",
        "reinforcement",
        {
            **RFT,
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "weight": 1},
            ],
        },
        "messages[1].weight",
        "error",
    ),
    (
        "rft_no_user",
        "missing_user_message",
        "reinforcement",
        {**RFT, "messages": [{"role": "developer", "content": "x"}]},
        "messages",
        "warning",
    ),
]


@pytest.mark.parametrize(
    ("code", "method", "bad", "path", "severity"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rule(code: str, method: str, bad: Any, path: str, severity: str) -> None:
    good = LEGACY if method == "legacy" else None
    vmethod = "supervised" if method == "legacy" else method
    data = file_with(bad, method=vmethod, at=4, good=good)
    report = validate_bytes(
        data, method=vmethod, model="gpt-3.5-turbo-0125" if code == "example_over_context" else None
    )
    found = [p for p in report.errors + report.warnings if p.code == code]
    assert found, report.summary(20)
    assert [(p.line, p.path, p.severity) for p in found] == [(4, path, severity)], found
    # no problem anywhere else in the file
    assert all(p.line == 4 for p in report.errors + report.warnings), report.summary(20)
    assert report.ok is (severity == "warning")
    assert RULES[code][0] == severity


def test_good_files_are_clean() -> None:
    for method in ("supervised", "dpo", "reinforcement"):
        report = validate_bytes(jsonl([GOOD[method]] * 10), method=method)
        assert report.ok and not report.warnings, report.summary()
    for ex in (TOOL_CHAT, LEGACY, MULTI_TURN):
        report = validate_bytes(jsonl([ex] * 10))
        assert report.ok and not report.warnings, report.summary()


def test_too_few_examples_is_a_warning() -> None:
    # A count is the provider's rule, for the file's role in a job (checked at job creation): the file
    # itself is fine.
    report = validate_bytes(jsonl([CHAT] * 9))
    assert report.ok and not report.errors
    assert [(p.code, p.line) for p in report.warnings] == [("too_few_examples", None)]
    assert "9 example(s)" in report.warnings[0].message
    assert not validate_bytes(jsonl([CHAT] * 10)).warnings
    # lines that are not objects are not examples
    report = validate_bytes(jsonl([CHAT] * 9 + [b"[]"]))
    assert [p.code for p in report.errors] == ["not_an_object"]
    assert [p.code for p in report.warnings] == ["too_few_examples"]


def test_a_file_without_examples_is_refused() -> None:
    report = validate_bytes(b"")
    assert [(p.code, p.line) for p in report.errors] == [("no_examples", None)]
    report = validate_bytes(jsonl([CHAT]))
    assert report.ok and report.stats["examples"] == 1


def test_file_too_large() -> None:
    data = jsonl([CHAT] * 20)
    report = validate_bytes(data, max_bytes=len(data) - 1, chunk=100)
    assert [(p.code, p.line) for p in report.errors] == [("file_too_large", None)]
    assert validate_bytes(data, max_bytes=len(data)).ok


def test_trailing_newline_ignored_but_missing_newline_fine() -> None:
    data = jsonl([CHAT] * 10)
    assert validate_bytes(data).ok
    assert validate_bytes(data.rstrip(b"\n")).ok
    report = validate_bytes(data + b"\n")
    assert [(p.code, p.line) for p in report.errors] == [("empty_line", 11)]


def test_not_jsonl_extension(tmp_path) -> None:
    p = tmp_path / "train.json"
    p.write_bytes(jsonl([CHAT] * 10))
    report = validate_path(p)
    assert report.ok
    assert [(w.code, w.line) for w in report.warnings] == [("not_jsonl_extension", None)]
    q = tmp_path / "train.jsonl"
    q.write_bytes(jsonl([CHAT] * 10))
    assert not validate_path(q).warnings


def test_every_rule_has_a_test() -> None:
    tested = {c[1] for c in CASES} | {"too_few_examples", "no_examples", "file_too_large", "not_jsonl_extension"}
    assert set(RULES) == tested


def test_content_allowed_missing_with_tool_calls() -> None:
    report = validate_bytes(jsonl([TOOL_CHAT] * 10))
    assert report.ok and not report.warnings
    ex = copy.deepcopy(TOOL_CHAT)
    ex["messages"][2]["content"] = None
    assert validate_bytes(jsonl([ex] * 10)).ok


def test_unknown_method() -> None:
    with pytest.raises(ValueError):
        validate_bytes(b"", method="rlhf")


def test_corpus_files() -> None:
    import json

    from datatest_util import CORPUS

    expected = json.loads((CORPUS / "expected.json").read_text())
    assert expected
    for name, exp in expected.items():
        report = validate_path(CORPUS / name, method=exp["method"])
        assert report.ok is exp["ok"], (name, report.summary(20))
        got = sorted([p.line, p.code] for p in report.errors + report.warnings)
        assert got == sorted(exp["problems"]), (name, report.summary(20))
