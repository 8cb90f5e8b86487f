"""Converters: output shapes checked against the provider specs/docs, round trips, errors."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import jsonschema
import orjson
import pytest
from datatest_util import CHAT, DPO, LEGACY, MULTI_TURN, SPECS, TOOL_CHAT, jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from tunegate.data import TARGETS, ConversionError, aconvert, convert_lines

NO_WEIGHT = copy.deepcopy(MULTI_TURN)
for _m in NO_WEIGHT["messages"]:
    _m.pop("weight", None)
PARTS = {
    "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Sys "}, {"type": "text", "text": "prompt"}]},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
}


def convert(obj: Any, target: str) -> dict[str, Any]:
    (out,) = list(convert_lines([orjson.dumps(obj) + b"\n"], target))
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    return orjson.loads(out)


def plain(obj: dict[str, Any]) -> tuple[list[str], list[tuple[str, str]]]:
    """(system texts, [(role, text)]) of a text-only OpenAI chat example."""
    system, turns = [], []
    for m in obj["messages"]:
        c = m["content"]
        text = c if isinstance(c, str) else "".join(p["text"] for p in c)
        if m["role"] == "system":
            system.append(text)
        else:
            turns.append((m["role"], text))
    return system, turns


# ------------------------------------------------------------------ Vertex
def _discovery_to_jsonschema(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref":
                out["$ref"] = f"#/$defs/{v}"
            elif k == "type" and v == "any":
                continue
            elif k in ("id", "description", "enumDescriptions", "annotations", "format"):
                continue
            else:
                out[k] = _discovery_to_jsonschema(v)
        return out
    if isinstance(node, list):
        return [_discovery_to_jsonschema(v) for v in node]
    return node


@pytest.fixture(scope="module")
def vertex() -> dict[str, Any]:
    path = SPECS / "vertex-aiplatform-v1-tuningjobs.json"
    if not path.exists():
        pytest.skip(f"{path} not present")
    defs = {k: _discovery_to_jsonschema(v) for k, v in json.loads(path.read_text())["schemas"].items()}
    # Be stricter than the discovery doc: no unknown keys in Content / Part (catches typos like "content").
    for name in ("GoogleCloudAiplatformV1Content", "GoogleCloudAiplatformV1Part"):
        defs[name]["additionalProperties"] = False

    def validator(name: str) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": defs})

    return {
        "content": validator("GoogleCloudAiplatformV1Content"),
        "completion": validator("GoogleCloudAiplatformV1GeminiPreferenceExampleCompletion"),
        "example": validator("GoogleCloudAiplatformV1GeminiPreferenceExample"),
    }


def check_vertex_sft(out: dict[str, Any], vertex: dict[str, Any]) -> None:
    assert set(out) <= {"systemInstruction", "contents", "tools"}
    for content in out["contents"]:
        vertex["content"].validate(content)
        assert content["role"] in ("user", "model")  # "Must be either 'user' or 'model'"
        assert content["parts"], "a Content must have at least one Part"
    assert out["contents"][-1]["role"] == "model"
    if "systemInstruction" in out:
        vertex["content"].validate(out["systemInstruction"])


@pytest.mark.parametrize(
    "example", [CHAT, NO_WEIGHT, PARTS, LEGACY], ids=["chat", "multi", "parts", "legacy"]
)
def test_vertex_gemini_round_trip(example: dict[str, Any], vertex: dict[str, Any]) -> None:
    out = convert(example, "vertex-gemini")
    check_vertex_sft(out, vertex)
    system = [p["text"] for p in out.get("systemInstruction", {}).get("parts", [])]
    turns = [
        ("assistant" if c["role"] == "model" else "user", "".join(p["text"] for p in c["parts"]))
        for c in out["contents"]
    ]
    if example is LEGACY:
        assert (system, turns) == ([], [("user", LEGACY["prompt"]), ("assistant", LEGACY["completion"])])
    else:
        exp_system, exp_turns = plain(example)
        assert ("".join(system), turns) == ("".join(exp_system), exp_turns)


def test_vertex_gemini_tools(vertex: dict[str, Any]) -> None:
    out = convert(TOOL_CHAT, "vertex-gemini")
    check_vertex_sft(out, vertex)
    roles = [c["role"] for c in out["contents"]]
    assert roles == ["user", "model", "user", "model"]
    assert out["contents"][1]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}
    ]
    assert out["contents"][2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 3}}}
    ]
    assert out["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"


def test_vertex_gemini_preference(vertex: dict[str, Any]) -> None:
    out = convert(DPO, "vertex-gemini-preference")
    assert set(out) == {"system_instruction", "contents", "completions"}
    vertex["content"].validate(out["system_instruction"])
    vertex["example"].validate({k: out[k] for k in ("contents", "completions")})
    for c in out["completions"]:
        vertex["completion"].validate(c)
        assert c["completion"]["role"] == "model"
    assert out["contents"][-1]["role"] == "user"
    assert [(c["score"], c["completion"]["parts"][0]["text"]) for c in out["completions"]] == [
        (1, DPO["preferred_output"][0]["content"]),
        (0, DPO["non_preferred_output"][0]["content"]),
    ]


# ----------------------------------------------------------------- Bedrock
# Shapes from the Bedrock user guide ("Prepare data for fine-tuning text-to-text models",
# "Fine-tuning Claude 3 Haiku", distillation/Nova "bedrock-conversation-2024").
_TURNS = {
    "type": "array",
    "minItems": 2,
}
BEDROCK_SCHEMAS = {
    "bedrock-prompt-completion": {
        "type": "object",
        "required": ["prompt", "completion"],
        "additionalProperties": False,
        "properties": {"prompt": {"type": "string"}, "completion": {"type": "string", "minLength": 1}},
    },
    "bedrock-claude": {
        "type": "object",
        "required": ["messages"],
        "additionalProperties": False,
        "properties": {
            "system": {"type": "string"},
            "messages": {
                **_TURNS,
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "additionalProperties": False,
                    "properties": {
                        "role": {"enum": ["user", "assistant"]},
                        "content": {"type": "string", "minLength": 1},
                    },
                },
            },
        },
    },
    "bedrock-conversation-2024": {
        "type": "object",
        "required": ["schemaVersion", "messages"],
        "additionalProperties": False,
        "properties": {
            "schemaVersion": {"const": "bedrock-conversation-2024"},
            "system": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["text"],
                    "additionalProperties": False,
                    "properties": {"text": {"type": "string"}},
                },
            },
            "messages": {
                **_TURNS,
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "additionalProperties": False,
                    "properties": {
                        "role": {"enum": ["user", "assistant"]},
                        "content": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["text"],
                                "additionalProperties": False,
                                "properties": {"text": {"type": "string", "minLength": 1}},
                            },
                        },
                    },
                },
            },
        },
    },
}


def _alternates(messages: list[dict[str, Any]]) -> bool:
    roles = [m["role"] for m in messages]
    return (
        roles[0] == "user"
        and roles[-1] == "assistant"
        and all(a != b for a, b in zip(roles, roles[1:], strict=False))
    )


@pytest.mark.parametrize(
    "example", [CHAT, NO_WEIGHT, PARTS, LEGACY], ids=["chat", "multi", "parts", "legacy"]
)
@pytest.mark.parametrize("target", ["bedrock-claude", "bedrock-conversation-2024"])
def test_bedrock_chat_round_trip(target: str, example: dict[str, Any]) -> None:
    out = convert(example, target)
    jsonschema.validate(out, BEDROCK_SCHEMAS[target])
    assert _alternates(out["messages"])
    if target == "bedrock-claude":
        system = [out["system"]] if "system" in out else []
        turns = [(m["role"], m["content"]) for m in out["messages"]]
    else:
        system = [s["text"] for s in out.get("system", [])]
        turns = [(m["role"], "".join(c["text"] for c in m["content"])) for m in out["messages"]]
    if example is LEGACY:
        assert turns == [("user", LEGACY["prompt"]), ("assistant", LEGACY["completion"])]
    else:
        exp_system, exp_turns = plain(example)
        assert ("\n\n".join(system), turns) == ("\n\n".join(exp_system), exp_turns)


def test_bedrock_prompt_completion() -> None:
    target = "bedrock-prompt-completion"
    out = convert(CHAT, target)
    jsonschema.validate(out, BEDROCK_SCHEMAS[target])
    assert out == {"prompt": "You are terse.\n\nCapital of France?", "completion": "Paris."}
    assert convert(LEGACY, target) == LEGACY
    with pytest.raises(ConversionError, match="4 turns"):
        convert(NO_WEIGHT, target)


# ------------------------------------------------- OpenAI-style providers
def test_together() -> None:
    out = convert(MULTI_TURN, "together")
    assert out == {
        "messages": [
            {k: m[k] for k in ("role", "content", "weight") if k in m} for m in MULTI_TURN["messages"]
        ]
    }
    assert convert(LEGACY, "together") == LEGACY
    out = convert(DPO, "together")
    assert out == DPO  # the Together preference format is OpenAI's
    with pytest.raises(ConversionError, match="tool/function calls"):
        convert({"messages": TOOL_CHAT["messages"]}, "together")
    with pytest.raises(ConversionError, match="alternating"):
        convert({"messages": [CHAT["messages"][0], CHAT["messages"][2]]}, "together")


def test_fireworks() -> None:
    assert convert(TOOL_CHAT, "fireworks") == {"messages": TOOL_CHAT["messages"], "tools": TOOL_CHAT["tools"]}
    assert convert(PARTS, "fireworks")["messages"][0] == {"role": "system", "content": "Sys prompt"}
    assert convert(DPO, "fireworks") == DPO
    assert convert(LEGACY, "fireworks")["messages"][1] == {"role": "assistant", "content": " 4"}


def _mistral_openapi_roles() -> set[str]:
    import yaml

    spec = yaml.safe_load((SPECS / "mistral-openapi.yaml").read_text())
    schemas = spec["components"]["schemas"]
    roles = set()
    for name in ("SystemMessage", "UserMessage", "AssistantMessage", "ToolMessage"):
        role = schemas[name]["properties"]["role"]
        roles.add(role.get("const") or role.get("default") or role.get("enum", [None])[0])
    return roles


def test_mistral() -> None:
    out = convert(TOOL_CHAT, "mistral")
    assert out["tools"] == TOOL_CHAT["tools"]
    assert out["messages"][3] == {
        "role": "tool",
        "tool_call_id": out["messages"][2]["tool_calls"][0]["id"],  # rewritten to Mistral's 9 characters
        "content": '{"temp_c": 3}',
        "name": "get_weather",
    }
    assert out["messages"][-1]["role"] == "assistant"
    if (SPECS / "mistral-openapi.yaml").exists():
        assert {m["role"] for m in out["messages"]} <= _mistral_openapi_roles()
    assert convert(MULTI_TURN, "mistral")["messages"][2]["weight"] == 0
    bad = copy.deepcopy(MULTI_TURN)
    bad["messages"][2]["weight"] = 0.5
    with pytest.raises(ConversionError, match="weight must be 0 or 1"):
        convert(bad, "mistral")
    with pytest.raises(ConversionError, match="last message"):
        convert({"messages": CHAT["messages"][:2]}, "mistral")
    with pytest.raises(ConversionError, match="no preference format"):
        convert(DPO, "mistral")


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("target", "example", "match"),
    [
        ("bedrock-claude", MULTI_TURN, "weight 0"),
        ("bedrock-conversation-2024", TOOL_CHAT, "cannot be represented"),
        ("bedrock-claude", {"messages": [CHAT["messages"][0], CHAT["messages"][2]]}, "'user' was expected"),
        (
            "bedrock-claude",
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "only text",
        ),
        ("vertex-gemini", DPO, "vertex-gemini-preference"),
        ("vertex-gemini", {"messages": CHAT["messages"][:2]}, "end with a model"),
        ("vertex-gemini-preference", CHAT, "use the vertex-gemini target"),
        ("bedrock-prompt-completion", DPO, "cannot be converted"),
        ("together", {"foo": 1}, "not a fine-tuning example"),
    ],
)
def test_conversion_errors_name_the_line(target: str, example: Any, match: str) -> None:
    lines = [orjson.dumps(CHAT if target != "vertex-gemini-preference" else DPO) + b"\n"] * 2 + [
        orjson.dumps(example) + b"\n"
    ]
    lines.append(lines[0])
    got = []
    with pytest.raises(ConversionError, match=match) as exc:
        for out in convert_lines(lines, target):
            got.append(out)
    assert exc.value.line == 3
    assert str(exc.value).startswith("line 3: ")
    assert len(got) == 2  # lines before the bad one were converted, nothing after


def test_invalid_json_and_blank_lines() -> None:
    data = [orjson.dumps(CHAT) + b"\n", b"\n", b"{nope\n"]
    with pytest.raises(ConversionError) as exc:
        list(convert_lines(data, "together"))
    assert exc.value.line == 3 and "invalid JSON" in exc.value.message
    assert len(list(convert_lines(data[:2], "together"))) == 1


def test_unknown_target() -> None:
    with pytest.raises(ValueError, match="unknown target"):
        list(convert_lines([b"{}"], "openai"))


def test_targets_documented() -> None:
    assert set(TARGETS) == {
        "bedrock-prompt-completion",
        "bedrock-claude",
        "bedrock-conversation-2024",
        "vertex-gemini",
        "vertex-gemini-preference",
        "together",
        "fireworks",
        "mistral",
    }


# ------------------------------------------------------------------- async
DATA = jsonl([CHAT, NO_WEIGHT, PARTS, LEGACY] * 3).rstrip(b"\n")


async def _collect(chunks: list[bytes], target: str) -> list[bytes]:
    async def gen():
        for c in chunks:
            yield c

    return [x async for x in aconvert(gen(), target)]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, len(DATA)), max_size=15),
    st.sampled_from(["bedrock-conversation-2024", "vertex-gemini", "fireworks"]),
)
def test_aconvert_matches_convert_lines(cuts: list[int], target: str) -> None:
    points = [0, *sorted(set(cuts)), len(DATA)]
    chunks = [DATA[a:b] for a, b in zip(points, points[1:], strict=False)]
    expected = b"".join(convert_lines(DATA.split(b"\n"), target))
    assert b"".join(asyncio.run(_collect(chunks, target))) == expected  # chunked as the input was


def test_aconvert_error_line_number() -> None:
    data = jsonl([CHAT, CHAT]) + b"\n" + jsonl([DPO])
    with pytest.raises(ConversionError) as exc:
        asyncio.run(_collect([data[i : i + 5] for i in range(0, len(data), 5)], "bedrock-claude"))
    assert exc.value.line == 4
