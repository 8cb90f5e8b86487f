from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, StandIn

SPECS = Path(__file__).resolve().parents[1].parent / "shared" / "specs"


@pytest.fixture(scope="session")
def specs_dir() -> Path:
    if not SPECS.exists():
        pytest.skip("../shared/specs is not beside the checkout")
    return SPECS


@pytest.fixture
def standin() -> Iterator[tuple[StandIn, str]]:
    s = StandIn()
    with ServerThread(s.app()) as server:
        yield s, server.url


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with Gateway(tmp_path / "data", database_url=os.environ.get("TUNEGATE_TEST_DATABASE_URL")) as gw:
        yield gw
