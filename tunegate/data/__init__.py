"""Fine-tuning data: streaming validation, token estimates and provider converters."""

from typing import TYPE_CHECKING, Any

from .tokens import context_window, messages_tokens, text_tokens
from .validator import RULES, Problem, Report, Validator, validate_path

if TYPE_CHECKING:
    from .converters import TARGETS, ConversionError, aconvert, convert_lines

_CONVERTERS = frozenset({"TARGETS", "ConversionError", "aconvert", "convert_lines"})


def __getattr__(name: str) -> Any:
    # The converters load on first use: the upload validation helper (tunegate.data.worker) imports
    # this package for the validator alone and stays ~4 MB smaller without them (hashlib's OpenSSL).
    if name in _CONVERTERS:
        from . import converters

        return getattr(converters, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RULES",
    "TARGETS",
    "ConversionError",
    "Problem",
    "Report",
    "Validator",
    "aconvert",
    "context_window",
    "convert_lines",
    "messages_tokens",
    "text_tokens",
    "validate_path",
]
