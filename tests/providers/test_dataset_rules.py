"""Dataset rules belong to the job, per provider: a 5-example file uploads on every backend; a job naming it
as `training_file` is a 400 (`param: training_file`, the count and the provider's minimum) where that
provider's minimum is larger; the same file works as `validation_file`. The stand-ins are the ones each
provider's own tests use."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway import Gateway
from tests.providers.test_bedrock import NOVA, aws, gw, headers_for, standin  # noqa: F401  (fixtures)
from tests.providers.test_vertex_ai import BASE_MODEL, Env, env, gcs  # noqa: F401  (fixtures)
from tests.standins.fireworks import FireworksStandIn
from tests.standins.mistral import MistralStandIn
from tests.standins.openai_like import ServerThread, StandIn
from tests.standins.together import TogetherStandIn
from tunegate.providers import REGISTRY
from tunegate.providers.rules import DatasetRules, FileFacts, check_epochs, check_file


def chat(n: int) -> bytes:
    return b"".join(json.dumps({"messages": [{"role": "system", "content": "Be terse."},
                                             {"role": "user", "content": f"Say {i}"},
                                             {"role": "assistant", "content": f"{i}"}]}).encode() + b"\n"
                    for i in range(n))


FIVE = chat(5)
TWELVE = chat(12)


def client(gw_url: str, api_key: str, headers: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw_url + "/v1", api_key=api_key, default_headers=headers, max_retries=0)


def upload(sdk: openai.OpenAI, data: bytes) -> str:
    return sdk.files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune").id


def check_backend(sdk: openai.OpenAI, model: str, minimum: int | None, provider: str,
                  creates: list[Any] | None = None) -> None:
    """The contract on one backend: the 5-example upload succeeds; as training file it is refused exactly
    when the provider's minimum is above 5 (before anything reaches the provider); as validation file it
    is accepted."""
    small = upload(sdk, FIVE)
    before = len(creates) if creates is not None else 0
    if minimum is not None and minimum > 5:
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.fine_tuning.jobs.create(model=model, training_file=small)
        err = refused.value.body
        assert isinstance(err, dict)
        assert (err["param"], err["code"], err["type"]) == ("training_file", "invalid_n_examples",
                                                           "invalid_request_error")
        assert f"'{small}' has 5 example(s)" in err["message"] and f"at least {minimum}" in err["message"]
        assert f"'{provider}'" in err["message"]
        if creates is not None:
            assert len(creates) == before  # the provider never saw the create
    else:
        assert sdk.fine_tuning.jobs.create(model=model, training_file=small).training_file == small
    big = upload(sdk, TWELVE)
    job = sdk.fine_tuning.jobs.create(model=model, training_file=big, validation_file=small)
    assert job.validation_file == small


# ---- OpenAI and Azure OpenAI (the OpenAI-like stand-in) ------------------------------------------

@pytest.fixture(params=["openai", "azure-ga", "azure-v1"])
def openai_like(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[StandIn, openai.OpenAI]]:
    mode = request.param
    fake = StandIn(mode=mode)
    headers = {"openai": {"x-portkey-provider": "openai"},
               "azure-ga": {"x-portkey-provider": "azure-openai"},
               "azure-v1": {"x-portkey-provider": "azure-openai", "x-portkey-azure-api-version": "v1"}}[mode]
    with ServerThread(fake.app()) as upstream, Gateway(tmp_path / "data") as gateway:
        yield fake, client(gateway.url, fake.api_key, {**headers, "x-portkey-custom-host": upstream.url + fake.prefix})


def test_openai_and_azure(openai_like: tuple[StandIn, openai.OpenAI]) -> None:
    fake, sdk = openai_like
    provider = "openai" if fake.mode == "openai" else "azure-openai"
    creates = [r for r in fake.requests if r.method == "POST" and r.path.endswith("/fine_tuning/jobs")]
    check_backend(sdk, "gpt-4o-mini-2024-07-18", 10, provider)
    assert len([r for r in fake.requests if r.method == "POST" and r.path.endswith("/fine_tuning/jobs")]) == \
        len(creates) + 1  # only the job with the 12-example training file reached the provider


# ---- Together, Fireworks, Mistral ----------------------------------------------------------------

def test_together(tmp_path: Path) -> None:
    fake = TogetherStandIn()
    with ServerThread(fake.app()) as upstream, Gateway(tmp_path / "data") as gateway:
        sdk = client(gateway.url, fake.api_key, {"x-portkey-provider": "together-ai",
                                                 "x-portkey-custom-host": upstream.url + "/v1"})
        check_backend(sdk, "meta-llama/Llama-3-8b", 1, "together-ai")  # Together's minimum is 1


def test_fireworks(tmp_path: Path) -> None:
    fake = FireworksStandIn(account="acme-ai")
    server = ServerThread(fake.app())
    fake.url = server.url
    with server, Gateway(tmp_path / "data") as gateway:
        sdk = client(gateway.url, fake.api_key, {"x-portkey-provider": "fireworks-ai",
                                                 "x-portkey-custom-host": server.url + "/v1",
                                                 "x-portkey-fireworks-account-id": "acme-ai"})
        check_backend(sdk, "accounts/fireworks/models/qwen3-8b", 3, "fireworks-ai")
        # 2 examples are below Fireworks's 3
        two = upload(sdk, chat(2))
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.fine_tuning.jobs.create(model="accounts/fireworks/models/qwen3-8b", training_file=two)
        assert "at least 3" in refused.value.body["message"]  # type: ignore[index]


def test_mistral(tmp_path: Path) -> None:
    fake = MistralStandIn()
    with ServerThread(fake.app()) as upstream, Gateway(tmp_path / "data") as gateway:
        sdk = client(gateway.url, fake.api_key, {"x-portkey-provider": "mistral-ai",
                                                 "x-portkey-custom-host": upstream.url + "/v1"})
        check_backend(sdk, "open-mistral-7b", None, "mistral-ai")  # no published minimum: Mistral decides


# ---- Bedrock (Nova: 8) and Vertex AI (no published minimum) ---------------------------------------

def test_bedrock_nova(standin: tuple[Any, str], gw: Gateway) -> None:  # noqa: F811
    fake, url = standin
    sdk = client(gw.url, "unused", headers_for(url))
    check_backend(sdk, NOVA, 8, "bedrock")
    assert len([r for r in fake.requests if r.method == "POST" and r.path.endswith("model-customization-jobs")]) == 1


def test_vertex_ai(env: Env) -> None:  # noqa: F811
    check_backend(env.sdk(), BASE_MODEL, None, "vertex-ai")


# ---- local and tunegate (files in the gateway's own store) --------------------------------------

def test_local_and_tunegate(tmp_path: Path) -> None:
    with Gateway(tmp_path / "data") as gateway:
        managed = client(gateway.url, "unused", {"x-portkey-provider": "tunegate"})
        small = upload(managed, FIVE)  # tunegate only keeps files: the upload is the whole contract there
        report = gateway.with_store(lambda s: s.get_managed_file(small))["report"]
        assert report["ok"] and report["stats"]["examples"] == 5
        assert [w["code"] for w in report["warnings"]] == ["too_few_examples"]
        sdk = client(gateway.url, "unused", {"x-portkey-provider": "local"})
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.fine_tuning.jobs.create(model="any-local-model", training_file=small)
        assert refused.value.body["param"] == "training_file"  # type: ignore[index]
        assert "5 example(s)" in refused.value.body["message"]  # type: ignore[index]
        check_backend(sdk, "any-local-model", 10, "local")


def test_a_managed_file_is_checked_against_the_provider_it_goes_to(tmp_path: Path) -> None:
    """Upload once to the gateway's store, train anywhere: the count is checked for the provider named at
    job time (OpenAI: 10), and nothing is pushed to the provider for a refused job."""
    fake = StandIn()
    with ServerThread(fake.app()) as upstream, Gateway(tmp_path / "data") as gateway:
        small = upload(client(gateway.url, "unused", {"x-portkey-provider": "tunegate"}), FIVE)
        sdk = client(gateway.url, fake.api_key, {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream.url})
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=small)
        assert refused.value.body["code"] == "invalid_n_examples"  # type: ignore[index]
        assert not fake.files  # no copy was pushed
        together = TogetherStandIn()
        with ServerThread(together.app()) as t_up:
            t_sdk = client(gateway.url, together.api_key, {"x-portkey-provider": "together-ai",
                                                           "x-portkey-custom-host": t_up.url + "/v1"})
            job = t_sdk.fine_tuning.jobs.create(model="meta-llama/Llama-3-8b", training_file=small)
            assert job.id in together.jobs


def test_a_file_the_gateway_never_validated_is_left_to_the_provider(tmp_path: Path) -> None:
    fake = StandIn()
    with ServerThread(fake.app()) as upstream, Gateway(tmp_path / "data", validate_uploads=False) as gateway:
        sdk = client(gateway.url, fake.api_key, {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream.url})
        small = upload(sdk, FIVE)  # not validated: no count recorded
        assert sdk.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=small).training_file == small
        # nor is an id the gateway has never seen: the provider's own answer comes back
        with pytest.raises(openai.BadRequestError) as theirs:
            sdk.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-elsewhere")
        assert "file-elsewhere" in str(theirs.value) and "example" not in str(theirs.value)
        assert json.loads([r for r in fake.requests if r.path.endswith("/fine_tuning/jobs")][-1].body)["training_file"] == \
            "file-elsewhere"


def test_deleting_a_file_forgets_its_count(tmp_path: Path) -> None:
    fake = StandIn()
    with ServerThread(fake.app()) as upstream, Gateway(tmp_path / "data") as gateway:
        sdk = client(gateway.url, fake.api_key, {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream.url})
        small = upload(sdk, FIVE)
        assert gateway.with_store(lambda s: s.lookup("dataset", small)) is not None
        sdk.files.delete(small)
        assert gateway.with_store(lambda s: s.lookup("dataset", small)) is None


# ---- the rules themselves ------------------------------------------------------------------------

def test_each_provider_declares_its_rules() -> None:
    rules = {name: p.dataset_rules_for("") for name, p in REGISTRY.items()}
    assert rules["openai"].min_training_examples == 10 and rules["azure-openai"].min_training_examples == 10
    assert rules["openai"].min_validation_examples is None  # validation files have no minimum
    assert rules["together-ai"].min_training_examples == 1
    assert rules["fireworks-ai"].min_training_examples == 3
    assert rules["mistral-ai"].min_training_examples is None and rules["vertex-ai"].min_training_examples is None
    assert rules["vertex-ai"].max_validation_examples == 5000
    assert rules["local"].min_training_examples == 10
    bedrock = REGISTRY["bedrock"]
    assert bedrock.dataset_rules_for("amazon.nova-lite-v1:0:300k").min_training_examples == 8
    assert bedrock.dataset_rules_for("amazon.nova-2-lite-v1:0:256k").min_training_examples == 200
    assert bedrock.dataset_rules_for("anthropic.claude-3-haiku-20240307-v1:0:200k") == DatasetRules()


def test_check_file_and_epochs() -> None:
    rules = DatasetRules(min_training_examples=8, max_validation_examples=4, max_file_bytes=100, max_epochs=5)
    check_file(rules, "p", "validation_file", "f", FileFacts(examples=4, bytes=100))
    with pytest.raises(Exception) as few:
        check_file(rules, "p", "training_file", "f", FileFacts(examples=7))
    assert few.value.param == "training_file" and "at least 8" in few.value.message  # type: ignore[attr-defined]
    with pytest.raises(Exception) as many:
        check_file(rules, "p", "validation_file", "f", FileFacts(examples=5))
    assert many.value.param == "validation_file" and "at most 4" in many.value.message  # type: ignore[attr-defined]
    with pytest.raises(Exception) as big:
        check_file(rules, "p", "training_file", "f", FileFacts(examples=9, bytes=101))
    assert big.value.code == "file_too_large"  # type: ignore[attr-defined]
    check_epochs(rules, "p", {"hyperparameters": {"n_epochs": "auto"}, "method": {"type": "supervised"}})
    with pytest.raises(Exception) as epochs:
        check_epochs(rules, "p", {"method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 6}}}})
    assert epochs.value.param == "method.dpo.hyperparameters.n_epochs"  # type: ignore[attr-defined]
    assert FileFacts.from_report({"stats": {"examples": 3, "bytes": 9}}) == FileFacts(3, 9)
    assert FileFacts.from_report({"stats": {"examples": 3, "bytes": 9}}, 12) == FileFacts(3, 12)
    assert FileFacts.from_report({"stats": {}}) is None and FileFacts.from_report(None) is None


def test_local_scheduler_keeps_the_training_minimum_for_unvalidated_files(tmp_path: Path) -> None:
    from tunegate.localjobs.scheduler import validate_job

    small = tmp_path / "small.jsonl"
    small.write_bytes(FIVE)
    _, error = validate_job("m", "supervised", {}, small, None, False)
    assert error is not None and (error["code"], error["param"]) == ("invalid_n_examples", "training_file")
    assert error["message"] == "Training file has 5 example(s), but must have at least 10 examples"
    big = tmp_path / "big.jsonl"
    big.write_bytes(TWELVE)
    _, error = validate_job("m", "supervised", {}, big, small, True)  # a 5-example validation file is fine
    assert error is None or error["param"] != "validation_file"
