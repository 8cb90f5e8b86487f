"""Streaming converters from OpenAI fine-tuning JSONL to each provider's format.

``convert_lines`` takes lines (bytes), ``aconvert`` takes arbitrary byte chunks;
both yield converted JSONL lines. A line that cannot be represented in the
target format raises :class:`ConversionError` naming its 1-based line number;
nothing is dropped silently (blank lines carry no data and are skipped, but
still count for line numbers).

Input lines may be OpenAI chat (``messages``), legacy ``prompt``/``completion``
or DPO preference (``input``/``preferred_output``/``non_preferred_output``).
The shapes and the source of each are listed in ``TARGETS`` and the README.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import string
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import orjson

BEDROCK_CONVERSATION_SCHEMA = "bedrock-conversation-2024"

#: target -> description of the output shape (sources in README.md)
TARGETS: dict[str, str] = {
    "bedrock-prompt-completion": "Bedrock non-conversational text-to-text: {prompt, completion}. "
    "Single-turn chat only; leading system text is prepended to the prompt.",
    "bedrock-claude": "Bedrock Claude 3 Haiku: {system?, messages:[{role,content:str}]}; "
    "user first, assistant last, strictly alternating, no extra keys.",
    "bedrock-conversation-2024": "Bedrock Converse schema: {schemaVersion:'bedrock-conversation-2024', "
    "system?:[{text}], messages:[{role, content:[{text}]}]}; alternating, user first, assistant last.",
    "vertex-gemini": "Vertex AI Gemini supervised tuning: {systemInstruction?:{parts:[{text}]}, "
    "contents:[{role:user|model, parts:[...]}], tools?}; last turn is model.",
    "vertex-gemini-preference": "Vertex AI Gemini preference tuning: {system_instruction?, contents (ends with user), "
    "completions:[{score:1,completion},{score:0,completion}]}.",
    "together": "Together: conversational {messages:[{role,content,weight?}]} (system|user first, then "
    "alternating user/assistant; user image_url parts as base64 JPEG/PNG/WEBP data URLs), instruction "
    "{prompt, completion}, preference {input, preferred_output, non_preferred_output}.",
    "fireworks": "Fireworks: OpenAI chat {messages, tools?} and DPO {input, preferred_output, non_preferred_output}.",
    "mistral": "Mistral: {messages:[{role,content,tool_calls?,tool_call_id?,name?,weight?}], tools?}; roles "
    "system|user|assistant|tool, last message assistant, weight only 0 or 1 on assistant messages, "
    "tool-call ids rewritten to Mistral's nine letters/digits.",
}


class ConversionError(Exception):
    """A line could not be converted; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


class _Fail(Exception):
    pass


# ---------------------------------------------------------------- helpers
def _kind(obj: dict[str, Any]) -> str:
    if "messages" in obj:
        return "chat"
    if "input" in obj or "preferred_output" in obj or "non_preferred_output" in obj:
        return "preference"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    raise _Fail("not a fine-tuning example (no messages, prompt/completion or input/preferred_output)")


