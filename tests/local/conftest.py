from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# One torch thread per training child: tiny models on a shared 2-core box.
os.environ.setdefault("TUNEGATE_TRAINER_THREADS", "1")

DEMO_DATA = Path(__file__).resolve().parents[2] / "tunegate" / "localjobs" / "demo_data.jsonl"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from tunegate.trainer import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny-llama"))


@pytest.fixture
def gateway(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.gateway import Gateway

    # The tiny model is built under the session's temporary root: the operator's model root here.
    with Gateway(tmp_path / "data", local_model_roots=[tmp_path_factory.getbasetemp()]) as gw:
        yield gw


@pytest.fixture
def sdk(gateway: Any) -> Any:
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused",
                         default_headers={"x-portkey-provider": "local"}, max_retries=0, timeout=60)


@pytest.fixture
def training_file(sdk: Any) -> str:
    with open(DEMO_DATA, "rb") as fh:
        return str(sdk.files.create(file=("demo.jsonl", fh), purpose="fine-tune").id)


def wait_until(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(interval)
