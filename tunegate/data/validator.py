"""Streaming validator for OpenAI fine-tuning JSONL files.

Feed it the upload in chunks of any size (``Validator.feed``); it splits lines
itself, keeps nothing but the current partial line, and checks each example as
soon as its line is complete. ``Validator.finish`` runs the file-level checks
and returns a :class:`Report`.

Every rule has one ``code``; :data:`RULES` lists them with their severity.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

try:  # msgspec is a dependency; without it every line takes the Python rules (same results, slower)
    from . import fastpath as _fastpath
except ImportError:  # pragma: no cover
    _fastpath = None  # type: ignore[assignment]
from .tokens import (
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    TOKENS_PER_REPLY,
    content_tokens,
    context_window,
    json_tokens,
    text_tokens,
)

ERROR = "error"
WARNING = "warning"

METHODS = ("supervised", "dpo", "reinforcement")
MIN_EXAMPLES = 10
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_PROBLEMS = 100
READ_CHUNK = 1024 * 1024

#: code -> (severity, rule). The README renders the same table.
RULES: dict[str, tuple[str, str]] = {
    # file level
    "invalid_utf8": (ERROR, "The file must be UTF-8."),
    "invalid_json": (ERROR, "Each line must be one complete JSON value (no pretty-printed JSON, no BOM)."),
    "not_an_object": (ERROR, "Each line must be a JSON object."),
    "empty_line": (ERROR, "Blank lines are not allowed (a single trailing newline is fine)."),
    "no_examples": (ERROR, "The file must hold at least one example."),
    # A warning, not an error: minimums are the provider's and depend on the file's role in a job, so they
    # are checked when a job is created (tunegate.providers.rules). 10 is OpenAI's training minimum.
    "too_few_examples": (WARNING, f"Fewer than {MIN_EXAMPLES} examples: too few for a training file on OpenAI."),
    "file_too_large": (ERROR, "The file must not exceed 512 MiB."),
    "mixed_formats": (ERROR, "All lines of a file must use the same format (chat or prompt/completion)."),
    "not_jsonl_extension": (WARNING, "Fine-tuning files must be uploaded as .jsonl."),
    # supervised chat
    "missing_messages_list": (ERROR, "`messages` must be present and be an array."),
    "empty_messages": (ERROR, "`messages` must not be empty."),
    "message_not_object": (ERROR, "Each message must be a JSON object."),
    "message_missing_key": (
        ERROR,
        "A message lacks a required key (role; content; tool_call_id on tool; name on function).",
    ),
    "unrecognized_role": (ERROR, "The role is not allowed for this method."),
    "message_unrecognized_key": (ERROR, "A message has a key that is not allowed on that role."),
    "missing_content": (
        ERROR,
        "`content` must be a non-empty string (or text parts), unless an assistant message has function_call/tool_calls.",
    ),
    "invalid_content_part": (
        ERROR,
        "Content parts must be {type:text,text} (image_url on user messages only).",
    ),
    "invalid_field_type": (ERROR, "`name`, `tool_call_id` and `refusal` must be strings."),
    "example_missing_assistant_message": (
        ERROR,
        "Each supervised example needs at least one assistant message.",
    ),
    "invalid_weight": (ERROR, "`weight` must be 0 or 1."),
    "weight_not_on_assistant": (ERROR, "`weight` is only allowed on assistant messages."),
    "invalid_tool_calls": (
        ERROR,
        "`tool_calls` must be a non-empty array of {id, type:function, function:{name, arguments}}.",
    ),
    "invalid_tool_call_arguments": (
        ERROR,
        "`tool_calls[].function.arguments` must be a JSON-encoded string.",
    ),
    "invalid_function_call": (
        ERROR,
        "`function_call` must be {name, arguments} with arguments a JSON-encoded string.",
    ),
    "invalid_tools": (
        ERROR,
        "`tools` must be an array of {type:function, function:{name, description?, parameters?}}.",
    ),
    "invalid_parallel_tool_calls": (ERROR, "`parallel_tool_calls` must be a boolean."),
    "invalid_functions": (ERROR, "`functions` must be an array of 1..128 {name, description?, parameters?}."),
    "missing_system_message": (WARNING, "The example has no system message."),
    "missing_user_message": (WARNING, "The example has no user message."),
    "no_trained_assistant_message": (
        WARNING,
        "Every assistant message has weight 0; the example trains nothing.",
    ),
    "example_over_context": (
        WARNING,
        "The estimated token count exceeds the model's training context; the example will be truncated.",
    ),
    "example_unrecognized_key": (WARNING, "A top-level key is not part of the format and will be ignored."),
    # legacy prompt/completion
    "invalid_prompt_completion": (
        ERROR,
        "Legacy examples need `prompt` (string) and a non-empty `completion` (string).",
    ),
    # DPO
    "dpo_missing_input": (ERROR, "`input` must be an object with `messages`."),
    "dpo_missing_output": (ERROR, "`preferred_output` and `non_preferred_output` must be arrays."),
    "dpo_output_length": (ERROR, "Each DPO output must hold exactly one message."),
    "dpo_output_not_assistant": (ERROR, "DPO outputs must be assistant messages."),
    "dpo_non_text_content": (
        ERROR,
        "DPO supports text only (no images, tool calls or function calls in outputs).",
    ),
    "dpo_input_not_ending_with_user": (
        WARNING,
        "The DPO input should end with a user turn (outputs are the final assistant turn).",
    ),
}

_CHAT_TOP_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
_LEGACY_KEYS = frozenset({"prompt", "completion"})
_DPO_TOP_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})
_DPO_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
_DPO_OUTPUT_KEYS = frozenset({"role", "content", "name", "refusal", "tool_calls", "function_call"})

# Allowed keys per role (the cookbook's set, narrowed per role as in the spec's
# ChatCompletionRequest*Message schemas).
_SUPERVISED_ROLE_KEYS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "function_call", "weight", "tool_calls", "refusal"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}
_RFT_ROLE_KEYS: dict[str, frozenset[str]] = {
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "tool_calls", "refusal"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MISSING: Any = object()
_BOM = b"\xef\xbb\xbf"


@dataclass
class Problem:
    line: int | None
    path: str
    message: str
    severity: str
    code: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        path = f" {self.path}:" if self.path else ""
        return f"{where}:{path} {self.message} [{self.code}]"


@dataclass
class Report:
    ok: bool
    errors: list[Problem]
    warnings: list[Problem]
    stats: dict[str, Any]
    error_count: int = 0
    warning_count: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self, limit: int = 5) -> str:
        s = self.stats
        head = "OK" if self.ok else "INVALID"
        lines = [
            f"{head}: {self.error_count} error(s), {self.warning_count} warning(s); "
            f"{s.get('examples', 0)} example(s), {s.get('bytes', 0)} bytes, format {s.get('format') or 'unknown'}"
        ]
        for title, items, total in (
            ("Errors", self.errors, self.error_count),
            ("Warnings", self.warnings, self.warning_count),
        ):
            if not total:
                continue
            lines.append(f"{title}:")
            for p in items[:limit]:
                lines.append(f"  {p}")
            if total > min(limit, len(items)):
                lines.append(f"  ... and {total - min(limit, len(items))} more")
        if s.get("messages_min") is not None:
            lines.append(
                f"Messages per example: min {s['messages_min']}, mean {s['messages_mean']:.2f}, max {s['messages_max']}"
            )
        lines.append(
            f"Assistant turns trained: {s.get('assistant_turns_trained', 0)}; "
            f"estimated training tokens: ~{s.get('estimated_tokens', 0)} (per epoch, bytes/4 heuristic); "
            f"examples over the {s.get('context_window')}-token context: {s.get('examples_over_context', 0)}"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "error_count": self.error_count,
            "warning_count": self.warning_count,
            "counts": dict(self.counts),
            "errors": [asdict(p) for p in self.errors],
            "warnings": [asdict(p) for p in self.warnings],
            "stats": dict(self.stats),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """The report ``to_dict`` gave (a validator in another process sends it so)."""
        return cls(ok=bool(data["ok"]), errors=[Problem(**p) for p in data["errors"]],
                   warnings=[Problem(**p) for p in data["warnings"]], stats=dict(data["stats"]),
                   error_count=int(data["error_count"]), warning_count=int(data["warning_count"]),
                   counts=dict(data["counts"]))


def _tt(text: str) -> int:
    """Inline-able text token estimate (same as tokens.text_tokens)."""
    return (len(text) + 3) >> 2 if text.isascii() else (len(text.encode("utf-8", "surrogatepass")) + 3) >> 2


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _is_json_string(value: Any) -> bool:
    if type(value) is not str:
        return False
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


# TOKENS_PER_MESSAGE + ceil(utf8_bytes / 4) == (utf8_bytes + _PER_MSG) >> 2; the same for a name
_PER_MSG = 3 + 4 * TOKENS_PER_MESSAGE
_PER_NAME = 3 + 4 * TOKENS_PER_NAME


def _str_messages(msgs: list[Any]) -> tuple[int, int, int]:
    """(tokens, role bits, trained turns) of a fast-path example with ``str`` contents: what
    ``_check_messages`` counts for it."""
    unset = _fastpath.UNSET
    tokens = TOKENS_PER_REPLY
    seen = trained = 0
    for m in msgs:
        c = m.content
        tokens += ((len(c) if c.isascii() else len(c.encode("utf-8", "surrogatepass"))) + _PER_MSG) >> 2
        if m.name is not unset:
            c = m.name
            tokens += ((len(c) if c.isascii() else len(c.encode("utf-8", "surrogatepass"))) + _PER_NAME) >> 2
        seen |= m.bit
        trained += m.weight
    return tokens, seen, trained


def _raw_messages(msgs: list[Any]) -> tuple[int, int, int]:
    """The same with raw contents of an escape-free, valid UTF-8 line: a content must be a JSON string
    (``"`` first) of at least one character, and its UTF-8 length is its raw length less the quotes."""
    unset = _fastpath.UNSET
    tokens = TOKENS_PER_REPLY
    seen = trained = 0
    for m in msgs:
        c = memoryview(m.content)
        if c[0] != 34 or len(c) < 3:  # 34: '"'
            raise ValueError
        tokens += (len(c) - 2 + _PER_MSG) >> 2
        if m.name is not unset:
            n = m.name
            tokens += ((len(n) if n.isascii() else len(n.encode("utf-8", "surrogatepass"))) + _PER_NAME) >> 2
        seen |= m.bit
        trained += m.weight
    return tokens, seen, trained


def _clean(chunk: bytes) -> bool:
    """Whether the complete lines of ``chunk`` (which starts at a line) are valid UTF-8 and hold no
    backslash. An incomplete character at the very end is allowed: it belongs to the unfinished line."""
    if b"\\" in chunk:
        return False
    if chunk.isascii():
        return True
    try:
        codecs.utf_8_decode(chunk, "strict", False)
    except UnicodeDecodeError:
        return False
    return True


class Validator:
    """Incremental validator. ``feed`` chunks, then ``finish``."""

    def __init__(
        self,
        method: str = "supervised",
        model: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_problems: int = DEFAULT_MAX_PROBLEMS,
        fast: bool = True,
    ) -> None:
        """``fast=False`` sends every line through the Python rules (the fast path's yardstick in tests)."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        self.method = method
        self.model = model
        self.max_bytes = max_bytes
        self.max_problems = max_problems
        self.context = context_window(model)
        self._check = {
            "supervised": self._check_supervised,
            "dpo": self._check_dpo,
            "reinforcement": self._check_reinforcement,
        }[method]
        self._fast = fast and method == "supervised" and _fastpath is not None
        self._partial = bytearray()
        self._line = 0
        self._bytes = 0
        self._report: Report | None = None
        self._errors: list[Problem] = []
        self._warnings: list[Problem] = []
        self._error_count = 0
        self._warning_count = 0
        self._counts: dict[str, int] = {}
        self._too_large = False
        self._format: str | None = None
        # stats
        self._examples = 0
        self._msg_examples = 0
        self._msg_min: int | None = None
        self._msg_max = 0
        self._msg_sum = 0
        self._trained = 0
        self._tokens = 0
        self._over = 0

    # ------------------------------------------------------------------ intake
    @property
    def error_count(self) -> int:
        return self._error_count

    @property
    def too_large(self) -> bool:
        """True once more than ``max_bytes`` were fed (the gateway may stop reading)."""
        return self._too_large

    def feed(self, chunk: bytes) -> None:
        if self._report is not None:
            raise RuntimeError("feed() after finish()")
        if not chunk:
            return
        self._bytes += len(chunk)
        if not self._too_large and self._bytes > self.max_bytes:
            self._too_large = True
            self._add(ERROR, None, "", "file_too_large", f"file exceeds the {self.max_bytes}-byte limit")
        if self._partial:
            nl = chunk.find(b"\n")
            if nl < 0:
                self._partial += chunk
                return
            self._partial += memoryview(chunk)[:nl]
            line = bytes(self._partial)
            self._partial = bytearray()
            self._lines([line])
            chunk = chunk[nl + 1 :]
        lines = chunk.split(b"\n")
        tail = lines.pop()
        self._lines(lines, self._fast and _clean(chunk))
        if tail:
            self._partial += tail

    def finish(self) -> Report:
        if self._report is not None:
            return self._report
        if self._partial:
            line = bytes(self._partial)
            self._partial = bytearray()
            self._lines([line])
        if self._examples == 0 and self._error_count == 0:
            self._add(ERROR, None, "", "no_examples", "the file holds no examples")
        elif self._examples < MIN_EXAMPLES:
            self._add(
                WARNING,
                None,
                "",
                "too_few_examples",
                f"the file has {self._examples} example(s); OpenAI needs at least {MIN_EXAMPLES} in a training "
                "file, other providers have their own minimums (checked when a job names the file)",
            )
        n = self._msg_examples
        stats: dict[str, Any] = {
            "method": self.method,
            "model": self.model,
            "format": self._format,
            "lines": self._line,
            "bytes": self._bytes,
            "examples": self._examples,
            "messages_min": self._msg_min,
            "messages_max": self._msg_max if n else None,
            "messages_mean": (self._msg_sum / n) if n else None,
            "assistant_turns_trained": self._trained,
            "estimated_tokens": self._tokens,
            "examples_over_context": self._over,
            "context_window": self.context,
        }
        self._report = Report(
            ok=self._error_count == 0,
            errors=self._errors,
            warnings=self._warnings,
            stats=stats,
            error_count=self._error_count,
            warning_count=self._warning_count,
            counts=dict(sorted(self._counts.items())),
        )
        return self._report

    # ---------------------------------------------------------------- problems
    def _add(self, severity: str, line: int | None, path: str, code: str, message: str) -> None:
        self._counts[code] = self._counts.get(code, 0) + 1
        if severity == ERROR:
            self._error_count += 1
            if len(self._errors) < self.max_problems:
                self._errors.append(Problem(line, path, message, ERROR, code))
        else:
            self._warning_count += 1
            if len(self._warnings) < self.max_problems:
                self._warnings.append(Problem(line, path, message, WARNING, code))

    def _err(self, line: int, path: str, code: str, message: str) -> None:
        self._add(ERROR, line, path, code, message)

    def _warn(self, line: int, path: str, code: str, message: str) -> None:
        self._add(WARNING, line, path, code, message)

    # ------------------------------------------------------------------ lines
    def _lines(self, lines: list[bytes], raw: bool = False) -> None:
        """Check complete lines: the fast path (``fastpath``) where it takes a line and the line draws no
        problem at all, the Python rules (``_process``) for every other line. ``raw``: the lines are valid
        UTF-8 and hold no backslash, so contents need not become ``str`` (``fastpath.decode_raw``)."""
        if not self._fast:
            for line in lines:
                self._process(line)
            return
        decode, rejected = (_fastpath.decode_raw if raw else _fastpath.decode), _fastpath.Rejected
        messages = _raw_messages if raw else _str_messages
        context, all_roles = self.context, _fastpath.ALL_ROLES
        n_examples = n_sum = n_max = n_trained = n_tokens = 0
        n_min: int | None = None
        for line in lines:
            try:
                if self._format != "chat":  # the first line names the format (and a mixed file errs)
                    raise ValueError
                msgs = decode(line).messages
                tokens, seen, trained = messages(msgs)
                if seen != all_roles or not trained or tokens > context:
                    raise ValueError  # a warning (or an error) to report: the Python rules word it
            except (ValueError, *rejected):
                self._process(line)
                continue
            self._line += 1
            n = len(msgs)
            n_examples += 1
            n_sum += n
            n_max = max(n_max, n)
            n_min = n if n_min is None or n < n_min else n_min
            n_trained += trained
            n_tokens += tokens
        if n_examples:
            self._examples += n_examples
            self._msg_examples += n_examples
            self._msg_sum += n_sum
            self._msg_max = max(self._msg_max, n_max)
            self._msg_min = n_min if self._msg_min is None or (n_min is not None and n_min < self._msg_min) \
                else self._msg_min
            self._trained += n_trained
            self._tokens += n_tokens

    def _process(self, line: bytes) -> None:
        self._line += 1
        ln = self._line
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self._bad_line(line, ln, exc)
            return
        if type(obj) is not dict:
            self._err(ln, "", "not_an_object", f"line is a JSON {type(obj).__name__}, not an object")
            return
        self._examples += 1
        self._check(obj, ln)

    def _bad_line(self, line: bytes, ln: int, exc: Exception) -> None:
        if not line.strip():
            self._err(ln, "", "empty_line", "empty line")
            return
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as ude:
            self._err(ln, "", "invalid_utf8", f"invalid UTF-8 at byte {ude.start} of the line")
            return
        if line.startswith(_BOM):
            self._err(
                ln, "", "invalid_json", "line starts with a UTF-8 byte order mark; save the file without BOM"
            )
            return
        self._err(ln, "", "invalid_json", f"invalid JSON: {exc}")

    def _note_format(self, fmt: str, ln: int) -> bool:
        if self._format is None:
            self._format = fmt
            return True
        if self._format != fmt:
            self._err(
                ln, "", "mixed_formats", f"line uses the {fmt} format but earlier lines use {self._format}"
            )
            return False
        return True

    def _account(self, n_messages: int | None, trained: int, tokens: int, ln: int) -> None:
        if n_messages is not None:
            self._msg_examples += 1
            self._msg_sum += n_messages
            if self._msg_min is None or n_messages < self._msg_min:
                self._msg_min = n_messages
            if n_messages > self._msg_max:
                self._msg_max = n_messages
        self._trained += trained
        self._tokens += tokens
        if tokens > self.context:
            self._over += 1
            self._warn(
                ln,
                "",
                "example_over_context",
                f"~{tokens} estimated tokens exceed the {self.context}-token training context"
                f"{' of ' + self.model if self.model else ''}; the example will be truncated",
            )

    def _extra_keys(self, obj: dict[str, Any], allowed: frozenset[str], ln: int, prefix: str) -> None:
        for key in obj:
            if key not in allowed:
                self._warn(
                    ln,
                    f"{prefix}{key}",
                    "example_unrecognized_key",
                    f"unrecognized key {key!r} will be ignored",
                )

    # ------------------------------------------------------------- supervised
    def _check_supervised(self, obj: dict[str, Any], ln: int) -> None:
        msgs = obj.get("messages", _MISSING)
        if msgs is _MISSING and ("prompt" in obj or "completion" in obj):
            if self._note_format("prompt_completion", ln):
                self._check_legacy(obj, ln)
            return
        if not self._note_format("chat", ln):
            return
        if not (obj.keys() <= _CHAT_TOP_KEYS):
            self._extra_keys(obj, _CHAT_TOP_KEYS, ln, "")
        tokens = 0
        if "tools" in obj:
            tokens += self._check_tools(obj["tools"], ln, "tools")
        if "parallel_tool_calls" in obj and type(obj["parallel_tool_calls"]) is not bool:
            self._err(
                ln,
                "parallel_tool_calls",
                "invalid_parallel_tool_calls",
                "parallel_tool_calls must be a boolean",
            )
        if "functions" in obj:
            tokens += self._check_functions(obj["functions"], ln)
        if not self._messages_present(msgs, ln, "messages"):
            return
        n, has_system, has_user, assistants, trained, mtokens, _last = self._check_messages(
            msgs, ln, "messages", _SUPERVISED_ROLE_KEYS
        )
        if assistants == 0:
            self._err(ln, "messages", "example_missing_assistant_message", "example has no assistant message")
        elif trained == 0:
            self._warn(ln, "messages", "no_trained_assistant_message", "every assistant message has weight 0")
        if not has_system:
            self._warn(ln, "messages", "missing_system_message", "example has no system message")
        if not has_user:
            self._warn(ln, "messages", "missing_user_message", "example has no user message")
        self._account(n, trained, tokens + mtokens, ln)

    def _messages_present(self, msgs: Any, ln: int, path: str) -> bool:
        if type(msgs) is not list:
            if msgs is _MISSING:
                self._err(ln, path, "missing_messages_list", f"missing `{path}`")
            else:
                self._err(
                    ln, path, "missing_messages_list", f"`{path}` must be an array, got {type(msgs).__name__}"
                )
            return False
        if not msgs:
            self._err(ln, path, "empty_messages", f"`{path}` is empty")
            return False
        return True

    def _check_messages(
        self,
        msgs: list[Any],
        ln: int,
        base: str,
        role_keys: Mapping[str, frozenset[str]],
        text_only: bool = False,
    ) -> tuple[int, bool, bool, int, int, int, str | None]:
        """Check a message list. Returns (n, has_system, has_user, assistants, trained, tokens, last_role)."""
        has_system = has_user = False
        assistants = trained = 0
        tokens = TOKENS_PER_REPLY
        last_role: str | None = None
        for i, m in enumerate(msgs):
            if type(m) is not dict:
                self._err(
                    ln,
                    f"{base}[{i}]",
                    "message_not_object",
                    f"message is a {type(m).__name__}, not an object",
                )
                continue
            role: Any = m.get("role")
            allowed = role_keys.get(role) if type(role) is str else None
            if allowed is None:
                if role is None:
                    self._err(ln, f"{base}[{i}].role", "message_missing_key", "message has no role")
                else:
                    self._err(
                        ln,
                        f"{base}[{i}].role",
                        "unrecognized_role",
                        f"role {role!r} is not one of {', '.join(role_keys)}",
                    )
                continue
            last_role = role
            if not (m.keys() <= allowed):
                self._bad_message_keys(m, role, allowed, ln, f"{base}[{i}]")
            content = m.get("content", _MISSING)
            if type(content) is str and content:
                tokens += TOKENS_PER_MESSAGE + _tt(content)
            else:
                tokens += TOKENS_PER_MESSAGE + self._check_content(
                    m, role, content, ln, f"{base}[{i}]", text_only
                )
            if role == "assistant":
                assistants += 1
                if "weight" in m:
                    w = m["weight"]
                    if type(w) not in (int, float) or w not in (0, 1):
                        self._err(
                            ln, f"{base}[{i}].weight", "invalid_weight", f"weight must be 0 or 1, got {w!r}"
                        )
                        trained += 1
                    elif w == 1:
                        trained += 1
                else:
                    trained += 1
                if "tool_calls" in m:
                    tokens += self._check_tool_calls(m["tool_calls"], ln, f"{base}[{i}].tool_calls")
                if "function_call" in m:
                    tokens += self._check_function_call(m["function_call"], ln, f"{base}[{i}].function_call")
                if "refusal" in m and m["refusal"] is not None and type(m["refusal"]) is not str:
                    self._err(
                        ln, f"{base}[{i}].refusal", "invalid_field_type", "refusal must be a string or null"
                    )
            elif role == "system":
                has_system = True
            elif role == "user":
                has_user = True
            elif role == "tool":
                tcid = m.get("tool_call_id", _MISSING)
                if tcid is _MISSING:
                    self._err(
                        ln,
                        f"{base}[{i}].tool_call_id",
                        "message_missing_key",
                        "tool message has no tool_call_id",
                    )
                elif type(tcid) is not str:
                    self._err(
                        ln, f"{base}[{i}].tool_call_id", "invalid_field_type", "tool_call_id must be a string"
                    )
            elif role == "function" and "name" not in m:
                self._err(ln, f"{base}[{i}].name", "message_missing_key", "function message has no name")
            if "name" in m:
                name = m["name"]
                if type(name) is not str:
                    self._err(ln, f"{base}[{i}].name", "invalid_field_type", "name must be a string")
                else:
                    tokens += TOKENS_PER_NAME + _tt(name)
        return len(msgs), has_system, has_user, assistants, trained, tokens, last_role

    def _bad_message_keys(
        self, m: dict[str, Any], role: str, allowed: frozenset[str], ln: int, path: str
    ) -> None:
        for key in m:
            if key in allowed:
                continue
            if key == "weight" and role != "assistant":
                self._err(
                    ln,
                    f"{path}.weight",
                    "weight_not_on_assistant",
                    f"weight is not allowed on a {role} message",
                )
            else:
                self._err(
                    ln,
                    f"{path}.{key}",
                    "message_unrecognized_key",
                    f"key {key!r} is not allowed on {_a(role)} message",
                )

    def _check_content(
        self, m: dict[str, Any], role: str, content: Any, ln: int, path: str, text_only: bool
    ) -> int:
        """Slow path for content that is not a non-empty string. Returns tokens."""
        has_call = role == "assistant" and bool(m.get("tool_calls") or m.get("function_call"))
        if content is _MISSING:
            if not has_call:
                self._err(ln, f"{path}.content", "message_missing_key", f"{role} message has no content")
            return 0
        if content is None or content == "":
            if not has_call:
                self._err(ln, f"{path}.content", "missing_content", f"{role} message content is empty")
            return 0
        if type(content) is list:
            if not content:
                if not has_call:
                    self._err(
                        ln, f"{path}.content", "missing_content", f"{role} message content is an empty array"
                    )
                return 0
            for j, part in enumerate(content):
                ppath = f"{path}.content[{j}]"
                if type(part) is not dict:
                    self._err(ln, ppath, "invalid_content_part", "content part must be an object")
                    continue
                ptype = part.get("type")
                if ptype == "text":
                    if type(part.get("text")) is not str or not part["text"]:
                        self._err(
                            ln,
                            f"{ppath}.text",
                            "invalid_content_part",
                            "text part needs a non-empty string `text`",
                        )
                elif ptype == "image_url":
                    if text_only:
                        self._err(ln, ppath, "dpo_non_text_content", "DPO supports text content only")
                    elif role != "user":
                        self._err(
                            ln,
                            ppath,
                            "invalid_content_part",
                            f"image parts are only allowed on user messages, not {role}",
                        )
                    else:
                        iu = part.get("image_url")
                        if type(iu) is not dict or type(iu.get("url")) is not str:
                            self._err(
                                ln,
                                f"{ppath}.image_url",
                                "invalid_content_part",
                                "image_url needs a string `url`",
                            )
                elif ptype == "refusal" and role == "assistant":
                    if type(part.get("refusal")) is not str:
                        self._err(
                            ln,
                            f"{ppath}.refusal",
                            "invalid_content_part",
                            "refusal part needs a string `refusal`",
                        )
                else:
                    self._err(
                        ln,
                        f"{ppath}.type",
                        "invalid_content_part",
                        f"unsupported content part type {ptype!r}",
                    )
            return content_tokens(content)
        self._err(
            ln,
            f"{path}.content",
            "missing_content",
            f"content must be a non-empty string, got {type(content).__name__}",
        )
        return 0

    def _check_tool_calls(self, calls: Any, ln: int, path: str) -> int:
        if type(calls) is not list or not calls:
            self._err(ln, path, "invalid_tool_calls", "tool_calls must be a non-empty array")
            return 0
        tokens = 0
        for k, call in enumerate(calls):
            cpath = f"{path}[{k}]"
            if type(call) is not dict:
                self._err(ln, cpath, "invalid_tool_calls", "tool call must be an object")
                continue
            if type(call.get("id")) is not str:
                self._err(ln, f"{cpath}.id", "invalid_tool_calls", "tool call needs a string id")
            if call.get("type") != "function":
                self._err(ln, f"{cpath}.type", "invalid_tool_calls", "tool call type must be 'function'")
            fn = call.get("function")
            if type(fn) is not dict:
                self._err(ln, f"{cpath}.function", "invalid_tool_calls", "tool call needs a function object")
                continue
            if type(fn.get("name")) is not str or not fn["name"]:
                self._err(
                    ln,
                    f"{cpath}.function.name",
                    "invalid_tool_calls",
                    "function name must be a non-empty string",
                )
            else:
                tokens += _tt(fn["name"])
            args = fn.get("arguments", _MISSING)
            if not _is_json_string(args):
                what = "missing" if args is _MISSING else f"not a JSON-encoded string ({type(args).__name__})"
                self._err(
                    ln, f"{cpath}.function.arguments", "invalid_tool_call_arguments", f"arguments {what}"
                )
            else:
                tokens += _tt(args)
        return tokens + 3 * len(calls)

    def _check_function_call(self, fc: Any, ln: int, path: str) -> int:
        if type(fc) is not dict:
            self._err(ln, path, "invalid_function_call", "function_call must be an object")
            return 0
        if type(fc.get("name")) is not str or not fc["name"]:
            self._err(
                ln, f"{path}.name", "invalid_function_call", "function_call.name must be a non-empty string"
            )
        if not _is_json_string(fc.get("arguments", _MISSING)):
            self._err(
                ln,
                f"{path}.arguments",
                "invalid_function_call",
                "function_call.arguments must be a JSON-encoded string",
            )
        return json_tokens(fc)

    def _check_function_def(self, fn: Any, ln: int, path: str, code: str) -> None:
        if type(fn) is not dict:
            self._err(ln, path, code, "function definition must be an object")
            return
        name = fn.get("name")
        if type(name) is not str or not _FUNCTION_NAME.match(name):
            self._err(ln, f"{path}.name", code, "function name must match ^[A-Za-z0-9_-]{1,64}$")
        if "description" in fn and type(fn["description"]) is not str:
            self._err(ln, f"{path}.description", code, "description must be a string")
        if "parameters" in fn and type(fn["parameters"]) is not dict:
            self._err(ln, f"{path}.parameters", code, "parameters must be a JSON Schema object")

    def _check_tools(self, tools: Any, ln: int, path: str) -> int:
        if type(tools) is not list:
            self._err(ln, path, "invalid_tools", "tools must be an array")
            return 0
        for k, tool in enumerate(tools):
            tpath = f"{path}[{k}]"
            if type(tool) is not dict:
                self._err(ln, tpath, "invalid_tools", "tool must be an object")
                continue
            if tool.get("type") != "function":
                self._err(ln, f"{tpath}.type", "invalid_tools", "tool type must be 'function'")
            if "function" not in tool:
                self._err(ln, f"{tpath}.function", "invalid_tools", "tool needs a function definition")
            else:
                self._check_function_def(tool["function"], ln, f"{tpath}.function", "invalid_tools")
        return json_tokens(tools)

    def _check_functions(self, functions: Any, ln: int) -> int:
        if type(functions) is not list or not 1 <= len(functions) <= 128:
            self._err(
                ln, "functions", "invalid_functions", "functions must be an array of 1 to 128 definitions"
            )
            return 0
        for k, fn in enumerate(functions):
            self._check_function_def(fn, ln, f"functions[{k}]", "invalid_functions")
        return json_tokens(functions)

    # ------------------------------------------------------------------ legacy
    def _check_legacy(self, obj: dict[str, Any], ln: int) -> None:
        if not (obj.keys() <= _LEGACY_KEYS):
            self._extra_keys(obj, _LEGACY_KEYS, ln, "")
        prompt = obj.get("prompt", _MISSING)
        completion = obj.get("completion", _MISSING)
        ok = True
        if type(prompt) is not str:
            what = "missing" if prompt is _MISSING else f"a {type(prompt).__name__}, not a string"
            self._err(ln, "prompt", "invalid_prompt_completion", f"prompt is {what}")
            ok = False
        if type(completion) is not str or not completion:
            what = (
                "missing"
                if completion is _MISSING
                else "empty"
                if completion == ""
                else f"a {type(completion).__name__}, not a string"
            )
            self._err(ln, "completion", "invalid_prompt_completion", f"completion is {what}")
            ok = False
        if ok:
            self._account(None, 1, _tt(prompt) + _tt(completion) + TOKENS_PER_REPLY, ln)

    # --------------------------------------------------------------------- DPO
    def _check_dpo(self, obj: dict[str, Any], ln: int) -> None:
        self._note_format("preference", ln)
        if not (obj.keys() <= _DPO_TOP_KEYS):
            self._extra_keys(obj, _DPO_TOP_KEYS, ln, "")
        inp = obj.get("input", _MISSING)
        in_tokens = 0
        n_in: int | None = None
        if type(inp) is not dict:
            what = "missing" if inp is _MISSING else f"a {type(inp).__name__}, not an object"
            self._err(ln, "input", "dpo_missing_input", f"input is {what}")
        else:
            if not (inp.keys() <= _DPO_INPUT_KEYS):
                self._extra_keys(inp, _DPO_INPUT_KEYS, ln, "input.")
            if "tools" in inp:
                in_tokens += self._check_tools(inp["tools"], ln, "input.tools")
            if "parallel_tool_calls" in inp and type(inp["parallel_tool_calls"]) is not bool:
                self._err(
                    ln,
                    "input.parallel_tool_calls",
                    "invalid_parallel_tool_calls",
                    "parallel_tool_calls must be a boolean",
                )
            msgs = inp.get("messages", _MISSING)
            if self._messages_present(msgs, ln, "input.messages"):
                n_in, has_system, has_user, _a, _t, mtokens, last = self._check_messages(
                    msgs, ln, "input.messages", _SUPERVISED_ROLE_KEYS, text_only=True
                )
                in_tokens += mtokens
                if not has_system:
                    self._warn(
                        ln, "input.messages", "missing_system_message", "example has no system message"
                    )
                if not has_user:
                    self._warn(ln, "input.messages", "missing_user_message", "example has no user message")
                if last is not None and last != "user":
                    self._warn(
                        ln,
                        f"input.messages[{len(msgs) - 1}]",
                        "dpo_input_not_ending_with_user",
                        f"input ends with a {last} message; the outputs should answer a user turn",
                    )
        out_tokens = []
        for key in ("preferred_output", "non_preferred_output"):
            out_tokens.append(self._check_dpo_output(obj, key, ln))
        total = in_tokens + sum(out_tokens)
        self._account(None if n_in is None else n_in + 1, 1, total, ln)

    def _check_dpo_output(self, obj: dict[str, Any], key: str, ln: int) -> int:
        out = obj.get(key, _MISSING)
        if type(out) is not list:
            if out is _MISSING:
                old = key.replace("_output", "_completion")
                hint = f" (found the old name {old!r}; rename it to {key!r})" if old in obj else ""
                self._err(ln, key, "dpo_missing_output", f"missing {key}{hint}")
            else:
                self._err(ln, key, "dpo_missing_output", f"{key} must be an array with one assistant message")
            return 0
        if len(out) != 1:
            self._err(ln, key, "dpo_output_length", f"{key} must hold exactly one message, has {len(out)}")
            if not out:
                return 0
        m = out[0]
        path = f"{key}[0]"
        if type(m) is not dict:
            self._err(ln, path, "message_not_object", "output message must be an object")
            return 0
        if m.get("role") != "assistant":
            self._err(
                ln,
                f"{path}.role",
                "dpo_output_not_assistant",
                f"output role must be 'assistant', got {m.get('role')!r}",
            )
        for k in m:
            if k not in _DPO_OUTPUT_KEYS:
                self._err(
                    ln, f"{path}.{k}", "message_unrecognized_key", f"key {k!r} is not allowed on a DPO output"
                )
        for k in ("tool_calls", "function_call"):
            if k in m:
                self._err(
                    ln,
                    f"{path}.{k}",
                    "dpo_non_text_content",
                    f"DPO outputs must be text; {k} is not supported",
                )
        content = m.get("content", _MISSING)
        if type(content) is str and content:
            return TOKENS_PER_MESSAGE + _tt(content)
        if content is _MISSING:
            self._err(ln, f"{path}.content", "message_missing_key", "output message has no content")
            return 0
        if type(content) is list:
            return TOKENS_PER_MESSAGE + self._check_content({}, "assistant", content, ln, path, True)
        self._err(ln, f"{path}.content", "missing_content", "output content must be a non-empty string")
        return 0

    # ---------------------------------------------------------- reinforcement
    def _check_reinforcement(self, obj: dict[str, Any], ln: int) -> None:
        self._note_format("reinforcement", ln)
        tokens = 0
        if "tools" in obj:
            tokens += self._check_tools(obj["tools"], ln, "tools")
        msgs = obj.get("messages", _MISSING)
        if not self._messages_present(msgs, ln, "messages"):
            return
        n, _s, has_user, _a, _t, mtokens, _last = self._check_messages(msgs, ln, "messages", _RFT_ROLE_KEYS)
        if not has_user:
            self._warn(ln, "messages", "missing_user_message", "example has no user message")
        self._account(n, 0, tokens + mtokens, ln)


def validate_path(
    path: str | os.PathLike[str],
    method: str = "supervised",
    model: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Report:
    """Validate a file on disk, reading it in 1 MiB chunks."""
    v = Validator(method=method, model=model, max_bytes=max_bytes)
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(READ_CHUNK)
            if not chunk:
                break
            v.feed(chunk)
    if not os.fspath(path).lower().endswith(".jsonl"):
        v._add(
            WARNING, None, "", "not_jsonl_extension", "fine-tuning files must be uploaded with a .jsonl name"
        )
    return v.finish()


__all__ = [
    "DEFAULT_MAX_BYTES",
    "METHODS",
    "MIN_EXAMPLES",
    "RULES",
    "Problem",
    "Report",
    "Validator",
    "validate_path",
    "text_tokens",
]