def _text(content: Any, where: str, allow_empty: bool = False) -> str:
    """Plain text of an OpenAI content value (string or text parts)."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        pieces = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _Fail(
                    f"{where}.content[{j}] is a {kind!r} part; only text can be converted to this target"
                )
            pieces.append(part["text"])
        text = "".join(pieces)
    elif content is None:
        text = ""
    else:
        raise _Fail(f"{where}.content must be a string")
    if not text and not allow_empty:
        raise _Fail(f"{where}.content is empty")
    return text


def _messages(obj: dict[str, Any], key: str = "messages") -> list[dict[str, Any]]:
    msgs = obj.get(key)
    if not isinstance(msgs, list) or not msgs:
        raise _Fail(f"`{key}` must be a non-empty array")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _Fail(f"{key}[{i}] must be an object with a role")
    return msgs


def _split_system(
    msgs: list[dict[str, Any]], key: str = "messages"
) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    system: list[str] = []
    rest: list[tuple[int, dict[str, Any]]] = []
    for i, m in enumerate(msgs):
        if m["role"] == "system":
            if rest:
                raise _Fail(
                    f"{key}[{i}] is a system message after the conversation started; the target has no place for it"
                )
            system.append(_text(m.get("content"), f"{key}[{i}]"))
        else:
            rest.append((i, m))
    return system, rest


def _weight(m: dict[str, Any], where: str) -> Any:
    w = m.get("weight", 1)
    if isinstance(w, bool) or w not in (0, 1):
        raise _Fail(f"{where}.weight must be 0 or 1, got {w!r}")
    return w


def _no_weight0(m: dict[str, Any], where: str, target: str) -> None:
    if _weight(m, where) == 0:
        raise _Fail(f"{where} has weight 0; {target} has no per-message weights")


def _no_tools(obj: dict[str, Any], target: str) -> None:
    for key in ("tools", "functions"):
        if obj.get(key):
            raise _Fail(f"`{key}` cannot be represented in {target}")


def _plain_turns(
    obj: dict[str, Any], target: str, key: str = "messages"
) -> tuple[list[str], list[tuple[str, str]]]:
    """System texts and strictly alternating (role, text) turns, user first, assistant last."""
    msgs = _messages(obj, key)
    system, rest = _split_system(msgs, key)
    turns: list[tuple[str, str]] = []
    expected = "user"
    for i, m in rest:
        where = f"{key}[{i}]"
        role = m["role"]
        if role not in ("user", "assistant"):
            raise _Fail(f"{where} has role {role!r}; {target} supports only user and assistant turns")
        if m.get("tool_calls") or m.get("function_call"):
            raise _Fail(f"{where} has tool/function calls; {target} supports text only")
        if role != expected:
            raise _Fail(
                f"{where} is {role!r} but {expected!r} was expected; {target} needs alternating user/assistant turns starting with user"
            )
        if role == "assistant":
            _no_weight0(m, where, target)
        turns.append((role, _text(m.get("content"), where)))
        expected = "assistant" if role == "user" else "user"
    if not turns or turns[-1][0] != "assistant":
        raise _Fail(f"{target} needs the conversation to end with an assistant turn")
    return system, turns


def _pc_strings(obj: dict[str, Any]) -> tuple[str, str]:
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
        raise _Fail("prompt and completion must be strings, completion non-empty")
    return prompt, completion


def _dpo_parts(obj: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    inp = obj.get("input")
    if not isinstance(inp, dict):
        raise _Fail("`input` must be an object with messages")
    outs = []
    for key in ("preferred_output", "non_preferred_output"):
        out = obj.get(key)
        if not isinstance(out, list) or len(out) != 1 or not isinstance(out[0], dict):
            raise _Fail(f"`{key}` must be an array with exactly one assistant message")
        if out[0].get("role") != "assistant":
            raise _Fail(f"{key}[0] must be an assistant message")
        if out[0].get("tool_calls") or out[0].get("function_call"):
            raise _Fail(f"{key}[0] has tool/function calls; preference data must be text")
        outs.append(_text(out[0].get("content"), f"{key}[0]"))
    return inp, outs[0], outs[1]


def _reject(kind: str, target: str, hint: str = "") -> _Fail:
    return _Fail(f"{kind} examples cannot be converted to {target}{hint}")


# ----------------------------------------------------------------- Bedrock
def _to_bedrock_prompt_completion(obj: dict[str, Any]) -> dict[str, Any]:
    target = "bedrock-prompt-completion"
    kind = _kind(obj)
    if kind == "prompt_completion":
        prompt, completion = _pc_strings(obj)
        return {"prompt": prompt, "completion": completion}
    if kind != "chat":
        raise _reject(kind, target)
    _no_tools(obj, target)
    system, turns = _plain_turns(obj, target)
    if len(turns) != 2:
        raise _Fail(f"{target} holds one prompt and one completion; this example has {len(turns)} turns")
    prompt = "\n\n".join([*system, turns[0][1]])
    return {"prompt": prompt, "completion": turns[1][1]}


def _to_bedrock_claude(obj: dict[str, Any]) -> dict[str, Any]:
    target = "bedrock-claude"
    kind = _kind(obj)
    if kind == "prompt_completion":
        prompt, completion = _pc_strings(obj)
        if not prompt:
            raise _Fail("empty prompt; Claude needs a non-empty user message")
        return {
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        }
    if kind != "chat":
        raise _reject(kind, target)
    _no_tools(obj, target)
    system, turns = _plain_turns(obj, target)
    out: dict[str, Any] = {}
    if system:
        out["system"] = "\n\n".join(system)
    out["messages"] = [{"role": r, "content": t} for r, t in turns]
    return out


def _to_bedrock_conversation(obj: dict[str, Any]) -> dict[str, Any]:
    target = BEDROCK_CONVERSATION_SCHEMA
    kind = _kind(obj)
    if kind == "prompt_completion":
        prompt, completion = _pc_strings(obj)
        if not prompt:
            raise _Fail("empty prompt; the converse schema needs a non-empty user message")
        system: list[str] = []
        turns = [("user", prompt), ("assistant", completion)]
    elif kind == "chat":
        _no_tools(obj, target)
        system, turns = _plain_turns(obj, target)
    else:
        raise _reject(kind, target)
    out: dict[str, Any] = {"schemaVersion": BEDROCK_CONVERSATION_SCHEMA}
    if system:
        out["system"] = [{"text": s} for s in system]
    out["messages"] = [{"role": r, "content": [{"text": t}]} for r, t in turns]
    return out


# ------------------------------------------------------------------ Vertex
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+);base64,(.*)$", re.S)


def _vertex_user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append({"text": part["text"]})
            elif (
                isinstance(part, dict)
                and part.get("type") == "image_url"
                and isinstance(part.get("image_url"), dict)
            ):
                url = part["image_url"].get("url")
                m = _DATA_URL.match(url) if isinstance(url, str) else None
                if m:
                    parts.append({"inlineData": {"mimeType": m.group(1), "data": m.group(2)}})
                elif isinstance(url, str) and url.startswith(("gs://", "https://", "http://")):
                    # Vertex "Image tuning": fileUri is a Cloud Storage URI or a public HTTP(S) URL.
                    mime = _guess_mime(url)
                    if mime is None:
                        raise _Fail(f"{where}.content[{j}]: the image's type cannot be told from its URL; Vertex "
                                    f"needs one of {', '.join(sorted(_IMAGE_TYPES))} (or a data: URL)")
                    parts.append({"fileData": {"mimeType": mime, "fileUri": url}})
                else:
                    raise _Fail(f"{where}.content[{j}]: Vertex needs images inline (data: URL), in gs:// "
                                "or at an http(s) URL")
            else:
                raise _Fail(f"{where}.content[{j}] cannot be converted to Vertex")
        if not parts:
            raise _Fail(f"{where}.content is empty")
        return parts
    return [{"text": _text(content, where)}]


# The image types Gemini takes (Vertex model pages, "Supported MIME types": png, jpeg, webp, heic, heif).
_IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
                "heic": "image/heic", "heif": "image/heif"}


def _guess_mime(url: str) -> str | None:
    """The image type from the URL's path (a query or fragment is not part of the name)."""
    path = url.split("?", 1)[0].split("#", 1)[0]
    last = path.rsplit("/", 1)[-1]
    return _IMAGE_TYPES.get(last.rsplit(".", 1)[-1].lower()) if "." in last else None


