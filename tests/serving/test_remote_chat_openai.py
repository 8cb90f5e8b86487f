"""OpenAI and Azure OpenAI specifics of chat and models: pass-through on OpenAI, the deployment on Azure
(GA path, v1 model), Azure's model objects in OpenAI's shape, and what the data plane cannot do."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
import requests

from tests.gateway import Gateway
from tests.serving.remote_chat import AZURE_DEPLOYMENT, MESSAGES, Backend, backend, train


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("gw") / "data") as gateway:
        yield gateway


@pytest.fixture
def oa() -> Iterator[Backend]:
    with backend("openai") as b:
        yield b


@pytest.fixture(params=["azure-ga", "azure-v1"])
def az(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with backend(request.param) as b:
        yield b


def test_openai_passes_every_parameter_through(oa: Backend, gw: Gateway) -> None:
    oa.client(gw).chat.completions.create(model=oa.model, messages=MESSAGES, seed=5, logprobs=True, top_logprobs=2,
                                          user="u-1", n=2, tools=[{"type": "function", "function": {"name": "f"}}],
                                          extra_headers={"x-portkey-openai-organization": "org-9"})
    (sent,) = oa.chat_requests()
    body = json.loads(sent.body)
    assert {k: body[k] for k in ("seed", "logprobs", "top_logprobs", "user", "n")} == {
        "seed": 5, "logprobs": True, "top_logprobs": 2, "user": "u-1", "n": 2}
    assert body["tools"] == [{"type": "function", "function": {"name": "f"}}]
    assert sent.headers["OpenAI-Organization"] == "org-9"
    assert sent.headers["Authorization"] == f"Bearer {oa.key}"


def test_openai_models_list_retrieve_and_delete_of_a_tuned_model(oa: Backend, gw: Gateway) -> None:
    client = oa.client(gw)
    tuned = train(client, oa.base_model).fine_tuned_model
    assert tuned in [m.id for m in client.models.list()]
    assert client.models.retrieve(tuned).owned_by == "user-standin"
    assert client.models.delete(tuned).deleted is True
    assert tuned not in [m.id for m in client.models.list()]
    before = len(oa.standin.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        client.models.delete(oa.model)  # a base model is OpenAI's: refused without a round trip
    assert refused.value.code == "model_not_deletable"
    assert len(oa.standin.requests) == before


def test_azure_chat_goes_to_the_deployment(az: Backend, gw: Gateway) -> None:
    answer = az.client(gw).chat.completions.create(model="whatever-the-client-says", messages=MESSAGES)
    assert answer.model == "gpt-4o-mini"  # the deployment's model, as Azure answers
    (sent,) = az.chat_requests()
    assert sent.path == az.chat_path and sent.headers["api-key"] == az.key
    if az.name == "azure-ga":
        assert sent.query["api-version"] == "2024-10-21"
    else:
        assert json.loads(sent.body)["model"] == AZURE_DEPLOYMENT  # v1: the deployment travels as the model


def test_azure_without_a_deployment(gw: Gateway) -> None:
    with backend("azure-ga") as ga:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=ga.key, max_retries=0,
                               default_headers={"x-portkey-provider": "azure-openai", "x-portkey-custom-host": ga.host})
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert caught.value.code == "missing_provider_option"
        assert "x-portkey-azure-deployment-id" in caught.value.message
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                           extra_headers={"x-portkey-azure-deployment-id": "a/../b"})
        assert bad.value.code == "invalid_provider_option"
        assert ga.chat_requests() == []
    with backend("azure-v1") as v1:  # v1 reads the model as the deployment's name
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=v1.key, max_retries=0, default_headers={
            "x-portkey-provider": "azure-openai", "x-portkey-custom-host": v1.host, "x-portkey-azure-api-version": "v1"})
        assert client.chat.completions.create(model=AZURE_DEPLOYMENT, messages=MESSAGES).choices[0].message.content


def test_azure_models_in_openai_shape_and_no_delete_or_deploy(az: Backend, gw: Gateway) -> None:
    client = az.client(gw)
    tuned = train(client, az.base_model).fine_tuned_model
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == {"gpt-4o-mini-2024-07-18", tuned}
    got = client.models.retrieve(tuned)
    assert got.object == "model" and got.created > 0
    if az.name == "azure-ga":  # Azure's Model: created_at, fine_tune, status … → OpenAI's created, owned_by
        assert got.owned_by == "organization-owner" and listed["gpt-4o-mini-2024-07-18"].owned_by == "azure-openai"
        assert (got.model_extra or {})["status"] == "succeeded"
    before = len(az.standin.requests)
    with pytest.raises(openai.BadRequestError) as no_delete:
        client.models.delete(tuned)
    assert "data plane has no model delete" in no_delete.value.message
    resp = requests.post(f"{gw.url}/v1/models/{tuned}/deploy", json={}, headers=az.headers, timeout=10)
    assert resp.status_code == 400 and "management.azure.com" in resp.json()["error"]["message"]
    assert len(az.standin.requests) == before
