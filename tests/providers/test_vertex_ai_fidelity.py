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
