"""Hypothesis fuzzing with random bytes (atheris target: fuzz/fuzz_jsonl.py)."""

from __future__ import annotations

import orjson
from datatest_util import CHAT, DPO, TOOL_CHAT, jsonl, validate_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunegate.data import TARGETS, ConversionError, convert_lines

SEED = jsonl([CHAT, TOOL_CHAT, DPO])

# random bytes, plus mutations of real lines (more likely to reach deep code)
noise = st.binary(max_size=600)
mutated = st.tuples(st.integers(0, len(SEED)), st.integers(0, 40), st.binary(max_size=20)).map(
    lambda t: SEED[: t[0]] + t[2] + SEED[t[0] + t[1] :]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "messages",
                    "role",
                    "content",
                    "weight",
                    "tool_calls",
                    "function",
                    "arguments",
                    "input",
                    "preferred_output",
                    "non_preferred_output",
                    "prompt",
                    "completion",
                    "tools",
                    "name",
                    "type",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)
structured = st.lists(json_values, max_size=12).map(lambda vs: b"\n".join(orjson.dumps(v) for v in vs))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(noise, mutated, structured),
    st.sampled_from(["supervised", "dpo", "reinforcement"]),
    st.integers(1, 50),
)
def test_validator_never_crashes_and_is_chunk_independent(data: bytes, method: str, step: int) -> None:
    whole = validate_bytes(data, method=method)
    assert validate_bytes(data, method=method, chunk=step).to_dict() == whole.to_dict()
    assert whole.ok == (whole.error_count == 0)
    if whole.ok:
        assert whole.stats["examples"] >= 10


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(noise, mutated, structured), st.sampled_from(sorted(TARGETS)))
def test_converters_raise_only_conversion_error(data: bytes, target: str) -> None:
    try:
        for line in convert_lines(data.split(b"\n"), target):
            assert line.endswith(b"\n")
            orjson.loads(line)
    except ConversionError as exc:
        assert exc.line >= 1
