"""The validator's msgspec fast path (tunegate/data/fastpath.py) never changes a report: every problem,
message, line number, count and statistic is what the Python rules alone (``fast=False``) give."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import orjson
from datatest_util import CHAT, CORPUS, TOOL_CHAT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunegate.data import Validator

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_data  # noqa: E402 - the upload benchmark's generator: the lines the fast path is for


def _report(data: bytes, fast: bool, step: int = 4096, model: str | None = None) -> dict:
    v = Validator(model=model, fast=fast)
    for i in range(0, len(data), step):
        v.feed(data[i : i + step])
    return v.finish().to_dict()


def _same(data: bytes, step: int = 4096, model: str | None = None) -> dict:
    fast = _report(data, True, step, model)
    assert fast == _report(data, False, step, model)
    return fast


def test_the_corpus_reports_the_same() -> None:
    for path in sorted(CORPUS.glob("*.jsonl")):
        for step in (1, 7, 4096, 1 << 20):
            _same(path.read_bytes(), step)


def test_a_generated_training_file_reports_the_same(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    bench_data.generate(path, 1)
    report = _same(path.read_bytes(), 65536)
    assert report["ok"] and report["stats"]["examples"] > 300 and report["warning_count"] > 0  # weight-0 lines


def test_the_fast_path_takes_the_plain_lines_and_only_them() -> None:
    v = Validator()
    slow: list[bytes] = []
    real = v._process
    v._process = lambda line: (slow.append(line), real(line))  # type: ignore[method-assign]
    plain = orjson.dumps(CHAT)
    v.feed(b"\n".join([plain, plain, orjson.dumps(TOOL_CHAT), plain, b"{}", plain]) + b"\n")
    report = v.finish()
    # the first line names the format; a tool call and an error need the Python rules
    assert slow == [plain, orjson.dumps(TOOL_CHAT), b"{}"]
    assert report.stats["examples"] == 6 and report.error_count == 1


# Message shapes near the schema's edges: each one the fast path must refuse or read exactly as the rules do.
CONTENTS = st.one_of(
    st.text(max_size=12), st.sampled_from(["", "é", "東京", "\U0001f600", "a\nb", 'q"q', "\\"]),
    st.none(), st.integers(-2, 2), st.just([{"type": "text", "text": "hi"}]), st.just([]),
)
MESSAGES = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "function", "developer", "", 3])},
    optional={
        "content": CONTENTS,
        "name": st.one_of(st.text(max_size=6), st.none(), st.integers(0, 1)),
        "weight": st.sampled_from([0, 1, 2, 0.0, 1.0, True, False, None, "1"]),
        "refusal": st.one_of(st.none(), st.text(max_size=3)),
        "extra": st.just(1),
    },
)
EXAMPLES = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(MESSAGES, max_size=6)},
                          optional={"tools": st.just([]), "other": st.just(1)}),
    st.just(CHAT), st.just({"prompt": "p", "completion": "c"}), st.lists(st.integers(-9, 9), max_size=2),
)


def _line(example: object, style: int) -> bytes:
    raw = orjson.dumps(example)
    if style == 1:  # same JSON, other spelling: spaces, escaped non-ASCII, CRLF
        import json

        return json.dumps(example, ensure_ascii=True, separators=(", ", " : ")).encode() + b"\r"
    if style == 2 and raw.startswith(b'{"messages":['):  # a duplicate key: the last one counts in both
        return raw[:-1] + b',"messages":[]}'
    return raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(EXAMPLES, st.integers(0, 2)), min_size=1, max_size=12), st.integers(1, 300),
       st.sampled_from([None, "gpt-3.5-turbo"]))
def test_random_lines_report_the_same(lines: list[tuple[object, int]], step: int, model: str | None) -> None:
    data = b"\n".join(_line(example, style) for example, style in lines)
    _same(data, step, model)


def test_names_and_a_long_example_after_the_first_line_report_the_same() -> None:
    named = {"messages": [{**m, "name": n} for m, n in zip(CHAT["messages"], ["sys", "ünï", "東京bot"], strict=True)]}
    long = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u" * 70_000},
                         {"role": "assistant", "content": "東" * 30_000}]}
    data = b"\n".join(orjson.dumps(x) for x in (CHAT, named, long, named))
    report = _same(data, 1000, "gpt-3.5-turbo")
    assert [w["code"] for w in report["warnings"]] == ["example_over_context", "too_few_examples"]


ODD_CONTENTS = [b'null', b'123', b'1e3', b'""', b'"x"', b'[]', b'{}', b'true', b'[{"type":"text","text":"t"}]',
                b'"a\\nb"', b'"\\u00e9t\\u00e9"', b'"\\\\"', b'"\xff"', b'"\xc3"', b'"\xed\xa0\x80"', b'"caf\xc3\xa9"',
                b'"\xe6\x9d\xb1"', b'"a\x01"']


def test_each_odd_content_in_an_otherwise_plain_line_reports_the_same() -> None:
    plain = orjson.dumps(CHAT)
    for i, (role, _text) in enumerate((m["role"], m["content"]) for m in CHAT["messages"]):
        for odd in ODD_CONTENTS:
            msgs = [orjson.dumps(m) for m in CHAT["messages"]]
            msgs[i] = b'{"role":"' + role.encode() + b'","content":' + odd + b"}"
            line = b'{"messages":[' + b",".join(msgs) + b"]}"
            for data in (b"\n".join([plain, line, plain]) + b"\n", b"\n".join([plain, plain, line])):
                for step in (1 << 20, 5):  # the raw path (one chunk) and the str path (lines cut across chunks)
                    _same(data, step)


def test_long_examples_and_bad_bytes_report_the_same() -> None:
    rng = random.Random(5)
    long = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u" * 70_000},
                         {"role": "assistant", "content": "東" * 30_000}]}
    lines = [orjson.dumps(CHAT), orjson.dumps(long), b"\xef\xbb\xbf" + orjson.dumps(CHAT),
             orjson.dumps(CHAT).replace(b"Paris", b"Par\xffis"), orjson.dumps(CHAT).replace(b"Paris", b"Par\xc3"),
             b"", b"  ", orjson.dumps(CHAT) + b" x", orjson.dumps(CHAT)]
    rng.shuffle(lines)
    _same(b"\n".join(lines) + b"\n", 1000, "gpt-3.5-turbo")
    _same(b"\n".join(lines), 1 << 20)