def _vertex_contents(
    msgs: list[dict[str, Any]], key: str, target: str
) -> tuple[list[str], list[dict[str, Any]]]:
    system, rest = _split_system(msgs, key)
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, m in rest:
        where = f"{key}[{i}]"
        role = m["role"]
        if role == "user":
            contents.append({"role": "user", "parts": _vertex_user_parts(m.get("content"), where)})
        elif role == "assistant":
            _no_weight0(m, where, target)
            parts: list[dict[str, Any]] = []
            calls = m.get("tool_calls") or []
            if m.get("function_call"):
                calls = [*calls, {"id": "", "function": m["function_call"]}]
            text = _text(m.get("content"), where, allow_empty=bool(calls))
            if text:
                parts.append({"text": text})
            for k, call in enumerate(calls):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise _Fail(f"{where}.tool_calls[{k}] has no function name")
                try:
                    args = orjson.loads(fn.get("arguments") or "{}")
                except (orjson.JSONDecodeError, TypeError):
                    raise _Fail(f"{where}.tool_calls[{k}].function.arguments is not JSON") from None
                if not isinstance(args, dict):
                    raise _Fail(
                        f"{where}.tool_calls[{k}].function.arguments must encode an object for Vertex"
                    )
                if call.get("id"):
                    call_names[call["id"]] = fn["name"]
                parts.append({"functionCall": {"name": fn["name"], "args": args}})
            contents.append({"role": "model", "parts": parts})
        elif role in ("tool", "function"):
            name = m.get("name") if role == "function" else call_names.get(m.get("tool_call_id", ""))
            if not isinstance(name, str):
                raise _Fail(f"{where} answers an unknown tool call {m.get('tool_call_id')!r}")
            text = _text(m.get("content"), where, allow_empty=True)
            try:
                parsed = orjson.loads(text)
            except orjson.JSONDecodeError:
                parsed = None
            # FunctionResponse.response: an object; "output" holds the function output.
            response = parsed if isinstance(parsed, dict) else {"output": text}
            part = {"functionResponse": {"name": name, "response": response}}
            if contents and contents[-1]["role"] == "user" and "functionResponse" in contents[-1]["parts"][0]:
                contents[-1]["parts"].append(part)  # parallel calls answered in one turn
            else:
                contents.append({"role": "user", "parts": [part]})
        else:
            raise _Fail(f"{where} has role {role!r}, which Vertex cannot represent")
    return system, contents


