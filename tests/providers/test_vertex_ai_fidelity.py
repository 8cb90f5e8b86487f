"""Vertex AI fidelity (issue 13): multi-region hosts, adapter sizes per method and model, a 401 from Cloud
Storage dropping the cached token. Same stand-ins as test_vertex_ai.py (tests/standins/vertex.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest

from tests.gateway import Gateway
from tests.providers import test_vertex_ai as base
from tests.providers.test_vertex_ai import BASE_MODEL, Env
from tests.standins.openai_like import ServerThread
from tests.standins.vertex import VertexStandIn, make_service_account
from tunegate.providers.vertex_ai import VertexAI

env, gcs = base.env, base.gcs  # the fixtures of test_vertex_ai.py


@pytest.mark.parametrize(("location", "root"), [
    ("us", "https://aiplatform.us.rep.googleapis.com/v1"),
    ("eu", "https://aiplatform.eu.rep.googleapis.com/v1"),
    ("us-central1", "https://us-central1-aiplatform.googleapis.com/v1"),
    ("global", "https://aiplatform.googleapis.com/v1"),
])
def test_multi_region_locations_use_their_rep_hosts(location: str, root: str) -> None:
    ctx: Any = SimpleNamespace(base_url_override=None)
    assert VertexAI().api_root(ctx, location) == root


@pytest.mark.parametrize(("model", "method", "size", "sent"), [
    (BASE_MODEL, "supervised", 2, "ADAPTER_SIZE_TWO"),
    (BASE_MODEL, "supervised", 16, "ADAPTER_SIZE_SIXTEEN"),
    (BASE_MODEL, "supervised", 32, None),  # documented for 2.5 Flash: 1, 2, 4, 8, 16
    ("gemini-2.5-flash-lite", "supervised", 32, None),
    ("gemini-1.5-pro-002", "supervised", 8, None),  # 1.5 Pro: 1 and 4 only
    ("gemini-1.5-pro-002", "supervised", 4, "ADAPTER_SIZE_FOUR"),
    ("gemini-1.5-flash-002", "supervised", 2, None),
    (BASE_MODEL, "dpo", 32, None),  # preference tuning: 1, 2, 4, 8, 16
    (BASE_MODEL, "dpo", 8, "ADAPTER_SIZE_EIGHT"),
    ("projects/tg-project/locations/us-central1/models/open-model", "supervised", 32, "ADAPTER_SIZE_THIRTY_TWO"),
])
def test_adapter_sizes_per_method_and_model(env: Env, model: str, method: str, size: int, sent: str | None) -> None:
    body: dict[str, Any] = {"model": model, "training_file": "gs://tg-training-data/train.jsonl",
                            "method": {"type": method, method: {"hyperparameters": {"adapter_size": size}}}}
    sdk = env.sdk()
    if sent is None:
        with pytest.raises(openai.BadRequestError) as exc:
            sdk.fine_tuning.jobs.create(**body)
        assert exc.value.body["param"] == f"method.{method}.hyperparameters.adapter_size"  # type: ignore[index]
        assert env.standin.vertex_requests("POST") == []
        return
    sdk.fine_tuning.jobs.create(**body)
    spec = "preferenceOptimizationSpec" if method == "dpo" else "supervisedTuningSpec"
    assert env.standin.vertex_requests("POST")[-1].json()[spec]["hyperParameters"]["adapterSize"] == sent


@pytest.fixture
def storage_standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[VertexStandIn, Gateway, str]]:
    """The stand-in as Cloud Storage too (its objects.get checks the access token), and the gateway."""
    standin = VertexStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        standin.url = upstream.url
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", upstream.url)
        yield standin, gw, upstream.url


def test_a_401_from_cloud_storage_drops_the_cached_token(storage_standin: tuple[VertexStandIn, Gateway, str]) -> None:
    standin, gw, url = storage_standin
    info, public_key = make_service_account(standin.token_uri)
    standin.register(info, public_key)
    sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, default_headers={
        "x-portkey-provider": "vertex-ai", "x-portkey-custom-host": url + "/v1",
        "x-portkey-vertex-project-id": "tg-project", "x-portkey-vertex-service-account-json": json.dumps(info),
        "x-portkey-config": json.dumps({"retry": {"attempts": 0}})})
    name = "tunegate/9999-abcd/train.jsonl"
    standin.objects[f"tg-training-data/{name}"] = {
        "kind": "storage#object", "bucket": "tg-training-data", "name": name, "size": "12",
        "timeCreated": "2026-01-01T00:00:00.000Z", "metadata": {"purpose": "fine-tune", "filename": "train.jsonl"}}
    file_id = "file-" + base64.urlsafe_b64encode(f"gs://tg-training-data/{name}".encode()).decode().rstrip("=")
    assert sdk.files.retrieve(file_id).filename == "train.jsonl"
    assert standin.mints[info["client_email"]] == 1
    standin.tokens.clear()  # the token is revoked: Cloud Storage answers 401 from now on
    with pytest.raises(openai.AuthenticationError):
        sdk.files.retrieve(file_id)
    # The cached token was dropped: the next call mints a new one and goes through.
    assert sdk.files.retrieve(file_id).bytes == 12
    assert standin.mints[info["client_email"]] == 2


def _image_line(url: str) -> bytes:
    return json.dumps({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": url}}]},
        {"role": "assistant", "content": "A cat."}]}).encode() + b"\n"


def test_image_urls_become_file_data_parts(env: Env) -> None:
    # Vertex "Image tuning": fileUri is a Cloud Storage URI or a publicly available HTTP or HTTPS URL.
    urls = ["https://example.com/pets/cat.JPG?size=large#top", "gs://tg-images/dog.png",
            "http://example.com/a.webp"]
    uploaded = env.sdk().files.create(file=("images.jsonl", b"".join(_image_line(u) for u in urls)),
                                      purpose="fine-tune")
    name = base.uri_of(uploaded.id).removeprefix(f"gs://{base.BUCKET}/")
    stored = [json.loads(line) for line in env.gcs_object(name).splitlines()]
    parts = [line["contents"][0]["parts"][1]["fileData"] for line in stored]
    assert parts == [{"mimeType": "image/jpeg", "fileUri": urls[0]}, {"mimeType": "image/png", "fileUri": urls[1]},
                     {"mimeType": "image/webp", "fileUri": urls[2]}]
    assert stored[0]["contents"][0]["parts"][0] == {"text": "What is this?"}


@pytest.mark.parametrize("url", ["https://example.com/render?id=7", "gs://tg-images/anim.gif", "ftp://x/cat.png"])
def test_an_image_url_vertex_cannot_take_is_a_400_naming_the_line(env: Env, url: str) -> None:
    data = _image_line("https://example.com/ok.png") + _image_line(url)
    with pytest.raises(openai.BadRequestError) as exc:
        env.sdk().files.create(file=("images.jsonl", data), purpose="fine-tune")
    body: dict[str, Any] = exc.value.body  # type: ignore[assignment]
    assert body["code"] == "invalid_training_file" and "line 2" in body["message"]


# ---- keyless credentials: workload identity federation and impersonation ---------------------------------


def _external_account(s: VertexStandIn, impersonate: str | None = None, **source: Any) -> dict[str, Any]:
    """An external_account JSON as `gcloud iam workload-identity-pools create-cred-config` writes it."""
    info: dict[str, Any] = {
        "type": "external_account", "audience": s.audience,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "token_url": s.url + "/sts/v1/token",
        "credential_source": source or {"url": s.url + "/subject-token", "format": {"type": "text"}}}
    if impersonate:
        info["service_account_impersonation_url"] = (
            f"{s.url}/iam/v1/projects/-/serviceAccounts/{impersonate}:generateAccessToken")
    return info


def _keyless_sdk(env: Env, info: dict[str, Any]) -> openai.OpenAI:
    return env.sdk(**{"x-portkey-vertex-service-account-json": json.dumps(info)})


def test_external_account_with_impersonation_mints_through_sts_and_iam(env: Env) -> None:
    s = env.standin
    target = "tuner@tg-project.iam.gserviceaccount.com"
    s.impersonable.add(target)
    sdk = _keyless_sdk(env, _external_account(s, impersonate=target))
    sdk.fine_tuning.jobs.create(model=BASE_MODEL, training_file="gs://tg-training-data/t.jsonl")
    assert sdk.fine_tuning.jobs.list().data
    exchange = s.sts_requests[0]
    assert exchange["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert exchange["subject_token"] == s.subject_token and exchange["audience"] == s.audience
    assert s.impersonations == [(f"federated:{s.audience}", target)]
    sent = {r.headers["Authorization"] for r in s.vertex_requests()}
    assert len(sent) == 1 and s.tokens[sent.pop().removeprefix("Bearer ")][0] == target
    assert len(s.sts_requests) == 1 and s.subject_token_reads == 1  # the token is cached


def test_external_account_without_impersonation_uses_the_federated_token(env: Env) -> None:
    s = env.standin
    info = _external_account(s, url=s.url + "/subject-token?format=json",
                             format={"type": "json", "subject_token_field_name": "id_token"})
    assert _keyless_sdk(env, info).fine_tuning.jobs.list().data == []
    token = env.standin.vertex_requests()[-1].headers["Authorization"].removeprefix("Bearer ")
    assert token.startswith("ya29.federated-") and s.impersonations == []


def test_impersonated_service_account_from_a_service_account_key(env: Env) -> None:
    s = env.standin
    target = "deployer@tg-project.iam.gserviceaccount.com"
    s.impersonable.add(target)
    info = {"type": "impersonated_service_account", "delegates": [],
            "service_account_impersonation_url":
                f"{s.url}/iam/v1/projects/-/serviceAccounts/{target}:generateAccessToken",
            "source_credentials": env.info}
    assert _keyless_sdk(env, info).fine_tuning.jobs.list().data == []
    assert s.impersonations == [(env.info["client_email"], target)]
    # Not allowed to act as that account: IAM's 403 reaches the client as a refused credential, no secret in it.
    s.impersonable.clear()
    info["delegates"] = ["other@tg-project.iam.gserviceaccount.com"]  # another JSON: another cache entry
    with pytest.raises(openai.AuthenticationError) as exc:
        _keyless_sdk(env, info).fine_tuning.jobs.list()
    assert "PRIVATE KEY" not in json.dumps(exc.value.body)


@pytest.mark.parametrize(("change", "code"), [
    ({"credential_source": {"file": "/var/run/secrets/token"}}, "invalid_service_account"),
    ({"credential_source": {"executable": {"command": "/bin/id"}}}, "invalid_service_account"),
    ({"credential_source": {"environment_id": "aws1", "url": "http://169.254.169.254/latest/meta-data"}},
     "invalid_service_account"),
    ({"credential_source": {"url": "http://169.254.169.254/computeMetadata/v1/token"}}, "custom_host_not_allowed"),
    ({"token_url": "http://10.1.2.3/v1/token"}, "custom_host_not_allowed"),
    ({"service_account_impersonation_url": "http://metadata.google.internal/x:generateAccessToken"},
     "custom_host_not_allowed"),
    ({"type": "gdch_service_account"}, "invalid_service_account"),
    ({"audience": None}, "invalid_service_account"),
])
def test_keyless_credentials_that_would_reach_the_gateway_host_are_refused(env: Env, change: dict[str, Any],
                                                                           code: str) -> None:
    info = {**_external_account(env.standin), **change}
    with pytest.raises(openai.BadRequestError) as exc:
        _keyless_sdk(env, info).fine_tuning.jobs.list()
    body: dict[str, Any] = exc.value.body  # type: ignore[assignment]
    assert body["code"] == code and body["param"] == "x-portkey-vertex-service-account-json"
    assert env.standin.sts_requests == [] and env.standin.subject_token_reads == 0
    assert env.standin.vertex_requests() == []
