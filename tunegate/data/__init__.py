"""Fine-tuning data: streaming validation, token estimates and provider converters."""

from .converters import TARGETS, ConversionError, aconvert, convert_lines
from .tokens import context_window, messages_tokens, text_tokens
from .validator import RULES, Problem, Report, Validator, validate_path

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
