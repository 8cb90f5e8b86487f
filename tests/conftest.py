from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, StandIn

# The `store` fixture (SQLite, and PostgreSQL where TUNEGATE_TEST_POSTGRES_URL is set).
pytest_plugins = ["tests.stores"]

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


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto in server mode: a real HTTP server speaking the AWS protocols (S3, Bedrock), on loopback."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
