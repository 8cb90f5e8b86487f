"""The validator's fast path for supervised chat lines (msgspec typed decoding).

Most lines of a chat training file are ``{"messages": [...]}`` with system, user and assistant
messages whose ``content`` is a non-empty string. For those, :data:`decode` parses the line and checks
its types in C (JSON syntax, UTF-8, no key outside the role's schema, non-empty string content, a
``weight`` of 0 or 1, a string ``name``), without building a dict per object. Anything the schema does
not take (a tool call, content parts, an unknown key, ``null`` where a string belongs, invalid JSON,
...) raises, and the validator runs its Python rules on that line instead, so every problem, message
and line number comes from those rules alone.

The schema only ever accepts lines that the Python rules accept without an error (tests/data prove it
on the rules' corpus and on generated lines); the validator still sends a line through the Python
rules when it would draw a warning (no system or user message, nothing trained, over the context), so
the fast path never reports anything itself. Where msgspec and orjson both accept a line they read
the same values (the last of duplicate keys wins in both).
"""

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, UnsetType

# Each message struct has ``bit`` (which role: the example needs all three to draw no warning) and
# ``weight`` (what it adds to the trained turns: an assistant without ``weight`` trains, no other role does).


def _schema(content: Any) -> Any:
    """The decoder of an example whose message contents have type ``content``. Per role a struct
    tagged by ``role`` with only that role's keys (tool, function and developer messages, refusals and
    tool calls are left to the Python rules)."""
    roles = []
    for role, bit in (("system", 1), ("user", 2), ("assistant", 4)):
        fields: list[Any] = [("content", content), ("name", str | UnsetType, UNSET)]
        # an assistant's weight: an int 0 or 1 (1.0 or true go to the Python rules); absent trains
        namespace: dict[str, Any] = {"bit": bit, "weight": 0}
        if role == "assistant":
            fields.append(("weight", Literal[0, 1], 1))
            del namespace["weight"]
        roles.append(msgspec.defstruct(role.title(), fields, namespace=namespace, tag=role, tag_field="role",
                                       forbid_unknown_fields=True, gc=False))
    messages = Annotated[list[roles[0] | roles[1] | roles[2]], Meta(min_length=1)]  # type: ignore[valid-type]
    example = msgspec.defstruct("Example", [("messages", messages)], forbid_unknown_fields=True, gc=False)
    return msgspec.json.Decoder(example).decode


#: Contents as ``str``: msgspec checks they are non-empty and valid UTF-8. Any line.
decode = _schema(Annotated[str, Meta(min_length=1)])
#: Contents as the raw JSON text, never made into ``str`` (a third of the work): only for lines with no
#: backslash (no escapes, so a string's UTF-8 length is its raw length minus the quotes) whose bytes
#: were found valid UTF-8 beforehand (msgspec does not check the UTF-8 of raw values). The caller checks
#: each raw content is a non-empty string: ``"`` first and longer than ``""``.
decode_raw = _schema(Raw)
Rejected = (msgspec.DecodeError, msgspec.ValidationError, UnicodeEncodeError)
ALL_ROLES = 1 | 2 | 4

__all__ = ["ALL_ROLES", "UNSET", "Rejected", "decode", "decode_raw"]
