"""Azure OpenAI by api-version, through the gateway over real sockets, against the Azure modes of the
OpenAI-like stand-in (tests/standins/openai_like.py; shapes from Azure/azure-rest-api-specs, see
tunegate/providers/azure_openai/MAPPING.md): what GA 2024-10-21, the dated previews and v1 each allow."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, StandIn

EXAMPLES = b"".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                             {"role": "assistant", "content": f"a{i}"}]}).encode() + b"\n"
                    for i in range(12))
DPO = {"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto", "n_epochs": 2}}}

Env = tuple[StandIn, Gateway, dict[str, str]]


@pytest.fixture
def azure(tmp_path: Path) -> Iterator[Callable[..., Env]]:
    """Start a stand-in in the given Azure mode and a gateway; headers select that api-version."""
    with ExitStack() as stack:
        gw = stack.enter_context(Gateway(tmp_path / "data"))

        def start(mode: str, version: str | None = None) -> Env:
            standin = StandIn(mode=mode, **({"api_version": version} if mode == "azure-preview" and version else {}))
            upstream = stack.enter_context(ServerThread(standin.app()))
            headers = {"x-portkey-provider": "azure-openai", "x-portkey-custom-host": upstream.url + standin.prefix,
                       "x-portkey-api-key": standin.api_key}
            if version:
                headers["x-portkey-azure-api-version"] = version
            return standin, gw, headers

        yield start


def sdk(env: Env) -> openai.OpenAI:
    standin, gw, headers = env
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=standin.api_key, default_headers=headers, max_retries=0)


def upload(env: Env, name: str = "t.jsonl") -> str:
    return sdk(env).files.create(file=(name, io.BytesIO(EXAMPLES)), purpose="fine-tune").id


def sent_creates(standin: StandIn) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in standin.requests if r.method == "POST" and r.path.endswith("/fine_tuning/jobs")]


def post(env: Env, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(env[1].url + path, json=body, headers=env[2], timeout=30)


# ---- lead 1: GA rules only on 2024-10-21 -------------------------------------------------------

def test_preview_takes_dpo_and_integrations_ga_does_not(azure: Callable[..., Env]) -> None:
    preview = azure("azure-preview", "2025-04-01-preview")
    file_id = upload(preview)
    job = sdk(preview).fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id, method=DPO,  # type: ignore[arg-type]
                                               integrations=[{"type": "wandb", "wandb": {"project": "p"}}])
    assert job.status == "queued" and job.method is not None and job.method.type == "dpo"
    (sent,) = sent_creates(preview[0])
    # "auto" is not a number the authoring spec takes: left out, the service chooses.
    assert sent["method"] == {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2}}}
    assert sent["integrations"] == [{"type": "wandb", "wandb": {"project": "p"}}]
    assert preview[0].requests[-1].query["api-version"] == "2025-04-01-preview"

    ga = azure("azure-ga")
    answer = post(ga, "/v1/fine_tuning/jobs", {"model": "m", "training_file": upload(ga), "method": DPO})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "method"
    assert "2025-02-01-preview" in answer.json()["error"]["message"]
    assert sent_creates(ga[0]) == []


def test_metadata_is_refused_on_every_dated_version(azure: Callable[..., Env]) -> None:
    for env in (azure("azure-ga"), azure("azure-preview", "2025-04-01-preview")):
        answer = post(env, "/v1/fine_tuning/jobs", {"model": "m", "training_file": upload(env),
                                                     "metadata": {"team": "a"}})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "metadata"
        assert answer.json()["error"]["code"] == "unsupported_parameter"
        assert sent_creates(env[0]) == []


def test_pause_and_resume_from_2025_04_01_preview(azure: Callable[..., Env]) -> None:
    env = azure("azure-preview", "2025-04-01-preview")
    job = sdk(env).fine_tuning.jobs.create(model="m", training_file=upload(env))
    assert sdk(env).fine_tuning.jobs.pause(job.id).id == job.id
    assert sdk(env).fine_tuning.jobs.resume(job.id).id == job.id
    assert [r.path for r in env[0].requests][-2:] == [f"/openai/fine_tuning/jobs/{job.id}/pause",
                                                       f"/openai/fine_tuning/jobs/{job.id}/resume"]

    older = azure("azure-preview", "2025-02-01-preview")
    job = sdk(older).fine_tuning.jobs.create(model="m", training_file=upload(older))
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(older).fine_tuning.jobs.pause(job.id)
    assert "2025-02-01-preview" in refused.value.message and "/pause" not in env[0].requests[-1].path


# ---- lead 2: GET /files on GA is paged by the gateway ----------------------------------------------

def test_ga_file_list_is_paged_by_the_gateway(azure: Callable[..., Env]) -> None:
    env = azure("azure-ga")
    ids = {upload(env, f"f{i}.jsonl") for i in range(5)}
    first = sdk(env).files.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    seen = [f.id for f in sdk(env).files.list(limit=2)]  # the SDK follows `after` through the gateway
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    listings = [r for r in env[0].requests if r.method == "GET" and r.path == "/openai/files"]
    assert all(set(r.query) <= {"api-version", "purpose"} for r in listings)  # nothing GA's Files_List lacks
    bad = requests.get(env[1].url + "/v1/files?after=file-nope", headers=env[2], timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_cursor"


def test_file_paging_goes_upstream_from_2025_04_01_preview(azure: Callable[..., Env]) -> None:
    env = azure("azure-preview", "2025-04-01-preview")
    for i in range(3):
        upload(env, f"f{i}.jsonl")
    assert len(sdk(env).files.list(limit=2).data) == 2
    assert env[0].requests[-1].query["limit"] == "2"


# ---- lead 3: n_epochs -1 <-> "auto" ----------------------------------------------------------------

def test_auto_is_never_sent_and_minus_one_reads_as_auto(azure: Callable[..., Env]) -> None:
    env = azure("azure-ga")
    file_id = upload(env)
    job = sdk(env).fine_tuning.jobs.create(model="m", training_file=file_id,
                                           hyperparameters={"n_epochs": "auto", "batch_size": 4})
    (sent,) = sent_creates(env[0])
    assert sent["hyperparameters"] == {"batch_size": 4}
    assert job.hyperparameters.n_epochs == "auto" and job.hyperparameters.batch_size == 4
    raw = requests.get(f"{env[1].url}/v1/fine_tuning/jobs/{job.id}", headers=env[2], timeout=30).json()
    assert raw["hyperparameters"]["n_epochs"] == "auto"  # Azure answered -1
    # A supervised method on GA becomes top-level hyperparameters, "auto" left out there too.
    sdk(env).fine_tuning.jobs.create(model="m", training_file=file_id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": "auto"}}})
    assert sent_creates(env[0])[-1] == {"model": "m", "training_file": file_id, "hyperparameters": {"n_epochs": 3}}


def test_v1_keeps_auto(azure: Callable[..., Env]) -> None:
    env = azure("azure-v1", "v1")
    sdk(env).fine_tuning.jobs.create(model="m", training_file=upload(env), hyperparameters={"n_epochs": "auto"})
    assert sent_creates(env[0])[0]["hyperparameters"] == {"n_epochs": "auto"}


# ---- lead 4: suffix up to 40 on the authoring surface ----------------------------------------------

def test_suffix_limit_40_on_authoring_64_on_v1(azure: Callable[..., Env]) -> None:
    ga = azure("azure-ga")
    answer = post(ga, "/v1/fine_tuning/jobs", {"model": "m", "training_file": upload(ga), "suffix": "s" * 41})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_suffix"
    assert sent_creates(ga[0]) == []  # refused before anything was sent
    assert post(ga, "/v1/fine_tuning/jobs", {"model": "m", "training_file": upload(ga),
                                             "suffix": "s" * 40}).status_code == 200
    v1 = azure("azure-v1", "v1")
    assert post(v1, "/v1/fine_tuning/jobs", {"model": "m", "training_file": upload(v1),
                                             "suffix": "s" * 64}).status_code == 200


# ---- lead 5: job delete ------------------------------------------------------------------------------

def test_delete_job_on_the_authoring_surface(azure: Callable[..., Env]) -> None:
    env = azure("azure-ga")
    job = sdk(env).fine_tuning.jobs.create(model="m", training_file=upload(env))
    answer = requests.delete(f"{env[1].url}/v1/fine_tuning/jobs/{job.id}", headers=env[2], timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"id": job.id, "object": "fine_tuning.job", "deleted": True}
    assert (env[0].requests[-1].method, env[0].requests[-1].query) == ("DELETE", {"api-version": "2024-10-21"})
    assert job.id not in env[0].jobs
    again = requests.delete(f"{env[1].url}/v1/fine_tuning/jobs/{job.id}", headers=env[2], timeout=30)
    assert again.status_code == 404  # Azure's own answer, passed on


def test_delete_job_is_a_clear_400_where_it_does_not_exist(azure: Callable[..., Env]) -> None:
    v1 = azure("azure-v1", "v1")
    job = sdk(v1).fine_tuning.jobs.create(model="m", training_file=upload(v1))
    answer = requests.delete(f"{v1[1].url}/v1/fine_tuning/jobs/{job.id}", headers=v1[2], timeout=30)
    assert answer.status_code == 400 and "deleting fine-tuning jobs" in answer.json()["error"]["message"]
    assert v1[0].requests[-1].method != "DELETE"
    openai_headers = {**v1[2], "x-portkey-provider": "openai"}
    answer = requests.delete(f"{v1[1].url}/v1/fine_tuning/jobs/ftjob-abc", headers=openai_headers, timeout=30)
    assert answer.status_code == 400 and set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert "does not support deleting fine-tuning jobs" in answer.json()["error"]["message"]


# ---- lead 6: the training tier ---------------------------------------------------------------------

def test_training_type_option_is_sent_as_azure_names_it(azure: Callable[..., Env]) -> None:
    env = azure("azure-preview", "2025-04-01-preview")
    file_id = upload(env)
    headers = {**env[2], "x-portkey-azure-training-type": "Global"}
    assert requests.post(env[1].url + "/v1/fine_tuning/jobs", json={"model": "m", "training_file": file_id},
                         headers=headers, timeout=30).status_code == 200
    # Azure's samples send it in the body (extra_body in the SDK); the same tier names are accepted there.
    sdk(env).fine_tuning.jobs.create(model="m", training_file=file_id, extra_body={"trainingType": "developer"})
    assert [b["trainingType"] for b in sent_creates(env[0])] == ["globalstandard", "developerTier"]
    bad = requests.post(env[1].url + "/v1/fine_tuning/jobs", json={"model": "m", "training_file": file_id},
                        headers={**env[2], "x-portkey-azure-training-type": "premium"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_training_type"


def test_training_type_needs_a_version_that_has_it(azure: Callable[..., Env]) -> None:
    env = azure("azure-ga")
    answer = requests.post(env[1].url + "/v1/fine_tuning/jobs", json={"model": "m", "training_file": upload(env)},
                           headers={**env[2], "x-portkey-azure-training-type": "standard"}, timeout=30)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "x-portkey-azure-training-type"
    assert sent_creates(env[0]) == []
