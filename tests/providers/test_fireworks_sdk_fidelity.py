"""Fireworks: what its own SDK (PyPI fireworks-ai==1.2.30; fw-ai-external/python-sdk) shows about the real
wire (issue 13, item 4). tunegate/providers/fireworks/MAPPING.md lists each finding with its source."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway import Gateway
from tests.standins.fireworks import FireworksStandIn
from tests.standins.openai_like import ServerThread
from tunegate.providers.fireworks import Fireworks

ACCOUNT = "acme-ai"
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"
EXAMPLES = b"".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}"},
                                             {"role": "assistant", "content": f"{i}"}]}).encode() + b"\n"
                    for i in range(12))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[FireworksStandIn, openai.OpenAI]]:
    standin = FireworksStandIn(account=ACCOUNT)
    server = ServerThread(standin.app())
    standin.url = server.url
    with server, Gateway(tmp_path / "data") as gw:
        headers = {"x-portkey-provider": "fireworks", "x-portkey-custom-host": server.url + "/v1",
                   "x-portkey-fireworks-account-id": ACCOUNT, "x-portkey-wandb-api-key": WANDB_KEY}
        yield standin, openai.OpenAI(base_url=gw.url + "/v1", api_key=standin.api_key, default_headers=headers,
                                     max_retries=0)


def created_bodies(standin: FireworksStandIn) -> list[Any]:
    return [json.loads(r.body) for r in standin.requests
            if r.method == "POST" and re.search(r"/supervisedFineTuningJobs$", r.path)]


def test_wandb_integration_becomes_wandb_config(env: tuple[FireworksStandIn, openai.OpenAI]) -> None:
    """fireworks-ai 1.2.30 types/supervised_fine_tuning_job_create_params.py `wandbConfig`
    (types/shared_params/wandb_config.py: apiKey, enabled, entity, project, runId)."""
    standin, client = env
    f = client.files.create(file=("train.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=f.id, model="qwen3-8b", integrations=[
        {"type": "wandb", "wandb": {"project": "ft-runs", "entity": "acme"}}])
    (body,) = created_bodies(standin)
    assert body["wandbConfig"] == {"enabled": True, "apiKey": WANDB_KEY, "project": "ft-runs", "entity": "acme"}
    assert job.integrations is not None and job.integrations[0].type == "wandb"
    assert (job.integrations[0].wandb.project, job.integrations[0].wandb.entity) == ("ft-runs", "acme")
    again = client.fine_tuning.jobs.retrieve(job.id)
    assert again.integrations is not None and again.integrations[0].wandb.project == "ft-runs"
    # Fireworks may echo the key in wandbConfig; it never reaches the client.
    assert standin.jobs[job.id]["wandbConfig"]["apiKey"] == WANDB_KEY
    assert WANDB_KEY not in json.dumps(job.model_dump()) + json.dumps(again.model_dump())


@pytest.mark.parametrize(("integrations", "param"), [
    ([{"type": "wandb", "wandb": {"project": "p", "name": "run-1"}}], "integrations[0].wandb.name"),
    ([{"type": "wandb", "wandb": {"project": "p", "tags": ["a"]}}], "integrations[0].wandb.tags"),
    ([{"type": "wandb", "wandb": {"project": "p"}}] * 2, "integrations"),
    ([{"type": "wandb", "wandb": {}}], "integrations[0].wandb.project"),
])
def test_wandb_values_fireworks_cannot_hold_are_a_400(env: tuple[FireworksStandIn, openai.OpenAI],
                                                       integrations: list[Any], param: str) -> None:
    standin, client = env
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(training_file="file-x", model="qwen3-8b", integrations=integrations)
    assert bad.value.body["param"] == param  # type: ignore[index]
    assert not created_bodies(standin)


def test_single_request_upload_stays_under_150_mb() -> None:
    """fireworks-ai 1.2.30 resources/datasets.py `upload`: "can handle file sizes up to 150Mb"; the
    unit is not given, so a file over 150 * 10**6 bytes goes through the signed-URL flow."""
    assert Fireworks.small_upload_max == 150_000_000


def test_signed_upload_refuses_a_dataset_that_needs_encryption(env: tuple[FireworksStandIn, openai.OpenAI],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """fireworks-ai 1.2.30 lib/dataset_upload.py: a signed upload only for plaintext `encryptionState`."""
    standin, client = env
    monkeypatch.setattr(Fireworks, "small_upload_max", 100)  # this file goes through the signed URL
    standin.encryption_state = "ENCRYPTION_STATE_CMEK"
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("big.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune")
    assert bad.value.body["code"] == "unsupported_dataset_encryption"  # type: ignore[index]
    assert not [r for r in standin.requests if r.method == "PUT" or r.path.endswith(":getUploadEndpoint")]
    assert standin.datasets == {}  # the dataset made for it is gone again
    standin.encryption_state = "ENCRYPTION_STATE_PLAINTEXT"
    assert client.files.create(file=("big.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune").status == "processed"
