"""Fixtures of the webhook tests (the parts themselves are in helpers.py)."""

from tests.webhooks.helpers import receiver, standin

__all__ = ["receiver", "standin"]