def _vertex_tools(obj: dict[str, Any]) -> list[dict[str, Any]] | None:
    decls = []
    for tool in obj.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _Fail("tools entries must be {type: function, function: {name, ...}}")
        decl = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            decl["description"] = fn["description"]
        if isinstance(fn.get("parameters"), dict):
            decl["parameters"] = fn["parameters"]
        decls.append(decl)
    for fn in obj.get("functions") or []:
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _Fail("functions entries must be {name, ...}")
        decls.append({k: fn[k] for k in ("name", "description", "parameters") if k in fn})
    return [{"functionDeclarations": decls}] if decls else None


def _to_vertex(obj: dict[str, Any]) -> dict[str, Any]:
    target = "vertex-gemini"
    kind = _kind(obj)
    if kind == "prompt_completion":
        prompt, completion = _pc_strings(obj)
        if not prompt:
            raise _Fail("empty prompt; Gemini needs a non-empty user turn")
        return {
            "contents": [
                {"role": "user", "parts": [{"text": prompt}]},
                {"role": "model", "parts": [{"text": completion}]},
            ]
        }
    if kind != "chat":
        raise _reject(kind, target, "; use the vertex-gemini-preference target")
    system, contents = _vertex_contents(_messages(obj), "messages", target)
    if not contents or contents[-1]["role"] != "model":
        raise _Fail("Vertex supervised examples must end with a model (assistant) turn")
    out: dict[str, Any] = {}
    if system:
        out["systemInstruction"] = {"parts": [{"text": s} for s in system]}
    out["contents"] = contents
    tools = _vertex_tools(obj)
    if tools:
        out["tools"] = tools
    return out


