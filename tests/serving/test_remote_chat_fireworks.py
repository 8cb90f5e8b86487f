"""Fireworks specifics: chat on the inference API with the model's resource name, a tuned model that is
not deployed yet answered with a 400 that says how, the deployment through POST /v1/models/{id}/deploy
(a LoRA addon on a base-model deployment) with its status on GET /v1/models/{id}, and model delete."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
import requests

from tests.gateway import Gateway
from tests.serving.remote_chat import FW_ACCOUNT, FW_DEPLOYMENT, MESSAGES, Backend, backend, train


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("gw") / "data") as gateway:
        yield gateway


@pytest.fixture
def fw() -> Iterator[Backend]:
    with backend("fireworks") as b:
        yield b


def headers(fw: Backend) -> dict[str, str]:
    return {**fw.headers, "Authorization": f"Bearer {fw.key}"}


def test_undeployed_then_deployed(fw: Backend, gw: Gateway) -> None:
    client = fw.client(gw)
    tuned = train(client, fw.base_model).fine_tuned_model
    assert tuned.startswith(f"accounts/{FW_ACCOUNT}/models/")
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=tuned, messages=MESSAGES, stream=stream)
        assert caught.value.code == "model_not_deployed"
        assert f"/v1/models/{tuned}/deploy" in caught.value.message and "not deployed" in caught.value.message
    assert client.models.retrieve(tuned).model_extra["deployment_status"] == "not_deployed"  # type: ignore[index]

    missing = requests.post(f"{gw.url}/v1/models/{tuned}/deploy", json={}, headers=headers(fw), timeout=10)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "deployment"
    resp = requests.post(f"{gw.url}/v1/models/{tuned}/deploy", json={"deployment": "base-llama"}, headers=headers(fw),
                         timeout=10)
    assert resp.status_code == 200, resp.text
    deployed = resp.json()
    assert deployed["deployment_status"] == "deploying" and deployed["deployed_model"]["deployment"] == FW_DEPLOYMENT
    (load,) = [r for r in fw.standin.requests if r.path.endswith("/deployedModels")]
    assert load.path == f"/v1/accounts/{FW_ACCOUNT}/deployedModels"
    model = client.models.retrieve(tuned)  # the stand-in's deployment comes up as it is looked at
    assert model.model_extra["deployment_status"] == "deployed"  # type: ignore[index]
    assert model.model_extra["deployments"][0]["deployment"] == FW_DEPLOYMENT  # type: ignore[index]
    answer = client.chat.completions.create(model=tuned, messages=MESSAGES)
    assert answer.choices[0].message.content == fw.standin.chat.reply
    assert fw.sent_body()["model"] == tuned


def test_unknown_model_stays_a_404_and_short_ids_are_the_accounts(fw: Backend, gw: Gateway) -> None:
    client = fw.client(gw)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nothing-here", messages=MESSAGES)
    assert fw.sent_body()["model"] == f"accounts/{FW_ACCOUNT}/models/nothing-here"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=fw.model, messages=MESSAGES, logprobs=True, top_logprobs=6)
    assert caught.value.param == "top_logprobs"
    client.chat.completions.create(model=fw.model, messages=MESSAGES, logprobs=True, top_logprobs=2,
                                   extra_body={"top_k": 5})
    assert fw.sent_body()["top_k"] == 5 and fw.sent_body()["top_logprobs"] == 2


def test_models_list_and_delete(fw: Backend, gw: Gateway) -> None:
    client = fw.client(gw)
    tuned = train(client, fw.base_model).fine_tuned_model
    listed = {m.id: m for m in client.models.list()}
    assert tuned in listed and listed[tuned].owned_by == FW_ACCOUNT
    assert (listed[tuned].model_extra or {})["kind"] == "HF_PEFT_ADDON"
    assert client.models.delete(tuned).deleted is True
    assert tuned not in [m.id for m in client.models.list()]
