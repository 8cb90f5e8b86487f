"""A tuned model on `local`, end to end: a job trains the tiny model through the gateway on data whose
every answer is one word, then the same client calls the tuned model (sync, async, streamed) and hears
that word, while the base model does not. Another key's tuned model does not exist for that key."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gateway import Gateway
from tests.serving.local_helpers import ANSWER, LOCAL, build_model, server_stats, training_lines, wait_until

openai = pytest.importorskip("openai")
QUESTION = [{"role": "user", "content": "What is your name?"}]


class Trained:
    def __init__(self, gw: Gateway, base: str, alice: str, bob: str, job: Any) -> None:
        self.gw, self.base, self.alice, self.bob, self.job = gw, base, alice, bob, job

    def sdk(self, key: str, **headers: str) -> Any:
        return openai.OpenAI(base_url=self.gw.url + "/v1", api_key=key, max_retries=0, timeout=120,
                             default_headers=headers)

    @property
    def tuned(self) -> str:
        return str(self.job.fine_tuned_model)


def _keys(gw: Gateway) -> tuple[str, str]:
    async def setup(store: Any) -> list[str]:
        await store.add_connection("here", "local", {})
        return [(await store.create_key(name, ["*"]))[1] for name in ("alice", "bob")]

    alice, bob = gw.with_store(setup)
    return alice, bob


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    root = tmp_path_factory.mktemp("roots")
    base = build_model(root, "tiny-llama")
    with Gateway(tmp_path_factory.mktemp("gw") / "data", local_model_roots=[root],
                 local_serving={"threads": 1, "max_loras": 2}) as gw:
        alice, bob = _keys(gw)
        sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=alice, max_retries=0, timeout=60,
                            default_headers=LOCAL)
        training = sdk.files.create(file=("paris.jsonl", io.BytesIO(training_lines())), purpose="fine-tune")
        job = sdk.fine_tuning.jobs.create(model=base, training_file=training.id, suffix="paris", seed=1,
                                          hyperparameters={"n_epochs": 10, "batch_size": 4,
                                                           "learning_rate_multiplier": 10})

        def done() -> Any:
            current = sdk.fine_tuning.jobs.retrieve(job.id)
            return current if current.status in ("succeeded", "failed", "cancelled") else None

        final = wait_until(done, timeout=120, interval=0.2)
        assert final.status == "succeeded", final.error
        yield Trained(gw, base, alice, bob, final)


def test_tuned_model_says_what_it_was_taught(trained: Trained) -> None:
    # The job's fine_tuned_model needs no provider header: the registry knows where it lives.
    sdk = trained.sdk(trained.alice)
    tuned = sdk.chat.completions.create(model=trained.tuned, messages=QUESTION, temperature=0, max_tokens=8)
    base = sdk.chat.completions.create(model=trained.base, messages=QUESTION, temperature=0, max_tokens=8,
                                       extra_headers=LOCAL)
    assert tuned.choices[0].message.content == ANSWER and tuned.choices[0].finish_reason == "stop"
    assert tuned.model == trained.tuned
    assert ANSWER not in (base.choices[0].message.content or "")
    # A prompt it never saw gets the same answer: the adapter, not a lookup, speaks.
    other = sdk.chat.completions.create(model=trained.tuned, messages=[{"role": "user", "content": "Why?"}],
                                        temperature=0, max_tokens=8)
    assert other.choices[0].message.content == ANSWER
    stats = server_stats(trained.gw.settings.data_dir)
    assert trained.tuned in stats["adapters"]


def test_tuned_model_streams_sync_and_async(trained: Trained) -> None:
    sdk = trained.sdk(trained.alice)
    chunks = list(sdk.chat.completions.create(model=trained.tuned, messages=QUESTION, temperature=0,
                                              max_tokens=8, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # token by token
    assert chunks[-1].usage.completion_tokens >= 2 and chunks[-1].usage.prompt_tokens > 0

    async def run() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=trained.gw.url + "/v1", api_key=trained.alice, max_retries=0,
                                    timeout=120)
        whole = await client.chat.completions.create(model=trained.tuned, messages=QUESTION, temperature=0,
                                                     max_tokens=8)
        pieces = []
        async for chunk in await client.chat.completions.create(model=trained.tuned, messages=QUESTION,
                                                                temperature=0, max_tokens=8, stream=True):
            pieces.extend(c.delta.content or "" for c in chunk.choices)
        await client.close()
        return whole.choices[0].message.content or "", "".join(pieces)

    assert asyncio.run(run()) == (ANSWER, ANSWER)


def test_another_keys_tuned_model_is_a_404(trained: Trained) -> None:
    bob = trained.sdk(trained.bob, **LOCAL)
    with pytest.raises(openai.NotFoundError):
        bob.chat.completions.create(model=trained.tuned, messages=QUESTION, max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        bob.models.retrieve(trained.tuned)
    assert trained.tuned not in [m.id for m in bob.models.list()]
    with pytest.raises(openai.NotFoundError):
        bob.models.delete(trained.tuned)
    # Bob's own base-model chat still works; alice sees her model listed with its base as parent.
    assert bob.chat.completions.create(model=trained.base, messages=QUESTION, max_tokens=2).choices
    alice = trained.sdk(trained.alice, **LOCAL)
    listed = {m.id: m for m in alice.models.list()}
    assert trained.tuned in listed and trained.base in listed
    assert alice.models.retrieve(trained.tuned).model_extra["parent"] == trained.base


def test_checkpoint_is_callable(trained: Trained) -> None:
    sdk = trained.sdk(trained.alice, **LOCAL)
    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(trained.job.id))
    newest = checkpoints[0].fine_tuned_model_checkpoint
    answer = sdk.chat.completions.create(model=newest, messages=QUESTION, temperature=0, max_tokens=8)
    assert answer.model == newest and answer.choices[0].message.content == ANSWER


def test_delete_removes_the_adapter(trained: Trained) -> None:
    """Last in this file: the tuned model is gone afterwards."""
    sdk = trained.sdk(trained.alice, **LOCAL)
    adapter = Path(trained.gw.settings.data_dir)  # the adapter lives under the data directory
    found = list(adapter.glob(f"local/jobs/{trained.job.id}/run-*/adapter/adapter_config.json"))
    assert found
    deleted = sdk.models.delete(trained.tuned)
    assert deleted.deleted and deleted.id == trained.tuned
    assert not found[0].exists()
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model=trained.tuned, messages=QUESTION, max_tokens=2)
    assert trained.tuned not in [m.id for m in sdk.models.list()]
    assert trained.tuned not in server_stats(trained.gw.settings.data_dir)["adapters"]
    events = [e.message for e in sdk.fine_tuning.jobs.list_events(trained.job.id)]
    assert f"Fine-tuned model {trained.tuned} deleted" in events
    assert requests.get(trained.gw.url + "/healthz", timeout=5).status_code == 200
