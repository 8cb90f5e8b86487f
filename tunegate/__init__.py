"""tunegate: one OpenAI-compatible fine-tuning API over every provider."""

__version__ = "0.1.0"