def _to_vertex_preference(obj: dict[str, Any]) -> dict[str, Any]:
    target = "vertex-gemini-preference"
    kind = _kind(obj)
    if kind != "preference":
        raise _reject(kind, target, "; use the vertex-gemini target")
    inp, preferred, rejected = _dpo_parts(obj)
    if inp.get("tools"):
        raise _Fail("Vertex preference tuning is text only; input.tools cannot be converted")
    msgs = _messages(inp)
    system, contents = _vertex_contents(msgs, "input.messages", target)
    if not contents or contents[-1]["role"] != "user":
        raise _Fail("Vertex preference examples must end with a user turn before the completions")
    out: dict[str, Any] = {}
    if system:
        out["system_instruction"] = {"parts": [{"text": s} for s in system]}
    out["contents"] = contents
    out["completions"] = [
        {"score": 1, "completion": {"role": "model", "parts": [{"text": preferred}]}},
        {"score": 0, "completion": {"role": "model", "parts": [{"text": rejected}]}},
    ]
    return out


# ------------------------------------------------- OpenAI-compatible targets
# Together's multimodal rules (together-python@eba5e5f src/together/utils/files.py
# `_check_message_content`, `validate_messages`; constants in src/together/constants.py): image parts
# only in user messages, as base64 data URLs of JPEG, PNG or WEBP of at most 10 MiB, at most 10 per
# example, no non-zero weight on a message with images, and one format for the whole example.
_TOGETHER_IMAGE = re.compile(r"^data:image/(jpeg|png|webp);base64,")
_TOGETHER_MAX_IMAGES = 10
_TOGETHER_MAX_IMAGE_URL = len("data:image/jpeg;base64,") + 4 * (10 * 1024 * 1024) // 3


def _together_parts(content: Any, role: str, where: str) -> list[dict[str, Any]] | None:
    """The content as Together's multimodal parts when it holds an image (else None: plain text)."""
    if not isinstance(content, list) or not any(isinstance(p, dict) and p.get("type") == "image_url"
                                                for p in content):
        return None
    if role != "user":
        raise _Fail(f"{where} has an image; Together takes images only in user messages")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
            continue
        image = part.get("image_url") if isinstance(part, dict) and part.get("type") == "image_url" else None
        url = image.get("url") if isinstance(image, dict) else None
        if not isinstance(url, str):
            raise _Fail(f"{where}.content[{j}] cannot be converted to Together (text or image_url parts only)")
        if not _TOGETHER_IMAGE.match(url):
            raise _Fail(f"{where}.content[{j}]: Together needs images as base64 data URLs "
                        "(data:image/jpeg|png|webp;base64,...)")
        if len(url) > _TOGETHER_MAX_IMAGE_URL:
            raise _Fail(f"{where}.content[{j}]: Together takes images of at most 10 MiB")
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def _together_multimodal(out: list[dict[str, Any]], images: int, key: str) -> None:
    """An example with images: every message's content as parts (Together refuses a mix of text-only
    and multimodal messages in one example)."""
    if images > _TOGETHER_MAX_IMAGES:
        raise _Fail(f"`{key}` holds {images} images; Together takes at most {_TOGETHER_MAX_IMAGES} per example")
    for msg in out:
        if isinstance(msg["content"], str):
            msg["content"] = [{"type": "text", "text": msg["content"]}]


