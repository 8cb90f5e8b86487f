"""Reading, validating and tokenising OpenAI-format fine-tuning files.

Supervised lines: ``{"messages": [{"role": ..., "content": ..., "weight": 0|1}, ...], "tools": [...]?}``.
DPO lines: ``{"input": {"messages": [...], "tools": [...]?}, "preferred_output": [{"role": "assistant",
"content": ...}], "non_preferred_output": [{"role": "assistant", "content": ...}]}``.

Labels are built from the tokenizer's own chat template: the conversation is rendered once, and the
character span of every trained assistant turn is found by rendering the prefix up to that turn
(with ``add_generation_prompt=True``) and the prefix including it. Tokens whose characters fall in a
trained span keep their id as label; every other token (system/user/tool turns, role headers,
assistant turns with ``"weight": 0``) gets -100.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from .spec import TrainingError

IGNORE_INDEX = -100
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def _content_text(content: Any) -> str | None:
    """OpenAI content may be a string or a list of parts; only text parts are supported here."""
    if content is None:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:
                raise ValueError("only text content parts are supported by the local trainer")
        return "".join(parts)
    raise ValueError("content must be a string or a list of text parts")


def _check_messages(messages: Any, where: str, need_assistant: bool) -> list[tuple[dict[str, Any], int]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where} must be a non-empty list")
    out: list[tuple[dict[str, Any], int]] = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"{where}[{j}] must be an object")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}[{j}].role {role!r} is not one of {sorted(ROLES)}")
        try:
            text = _content_text(m.get("content"))
        except ValueError as e:
            raise ValueError(f"{where}[{j}].content: {e}") from None
        if text is None and not (role == "assistant" and (m.get("tool_calls") or m.get("function_call"))):
            raise ValueError(f"{where}[{j}] has no content")
        weight = m.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise ValueError(f"{where}[{j}].weight must be 0 or 1")
        if "weight" in m and role != "assistant":
            raise ValueError(f"{where}[{j}].weight is only allowed on assistant messages")
        mm = {k: v for k, v in m.items() if k != "weight"}
        mm["content"] = text if text is not None else ""
        out.append((mm, weight))
    if need_assistant and not any(m["role"] == "assistant" and w == 1 for m, w in out):
        raise ValueError(f"{where} has no assistant message with weight 1 to train on")
    return out


def load_examples(path: str, method: str, param: str = "training_file") -> list[dict[str, Any]]:
    """Parse and validate a JSONL file. Raises ``TrainingError(invalid_training_file|invalid_validation_file)``.

    Returns normalised examples: supervised ``{"messages": [...], "weights": [...], "tools": ...}``,
    dpo ``{"prompt": [...], "chosen": {...}, "rejected": {...}, "tools": ...}``.
    """
    code = "invalid_training_file" if param == "training_file" else "invalid_validation_file"
    if not path or not os.path.isfile(path):
        raise TrainingError(code, f"{param} {path!r} does not exist", param)
    examples: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TrainingError(code, f"Line {lineno}: invalid JSON ({e.msg})", param) from None
            if not isinstance(obj, dict):
                raise TrainingError(code, f"Line {lineno}: each line must be a JSON object", param)
            try:
                tools = obj.get("tools")
                if tools is None and isinstance(obj.get("input"), dict):
                    tools = obj["input"].get("tools")
                if method == "supervised":
                    pairs = _check_messages(obj.get("messages"), "messages", need_assistant=True)
                    examples.append(
                        {"messages": [m for m, _ in pairs], "weights": [w for _, w in pairs], "tools": tools}
                    )
                else:
                    inp = obj.get("input")
                    if not isinstance(inp, dict):
                        raise ValueError("input must be an object with 'messages'")
                    prompt = _check_messages(inp.get("messages"), "input.messages", need_assistant=False)
                    outs = []
                    for key in ("preferred_output", "non_preferred_output"):
                        msgs = _check_messages(obj.get(key), key, need_assistant=True)
                        if len(msgs) != 1 or msgs[0][0]["role"] != "assistant":
                            raise ValueError(f"{key} must contain exactly one assistant message")
                        outs.append(msgs[0][0])
                    examples.append(
                        {"prompt": [m for m, _ in prompt], "chosen": outs[0], "rejected": outs[1], "tools": tools}
                    )
            except ValueError as e:
                raise TrainingError(code, f"Line {lineno}: {e}", param) from None
    if not examples:
        raise TrainingError(code, f"{param} contains no examples", param)
    return examples


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _render(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool) -> str:
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if tools:
        kwargs["tools"] = tools
    return tokenizer.apply_chat_template(messages, **kwargs)


def encode_conversation(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    train_mask: list[bool],
    tools: Any = None,
    max_length: int | None = None,
) -> Encoded:
    """Tokenise a conversation with the chat template; label only assistant turns where train_mask is True."""
    if tokenizer.chat_template is None:
        raise TrainingError("model_not_found", "the model's tokenizer has no chat_template", "model")
    full = _render(tokenizer, messages, tools, False)
    spans: list[tuple[int, int]] = []
    for i, (m, train) in enumerate(zip(messages, train_mask, strict=True)):
        if m["role"] != "assistant" or not train:
            continue
        before = _render(tokenizer, messages[:i], tools, True)
        upto = _render(tokenizer, messages[: i + 1], tools, False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise TrainingError(
                "model_not_found",
                "the model's chat template is not prefix-consistent; cannot locate assistant turns",
                "model",
            )
        spans.append((len(before), len(upto)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = enc["offset_mapping"]
    labels = []
    for tid, (s, e) in zip(ids, offsets, strict=True):
        inside = any(s >= a and e <= b and e > s for a, b in spans)
        labels.append(tid if inside else IGNORE_INDEX)
    truncated = False
    if max_length is not None and len(ids) > max_length:
        ids, labels, truncated = ids[:max_length], labels[:max_length], True
    return Encoded(ids, labels, truncated)


def encode_supervised(tokenizer: Any, example: dict[str, Any], max_length: int | None = None) -> Encoded:
    mask = [m["role"] == "assistant" and w == 1 for m, w in zip(example["messages"], example["weights"], strict=True)]
    return encode_conversation(tokenizer, example["messages"], mask, example.get("tools"), max_length)


def encode_dpo(tokenizer: Any, example: dict[str, Any], max_length: int | None = None) -> tuple[Encoded, Encoded]:
    """Chosen and rejected sequences; only the final (completion) assistant turn is labelled."""
    out = []
    for key in ("chosen", "rejected"):
        msgs = [*example["prompt"], example[key]]
        mask = [False] * (len(msgs) - 1) + [True]
        out.append(encode_conversation(tokenizer, msgs, mask, example.get("tools"), max_length))
    return out[0], out[1]
