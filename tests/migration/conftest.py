"""A gateway on a real socket between an OpenAI-shaped source (``tests/standins/openai_like.py``, seeded
with several jobs and files through the gateway) and a Together stand-in, with a tunegate key and one
stored connection for each; the ``local`` provider trains the tiny model."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, StandIn
from tests.standins.together import TogetherStandIn

os.environ.setdefault("TUNEGATE_TRAINER_THREADS", "1")  # tiny models on a shared 2-core box

DEMO = Path(__file__).resolve().parents[2] / "tunegate" / "localjobs" / "demo_data.jsonl"
VALIDATION = b"".join(json.dumps({"messages": [{"role": "user", "content": f"Echo {i}"},
                                               {"role": "assistant", "content": f"{i}"}]}).encode() + b"\n"
                      for i in range(4))
DPO = b"".join(json.dumps({"input": {"messages": [{"role": "user", "content": f"Greet {i}"}]},
                           "preferred_output": [{"role": "assistant", "content": f"Hello {i}!"}],
                           "non_preferred_output": [{"role": "assistant", "content": "go away"}]}).encode() + b"\n"
               for i in range(12))
SUFFIX = "customer-support-bot-v2"  # 23 characters: longer than Mistral's 18


@dataclass
class Env:
    gateway: Gateway
    source: StandIn
    together: TogetherStandIn
    key: str
    tmp: Path
    jobs: dict[str, str] = field(default_factory=dict)  # name → source job id

    @property
    def cli_env(self) -> dict[str, str]:
        return {"TUNEGATE_URL": self.gateway.url, "TUNEGATE_API_KEY": self.key, "COLUMNS": "200"}

    def sdk(self, **headers: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.url + "/v1", api_key=self.key, default_headers=headers,
                             max_retries=0, timeout=60)


def seed(env: Env) -> None:
    """Three jobs on the OpenAI side, created through the gateway as a team would have: a supervised job with
    a validation file, a DPO job, and one that failed; each polled until it ends (the stand-in moves a job
    one step per retrieve), so the succeeded ones have result files."""
    sdk = env.sdk(**{"x-portkey-provider": "openai", "x-portkey-virtual-key": "src"})
    train = sdk.files.create(file=("support.jsonl", DEMO.read_bytes()), purpose="fine-tune").id
    valid = sdk.files.create(file=("support-valid.jsonl", VALIDATION), purpose="fine-tune").id
    prefs = sdk.files.create(file=("prefs.jsonl", DPO), purpose="fine-tune",
                             extra_headers={"x-portkey-validation-method": "dpo"}).id
    sup = sdk.fine_tuning.jobs.create(
        model="gpt-4o-mini-2024-07-18", training_file=train, validation_file=valid, suffix=SUFFIX, seed=7,
        metadata={"team": "support"},
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0}}})
    dpo = sdk.fine_tuning.jobs.create(
        model="gpt-4o-2024-08-06", training_file=prefs, suffix="prefs", seed=11,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "beta": 0.2}}})
    failed = sdk.fine_tuning.jobs.create(model="fail-mini", training_file=train)
    for name, job in (("supervised", sup), ("dpo", dpo), ("failed", failed)):
        for _ in range(3):
            sdk.fine_tuning.jobs.retrieve(job.id)
        env.jobs[name] = job.id


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from tunegate.trainer import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny-llama"))


@pytest.fixture
def env(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    source, together = StandIn(mode="openai"), TogetherStandIn()
    with ServerThread(source.app()) as src, ServerThread(together.app()) as tgt, \
            Gateway(tmp_path / "data", local_model_roots=[tmp_path_factory.getbasetemp()]) as gw:
        async def setup(store: Any) -> str:
            await store.add_connection("src", "openai", {"api_key": source.api_key}, base_url=src.url)
            await store.add_connection("tgt", "together-ai", {"api_key": together.api_key}, base_url=tgt.url + "/v1")
            await store.add_connection("here", "local", {})  # a keyed gateway names every provider it serves
            _, full = await store.create_key("migration", ["*"])
            return str(full)

        e = Env(gw, source, together, gw.with_store(setup), tmp_path)
        seed(e)
        yield e