def _together_messages(msgs: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    out = []
    images = 0
    expected: tuple[str, ...] = ("system", "user")
    for i, m in enumerate(msgs):
        where = f"{key}[{i}]"
        role = m["role"]
        if role not in ("system", "user", "assistant"):
            raise _Fail(f"{where} has role {role!r}; Together supports system, user and assistant")
        if m.get("tool_calls") or m.get("function_call"):
            raise _Fail(f"{where} has tool/function calls; Together conversational data is text only")
        if role not in expected:
            raise _Fail(
                f"{where} is {role!r}; Together needs system or user first, then alternating user/assistant"
            )
        expected = ("assistant",) if role in ("system", "user") else ("user",)
        if role == "system":
            expected = ("user",)
        parts = _together_parts(m.get("content"), role, where)
        msg: dict[str, Any] = {"role": role, "content": parts if parts else _text(m.get("content"), where)}
        if "weight" in m:
            msg["weight"] = _weight(m, where)
            if parts and msg["weight"]:
                raise _Fail(f"{where} has images and weight 1; Together needs weight 0 on messages with images")
        images += sum(p["type"] == "image_url" for p in parts or [])
        out.append(msg)
    if images:
        _together_multimodal(out, images, key)
    return out


def _to_together(obj: dict[str, Any]) -> dict[str, Any]:
    target = "together"
    kind = _kind(obj)
    if kind == "prompt_completion":
        prompt, completion = _pc_strings(obj)
        return {"prompt": prompt, "completion": completion}
    if kind == "chat":
        _no_tools(obj, target)
        return {"messages": _together_messages(_messages(obj), "messages")}
    inp, preferred, rejected = _dpo_parts(obj)
    _no_tools(inp, target)
    return {
        "input": {"messages": _together_messages(_messages(inp), "input.messages")},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


_OPENAI_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "weight")


def _openai_messages(msgs: list[dict[str, Any]], key: str, target: str) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(msgs):
        where = f"{key}[{i}]"
        role = m["role"]
        if role not in ("system", "user", "assistant", "tool"):
            raise _Fail(f"{where} has role {role!r}, which {target} does not accept")
        if m.get("function_call"):
            raise _Fail(f"{where} uses the deprecated function_call; {target} accepts tool_calls")
        msg = {k: m[k] for k in _OPENAI_MESSAGE_KEYS if k in m}
        if isinstance(msg.get("content"), list) and all(
            isinstance(p, dict) and p.get("type") == "text" for p in msg["content"]
        ):
            msg["content"] = _text(msg["content"], where)
        if "weight" in msg:
            if role != "assistant":
                raise _Fail(f"{where}.weight is only allowed on assistant messages")
            msg["weight"] = _weight(m, where)
        out.append(msg)
    return out


def _to_fireworks(obj: dict[str, Any]) -> dict[str, Any]:
    target = "fireworks"
    kind = _kind(obj)
    if kind == "prompt_completion":
        prompt, completion = _pc_strings(obj)
        return {
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        }
    if kind == "chat":
        if obj.get("functions"):
            raise _Fail("deprecated `functions` cannot be converted; use tools")
        out: dict[str, Any] = {"messages": _openai_messages(_messages(obj), "messages", target)}
        if obj.get("tools"):
            out["tools"] = obj["tools"]
        return out
    inp, preferred, rejected = _dpo_parts(obj)
    new_inp: dict[str, Any] = {"messages": _openai_messages(_messages(inp), "input.messages", target)}
    if inp.get("tools"):
        new_inp["tools"] = inp["tools"]
    return {
        "input": new_inp,
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


# Mistral's tool-call ids: exactly nine letters or digits, on the assistant's calls and on the tool
# messages answering them (mistralai/mistral-common@bc022b9 src/mistral_common/protocol/instruct/
# validator.py, MistralRequestValidatorV3 `_validate_tool_call`, `_validate_tool_message`).
_MISTRAL_CALL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")
_BASE62 = string.digits + string.ascii_letters


def _mistral_call_id(original: str, taken: set[str]) -> str:
    """A nine-character id for an OpenAI tool-call id: kept when it already fits, else derived from a
    hash of it (so the same id becomes the same id on every line), never one the line already uses."""
    if _MISTRAL_CALL_ID.match(original) and original not in taken:
        return original
    for n in itertools.count():
        seed = original if n == 0 else f"{original}#{n}"
        number = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")  # 2^64 > 62^9
        candidate = "".join(_BASE62[(number // 62**k) % 62] for k in range(9))
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable")


def _mistral_call_ids(msgs: list[dict[str, Any]]) -> None:
    """Rewrite the line's tool-call ids to Mistral's form, one id per original id: the calls and the
    tool messages' `tool_call_id` stay paired."""
    ids: dict[str, str] = {}

    def mapped(original: str) -> str:
        if original not in ids:
            ids[original] = _mistral_call_id(original, set(ids.values()))
        return ids[original]

    for m in msgs:
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "id": mapped(c["id"])} if isinstance(c, dict) and isinstance(c.get("id"), str)
                               else c for c in m["tool_calls"]]
        if m["role"] == "tool" and isinstance(m.get("tool_call_id"), str):
            m["tool_call_id"] = mapped(m["tool_call_id"])


def _to_mistral(obj: dict[str, Any]) -> dict[str, Any]:
    target = "mistral"
    kind = _kind(obj)
    if kind == "prompt_completion":
        prompt, completion = _pc_strings(obj)
        if not prompt:
            raise _Fail("empty prompt; Mistral needs a non-empty user message")
        return {
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        }
    if kind != "chat":
        raise _reject(kind, target, " (Mistral fine-tuning has no preference format)")
    if obj.get("functions"):
        raise _Fail("deprecated `functions` cannot be converted; use tools")
    msgs = _openai_messages(_messages(obj), "messages", target)
    names: dict[str, str] = {}
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if isinstance(m.get("content"), list):
            raise _Fail(f"{where}.content has non-text parts; Mistral text fine-tuning needs string content")
        for call in m.get("tool_calls") or []:
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                names[str(call.get("id"))] = call["function"].get("name")
        if m["role"] == "tool" and "name" not in m and m.get("tool_call_id") in names:
            m["name"] = names[m["tool_call_id"]]
        if m["role"] != "tool":
            m.pop("name", None)  # only Mistral's tool messages carry a name
    if msgs[-1]["role"] != "assistant":
        raise _Fail("Mistral rejects examples whose last message is not an assistant message")
    _mistral_call_ids(msgs)
    out: dict[str, Any] = {"messages": msgs}
    if obj.get("tools"):
        out["tools"] = obj["tools"]
    return out


_CONVERTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "bedrock-prompt-completion": _to_bedrock_prompt_completion,
    "bedrock-claude": _to_bedrock_claude,
    "bedrock-conversation-2024": _to_bedrock_conversation,
    "vertex-gemini": _to_vertex,
    "vertex-gemini-preference": _to_vertex_preference,
    "together": _to_together,
    "fireworks": _to_fireworks,
    "mistral": _to_mistral,
}
assert _CONVERTERS.keys() == TARGETS.keys()


def _converter(target: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    try:
        return _CONVERTERS[target]
    except KeyError:
        raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}") from None


def _convert_one(raw: bytes, ln: int, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> bytes | None:
    if not raw.strip():
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConversionError(ln, f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ConversionError(ln, "line is not a JSON object")
    try:
        out = fn(obj)
    except _Fail as exc:
        raise ConversionError(ln, str(exc)) from None
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as exc:
        raise ConversionError(ln, f"malformed example: {exc!r}") from None
    return orjson.dumps(out) + b"\n"


def convert_lines(lines: Iterable[bytes], target: str) -> Iterator[bytes]:
    """Convert JSONL lines to ``target``; yields lines ending with b"\\n"."""
    fn = _converter(target)
    for ln, raw in enumerate(lines, 1):
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        out = _convert_one(raw, ln, fn)
        if out is not None:
            yield out


async def aconvert(chunks: AsyncIterator[bytes], target: str) -> AsyncIterator[bytes]:
    """Like :func:`convert_lines` over arbitrary byte chunks (lines re-split here). Yields the converted
    lines of each incoming chunk together: a yield per line costs more than converting the line."""
    fn = _converter(target)
    partial = bytearray()
    ln = 0
    async for chunk in chunks:
        if not chunk:
            continue
        out: list[bytes] = []
        if partial:
            nl = chunk.find(b"\n")
            if nl < 0:
                partial += chunk
                continue
            partial += memoryview(chunk)[:nl]
            raw = bytes(partial)
            partial = bytearray()
            ln += 1
            if (converted := _convert_one(raw, ln, fn)) is not None:
                out.append(converted)
            chunk = chunk[nl + 1 :]
        lines = chunk.split(b"\n")
        partial += lines.pop()
        for raw in lines:
            ln += 1
            if (converted := _convert_one(raw, ln, fn)) is not None:
                out.append(converted)
        if out:
            yield b"".join(out)
    if partial:
        last = _convert_one(bytes(partial), ln + 1, fn)
        if last is not None:
            yield last
