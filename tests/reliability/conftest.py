"""Reliability tests: light ones run in the normal suite; ``@pytest.mark.heavy`` ones only with
``TUNEGATE_HEAVY=1`` (see docs/reliability.md)."""

from __future__ import annotations

import os

import pytest

HEAVY = os.environ.get("TUNEGATE_HEAVY") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "heavy: long reliability runs; enabled by TUNEGATE_HEAVY=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HEAVY:
        return
    skip = pytest.mark.skip(reason="heavy reliability test: set TUNEGATE_HEAVY=1")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)
