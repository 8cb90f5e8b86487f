"""Together AI end to end: the official `openai` SDK → the gateway → the Together stand-in
(``tests/standins/together.py``), plus a check of the stand-in's answers against Together's spec."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread
from tests.standins.together import TogetherStandIn, sdk_corrected
from tunegate.providers.together.jobs import unix

SPEC = Path(__file__).resolve().parents[2].parent / "shared" / "specs" / "together-openapi.yaml"


def chat_line(i: int, **extra: Any) -> bytes:
    return json.dumps({"messages": [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": f"Say {i}"},
                                    {"role": "assistant", "content": f"{i}"}], **extra}).encode() + b"\n"


EXAMPLES = b"".join(chat_line(i) for i in range(12))
# What Together receives: the converter's compact conversational JSONL.
CONVERTED = b"".join(
    json.dumps({"messages": [{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": f"Say {i}"},
                             {"role": "assistant", "content": f"{i}"}]}, separators=(",", ":")).encode() + b"\n"
    for i in range(12))
NO_RETRY = json.dumps({"retry": {"attempts": 0}})


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[TogetherStandIn, Gateway, dict[str, str]]]:
    standin = TogetherStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        headers = {"x-portkey-provider": "together", "x-portkey-custom-host": upstream.url + "/v1"}
        yield standin, gw, headers


def client(gw: Gateway, standin: TogetherStandIn, headers: dict[str, str], **more: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=standin.api_key, default_headers={**headers, **more},
                         max_retries=0)


def sent(standin: TogetherStandIn, method: str, path: str) -> list[Any]:
    return [r for r in standin.requests if r.method == method and r.path == path]


def extra(obj: Any) -> dict[str, Any]:
    """The fields the SDK's model does not declare (provider_status, learning_rate, …)."""
    return obj.model_extra or {}


def upload(sdk: openai.OpenAI, data: bytes = EXAMPLES, name: str = "train.jsonl") -> Any:
    return sdk.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


# ---------------------------------------------------------------------------------------- lifecycle

def test_full_lifecycle(setup: tuple[TogetherStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = setup
    sdk = client(gw, standin, headers)

    f = upload(sdk)
    assert f.id.startswith("file-") and f.object == "file" and f.purpose == "fine-tune"
    assert f.filename == "train.jsonl" and f.bytes == len(CONVERTED) and f.status == "processed"
    assert f.created_at == standin.files[f.id]["created_at"]
    # Native multipart: the form fields before the file, the bytes in Together's format.
    form = standin.uploads[-1]
    assert form["_order"] == ["purpose", "file_name", "file_type", "file"]
    assert (form["purpose"], form["file_name"], form["file_type"]) == ("fine-tune", "train.jsonl", "jsonl")
    assert standin.contents[f.id] == CONVERTED
    assert sent(standin, "POST", "/v1/files/upload")[0].headers["Authorization"] == f"Bearer {standin.api_key}"

    job = sdk.fine_tuning.jobs.create(training_file=f.id, validation_file=f.id, model="meta-llama/Llama-3-8b",
                                      suffix="weather", seed=7,
                                      hyperparameters={"n_epochs": 2, "batch_size": 8,
                                                       "learning_rate_multiplier": 2.0})
    native = json.loads(sent(standin, "POST", "/v1/fine-tunes")[0].body)
    assert native == {"model": "meta-llama/Llama-3-8b", "training_file": f.id, "validation_file": f.id,
                      "suffix": "weather", "random_seed": 7, "n_epochs": 2, "batch_size": 8, "n_evals": 2,
                      "learning_rate": pytest.approx(2e-5),
                      "training_method": {"method": "sft", "train_on_inputs": "auto"}}
    assert job.id.startswith("ft-") and job.object == "fine_tuning.job"
    assert job.status == "validating_files"  # Together's `pending`
    assert job.created_at == unix(standin.jobs[job.id]["created_at"]) and job.finished_at is None
    assert job.fine_tuned_model is None and job.trained_tokens is None and job.error is None
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size,
            job.hyperparameters.learning_rate_multiplier) == (2, 8, 2.0)
    assert job.seed == 7 and job.training_file == f.id and job.validation_file == f.id
    assert job.method is not None and job.method.type == "supervised"

    polled = [sdk.fine_tuning.jobs.retrieve(job.id) for _ in range(5)]
    assert [j.status for j in polled] == ["queued", "running", "running", "running", "succeeded"]
    assert [extra(j).get("provider_status") for j in polled] == [None, None, "compressing", "uploading",
                                                                       "completed"]
    assert polled[1].estimated_finish is not None and polled[1].estimated_finish > polled[1].created_at
    done = polled[-1]
    raw = standin.jobs[job.id]
    assert done.fine_tuned_model == raw["model_output_name"] and done.trained_tokens == 54321 * 2  # 2 epochs
    assert done.finished_at == unix(raw["updated_at"]) and done.estimated_finish is None

    listing = sdk.fine_tuning.jobs.list()
    assert [j.id for j in listing.data] == [job.id] and listing.has_more is False
    assert listing.data[0].status == "succeeded"

    events = sdk.fine_tuning.jobs.list_events(job.id)
    assert [e.message for e in events.data] == ["Job finished", "Checkpoint saved at step 10", "Training started",
                                                "Fine tune request created"]
    assert [e.id for e in events.data] == [f"ftevent-{job.id}-{n}" for n in (4, 3, 2, 1)]
    assert events.data[0].level == "info" and events.data[0].object == "fine_tuning.job.event"
    assert events.data[1].data == {"type": "CHECKPOINT_SAVE", "step": 10, "total_steps": 30,
                                   "param_count": 8_030_261_248,
                                   "token_count": 0, "training_offset": 0,
                                   "checkpoint_path": f"s3://standin/{job.id}/checkpoint-10"}
    assert events.data[0].created_at == unix(raw["_events"][-1]["created_at"])

    ckpts = sdk.fine_tuning.jobs.checkpoints.list(job.id)
    assert [(c.step_number, extra(c)["checkpoint_type"]) for c in ckpts.data] == [
        (30, "Final Merged"), (30, "Final Adapter"), (20, "Intermediate"), (10, "Intermediate")]
    assert ckpts.model_dump()["first_id"] == f"ftckpt-{job.id}-30-final_merged" and ckpts.has_more is False
    assert ckpts.data[-1].id == f"ftckpt-{job.id}-10-intermediate"
    assert ckpts.data[-1].fine_tuned_model_checkpoint == f"{job.id}:10"
    assert ckpts.data[-1].fine_tuning_job_id == job.id and ckpts.data[-1].metrics.step == 10

    files = sdk.files.list()
    assert [x.id for x in files.data] == [f.id] and files.has_more is False
    assert sdk.files.retrieve(f.id).model_dump()["file_type"] == "jsonl"
    assert sdk.files.content(f.id).read() == CONVERTED
    deleted = sdk.files.delete(f.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (f.id, True, "file")
    assert f.id not in standin.files
    for r in standin.requests:
        assert r.headers["Authorization"] == f"Bearer {standin.api_key}"


def test_failed_job_carries_the_error_event(setup: tuple[TogetherStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = setup
    sdk = client(gw, standin, headers)
    f = upload(sdk)
    job = sdk.fine_tuning.jobs.create(training_file=f.id, model="fail-model")
    statuses = [sdk.fine_tuning.jobs.retrieve(job.id) for _ in range(3)]
    assert [j.status for j in statuses] == ["queued", "running", "failed"]
    failed = statuses[-1]
    assert failed.error is not None
    assert failed.error.code == "job_failed" and failed.error.param is None
    assert failed.error.message == ("Training failed: the training file has 3 lines without an assistant "
                                    "message.")
    assert extra(failed)["provider_status"] == "error"
    assert failed.finished_at == unix(standin.jobs[job.id]["updated_at"]) and failed.fine_tuned_model is None
    assert sdk.fine_tuning.jobs.list_events(job.id).data[0].level == "error"


def test_cancelled_job(setup: tuple[TogetherStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = setup
    sdk = client(gw, standin, headers)
    f = upload(sdk)
    job = sdk.fine_tuning.jobs.create(training_file=f.id, model="meta-llama/Llama-3-8b")
    requested = sdk.fine_tuning.jobs.cancel(job.id)
    # Together acknowledges with `cancel_requested`: the job is still stopping.
    assert requested.status == "running" and extra(requested)["provider_status"] == "cancel_requested"
    assert sent(standin, "POST", f"/v1/fine-tunes/{job.id}/cancel")
    cancelled = sdk.fine_tuning.jobs.retrieve(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at == unix(standin.jobs[job.id]["updated_at"])
    assert cancelled.error is None
    with pytest.raises(openai.BadRequestError) as again:
        sdk.fine_tuning.jobs.cancel(job.id)
    assert again.value.status_code == 400
    assert again.value.body["message"] == "Cannot cancel a job with status cancelled"  # type: ignore[index]


# --------------------------------------------------------------------------------------- pagination

def test_pagination_round_trips(setup: tuple[TogetherStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = setup
    sdk = client(gw, standin, headers)
    f = upload(sdk)
    created = [sdk.fine_tuning.jobs.create(training_file=f.id, model=f"m{i}").id for i in range(7)]
    newest_first = created[::-1]

    first = sdk.fine_tuning.jobs.list(limit=3)
    assert [j.id for j in first.data] == newest_first[:3] and first.has_more is True
    second = sdk.fine_tuning.jobs.list(limit=3, after=first.data[-1].id)
    assert [j.id for j in second.data] == newest_first[3:6] and second.has_more is True
    last = sdk.fine_tuning.jobs.list(limit=3, after=second.data[-1].id)
    assert [j.id for j in last.data] == newest_first[6:] and last.has_more is False
    exact = sdk.fine_tuning.jobs.list(limit=7)
    assert len(exact.data) == 7 and exact.has_more is False
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=3)] == newest_first  # the SDK follows `after`
    assert all("limit" not in r.query for r in sent(standin, "GET", "/v1/fine-tunes"))  # Together has no paging

    # Files: newest first by default, `order=asc` reverses, the SDK walks every page.
    more = [upload(sdk, name=f"t{i}.jsonl").id for i in range(4)]
    all_files = [f.id, *more]
    assert [x.id for x in sdk.files.list(limit=2)] == all_files[::-1]
    page = sdk.files.list(limit=2, order="asc")
    assert [x.id for x in page.data] == all_files[:2] and page.has_more is True
    assert page.model_dump()["first_id"] == all_files[0] and page.model_dump()["last_id"] == all_files[1]
    assert [x.id for x in sdk.files.list(limit=2, order="asc")] == all_files

    # A cursor deleted between pages cannot be placed any more: a 400 naming `after`.
    gone = sdk.files.list(limit=2).data[-1].id
    sdk.files.delete(gone)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.files.list(limit=2, after=gone)
    assert bad.value.body["param"] == "after"  # type: ignore[index]

    # Events and checkpoints page by their derived ids too.
    job = created[0]
    for _ in range(5):
        sdk.fine_tuning.jobs.retrieve(job)
    assert [e.id for e in sdk.fine_tuning.jobs.list_events(job, limit=1)] == [
        f"ftevent-{job}-{n}" for n in (4, 3, 2, 1)]
    one = sdk.fine_tuning.jobs.list_events(job, limit=1)
    assert one.has_more is True and len(one.data) == 1
    steps = [c.step_number for c in sdk.fine_tuning.jobs.checkpoints.list(job, limit=1)]
    assert steps == [30, 30, 20, 10]


# -------------------------------------------------------------------------------------- create mapping

def test_dpo_wandb_and_native_fields(setup: tuple[TogetherStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = setup
    sdk = client(gw, standin, headers, **{"x-portkey-wandb-api-key": "wandb-secret-123456"})
    f = upload(sdk)
    job = sdk.fine_tuning.jobs.create(
        training_file=f.id, model="meta-llama/Llama-3-8b",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 3}}},
        integrations=[{"type": "wandb", "wandb": {"project": "proj", "name": "run-1", "entity": "team"}}],
        extra_body={"together": {"n_checkpoints": 3, "training_type": {"type": "Full"}, "warmup_ratio": 0.1,
                                 "learning_rate": 3e-5}})
    native = json.loads(sent(standin, "POST", "/v1/fine-tunes")[0].body)
    assert native == {"model": "meta-llama/Llama-3-8b", "training_file": f.id, "n_epochs": 3,
                      "training_method": {"method": "dpo", "dpo_beta": 0.2}, "wandb_key": "wandb-secret-123456",
                      "wandb_project_name": "proj", "wandb_name": "run-1", "wandb_entity": "team",
                      "n_checkpoints": 3, "training_type": {"type": "Full"}, "warmup_ratio": 0.1,
                      "learning_rate": 3e-5}
    assert job.method is not None and job.method.type == "dpo"
    assert job.method.dpo is not None and job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.beta == 0.2
    assert job.hyperparameters.learning_rate_multiplier == 3.0 and extra(job)["learning_rate"] == 3e-5
    assert job.integrations is not None and job.integrations[0].wandb.project == "proj"


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"metadata": {"team": "a"}}, "metadata"),
    ({"method": {"type": "reinforcement", "reinforcement": {}}}, "method.type"),
    ({"hyperparameters": {"n_epochs": 2}, "extra_body": {"hyperparameters": {"n_epochs": 2, "warmup": 1}}},
     "hyperparameters.warmup"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": -1}}}},
     "method.supervised.hyperparameters.learning_rate_multiplier"),
    ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations[0].wandb"),
    ({"extra_body": {"together": {"not_a_field": 1}}}, "together.not_a_field"),
    ({"extra_body": {"together": {"n_epochs": 4}}, "hyperparameters": {"n_epochs": 2}}, "together.n_epochs"),
    ({"extra_body": {"priority": 1}}, "priority"),
])
def test_unmappable_values_are_a_400(setup: tuple[TogetherStandIn, Gateway, dict[str, str]],
                                     kwargs: dict[str, Any], param: str) -> None:
    standin, gw, headers = setup
    sdk = client(gw, standin, headers)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.fine_tuning.jobs.create(training_file="file-x", model="m", **kwargs)
    assert bad.value.status_code == 400 and bad.value.body["param"] == param  # type: ignore[index]
    assert not sent(standin, "POST", "/v1/fine-tunes")


def test_unsupported_operations(setup: tuple[TogetherStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = setup
    sdk = client(gw, standin, headers)
    calls = [lambda: sdk.fine_tuning.jobs.pause("ft-00000000-0000-4000-8000-000000000001"), lambda: sdk.fine_tuning.jobs.resume("ft-00000000-0000-4000-8000-000000000001"),
             lambda: sdk.uploads.create(bytes=1, filename="x.jsonl", mime_type="application/jsonl",
                                        purpose="fine-tune"),
             lambda: sdk.fine_tuning.checkpoints.permissions.list("ft-1:10"),
             lambda: sdk.fine_tuning.jobs.list(metadata={"a": "b"})]
    for call in calls:
        with pytest.raises(openai.BadRequestError) as bad:
            call()
        assert bad.value.code in ("unsupported_operation", "unsupported_parameter")
    assert standin.requests == []


# ---------------------------------------------------------------------------------------- files

def test_files_purposes_types_and_conversion(setup: tuple[TogetherStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = setup
    sdk = client(gw, standin, headers)
    batch = sdk.files.create(file=("requests.jsonl", io.BytesIO(b'{"custom_id":"1"}\n')), purpose="batch")
    assert batch.purpose == "batch" and standin.uploads[-1]["purpose"] == "batch-api"
    assert standin.contents[batch.id] == b'{"custom_id":"1"}\n'  # only fine-tune data is converted
    assert [x.id for x in sdk.files.list(purpose="batch").data] == [batch.id]
    assert sdk.files.list(purpose="fine-tune").data == []

    with pytest.raises(openai.BadRequestError) as bad:
        sdk.files.create(file=("x.jsonl", io.BytesIO(EXAMPLES)), purpose="vision")
    assert bad.value.body["param"] == "purpose"  # type: ignore[index]

    # A line Together cannot take: a 400 naming it, and nothing is created upstream.
    tool_line = json.dumps({"messages": [{"role": "user", "content": "hi"},
                                         {"role": "assistant", "tool_calls": [
                                             {"id": "c1", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]},
                                         {"role": "tool", "tool_call_id": "c1", "content": "ok"},
                                         {"role": "assistant", "content": "done"}],
                            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}).encode()
    data = b"".join(chat_line(i) for i in range(2)) + tool_line + b"\n" + b"".join(chat_line(i) for i in range(10))
    before = set(standin.files)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.files.create(file=("tools.jsonl", io.BytesIO(data)), purpose="fine-tune")
    body = bad.value.body
    assert body["param"] == "file" and body["code"] == "invalid_training_file"  # type: ignore[index]
    assert "line 3" in body["message"]  # type: ignore[index]
    assert set(standin.files) == before

    # Opting out of conversion sends the bytes as they are.
    raw = client(gw, standin, headers, **{"x-portkey-together-convert": "false"})
    kept = upload(raw)
    assert standin.contents[kept.id] == EXAMPLES and kept.bytes == len(EXAMPLES)

    with pytest.raises(openai.NotFoundError) as missing:
        sdk.files.retrieve("file-nope")
    assert missing.value.status_code == 404 and "file-nope" in missing.value.body["message"]  # type: ignore[index]


# ---------------------------------------------------------------------------------------- errors

def test_provider_errors_arrive_openai_shaped(setup: tuple[TogetherStandIn, Gateway, dict[str, str]]) -> None:
    standin, gw, headers = setup
    wrong = openai.OpenAI(base_url=gw.url + "/v1", api_key="bad0000wrong0key0123456", default_headers=headers,
                          max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        wrong.fine_tuning.jobs.list()
    body = denied.value.body
    assert denied.value.status_code == 401 and isinstance(body, dict)
    assert set(body) >= {"message", "type", "param", "code"} and body["code"] == "invalid_api_key"
    assert "bad0000wrong0key0123456" not in json.dumps(body)

    sdk = client(gw, standin, headers)
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.fine_tuning.jobs.retrieve("ft-00000000-0000-4000-8000-0000000000ff")
    assert missing.value.body["message"] == "Fine-tune job ft-00000000-0000-4000-8000-0000000000ff not found"  # type: ignore[index]

    once = client(gw, standin, headers, **{"x-portkey-config": NO_RETRY})
    standin.faults["/fine-tunes"] = [429]
    with pytest.raises(openai.RateLimitError) as limited:
        once.fine_tuning.jobs.list()
    assert limited.value.status_code == 429 and limited.value.response.headers.get("retry-after") == "0"
    for status, exc in ((500, openai.InternalServerError), (502, openai.InternalServerError),
                        (503, openai.InternalServerError)):
        standin.faults["/fine-tunes"] = [status]
        with pytest.raises(exc) as failed:
            once.fine_tuning.jobs.list()
        assert failed.value.status_code == status
        assert failed.value.body["message"] == f"scripted {status}"  # type: ignore[index]

    # With the default policy the gateway retries idempotent GETs itself.
    before = len(sent(standin, "GET", "/v1/fine-tunes"))
    standin.faults["/fine-tunes"] = [503, 429]
    assert sdk.fine_tuning.jobs.list().data == []
    assert len(sent(standin, "GET", "/v1/fine-tunes")) - before == 3
    # A create is never retried blindly.
    standin.faults["/fine-tunes"] = [503]
    with pytest.raises(openai.InternalServerError):
        sdk.fine_tuning.jobs.create(training_file="file-x", model="m")
    assert len(sent(standin, "POST", "/v1/fine-tunes")) == 1


# ------------------------------------------------------------------------- the stand-in vs the spec

def _openapi31(node: Any) -> Any:
    """The spec as JSON Schema 2020-12: `nullable: true` (OpenAPI 3.0 style, still used in this
    3.1 file) becomes a null type, and a `type` beside a `oneOf` is dropped — the spec writes
    `oneOf: [boolean, "auto"]` next to `type: boolean` for `train_on_inputs`, whose default is
    "auto", so the sibling `type` is plainly a slip."""
    if isinstance(node, dict):
        out = {k: _openapi31(v) for k, v in node.items()}
        if out.get("nullable") is True and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if "oneOf" in out and "type" in out and not isinstance(out["type"], list):
            if not all(isinstance(o, dict) and o.get("type") == out["type"] for o in out["oneOf"]):
                del out["type"]
        return out
    if isinstance(node, list):
        return [_openapi31(v) for v in node]
    return node


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if not SPEC.exists():
        pytest.skip("../shared/specs/together-openapi.yaml is not beside the checkout")
    # Corrected where Together's SDKs show the spec is wrong (tests/standins/together.py says where).
    return sdk_corrected(_openapi31(yaml.safe_load(SPEC.read_text())))


def check(spec: dict[str, Any], instance: Any, pointer: str) -> None:
    registry: Registry = Registry().with_resource("urn:together", DRAFT202012.create_resource(spec))
    validator = Draft202012Validator({"$ref": f"urn:together#{pointer}"}, registry=registry)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{pointer}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def test_standin_answers_match_the_spec(spec: dict[str, Any], tmp_path: Path) -> None:
    standin = TogetherStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        base = upstream.url + "/v1"
        auth = {"Authorization": f"Bearer {standin.api_key}"}
        schemas = "/components/schemas/"

        # Drive it through the gateway, so the requests checked below are the adapter's own.
        sdk = client(gw, standin, {"x-portkey-provider": "together", "x-portkey-custom-host": base},
                     **{"x-portkey-wandb-api-key": "wandb-secret-123456"})
        f = upload(sdk)
        sdk.fine_tuning.jobs.create(training_file=f.id, model="m", suffix="s", seed=1,
                                    method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}},
                                    integrations=[{"type": "wandb", "wandb": {"project": "p"}}],
                                    extra_body={"together": {"training_type": {"type": "Lora", "lora_r": 8,
                                                                               "lora_alpha": 16}}})
        good = sdk.fine_tuning.jobs.create(training_file=f.id, model="m",
                                           hyperparameters={"n_epochs": 2, "learning_rate_multiplier": 0.5})
        bad = sdk.fine_tuning.jobs.create(training_file=f.id, model="fail-m")
        stopped = sdk.fine_tuning.jobs.cancel(sdk.fine_tuning.jobs.create(training_file=f.id, model="m").id)

        create_schema = spec["paths"]["/fine-tunes"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        spec["components"]["schemas"]["_CreateBody"] = create_schema
        for r in sent(standin, "POST", "/v1/fine-tunes"):
            check(spec, json.loads(r.body), schemas + "_CreateBody")
        form_schema = spec["paths"]["/files/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        spec["components"]["schemas"]["_UploadForm"] = form_schema
        for form in standin.uploads:
            check(spec, {k: v for k, v in form.items() if not k.startswith("_")} | {"file": "…"},
                  schemas + "_UploadForm")

        def get(path: str, method: str = "GET") -> Any:
            resp = requests.request(method, base + path, headers=auth, timeout=10)
            return resp.status_code, resp.json()

        # Every state a job passes through, in both the full and the truncated shape.
        for job_id in (good.id, bad.id, stopped.id):
            for _ in range(6):
                status, body = get(f"/fine-tunes/{job_id}")
                assert status == 200
                check(spec, body, schemas + "FinetuneResponse")
                check(spec, body, schemas + "FinetuneResponseTruncated")
                status, body = get(f"/fine-tunes/{job_id}/events")
                check(spec, body, schemas + "FinetuneListEvents")
                status, body = get(f"/fine-tunes/{job_id}/checkpoints")
                check(spec, body, schemas + "FinetuneListCheckpoints")
        assert {j["status"] for j in standin.jobs.values()} == {"completed", "error", "cancelled", "pending"}
        status, body = get("/fine-tunes")
        check(spec, body, schemas + "FinetuneTruncatedList")
        status, body = get(f"/fine-tunes/{good.id}/cancel", "POST")
        assert status == 400
        check(spec, body, schemas + "ErrorData")
        pending = next(j for j, v in standin.jobs.items() if v["status"] == "pending")
        status, body = get(f"/fine-tunes/{pending}/cancel", "POST")
        check(spec, body, schemas + "FinetuneResponseTruncated")

        status, body = get("/files")
        check(spec, body, schemas + "FileList")
        status, body = get(f"/files/{f.id}")
        check(spec, body, schemas + "FileResponse")
        status, body = get(f"/files/{f.id}", "DELETE")
        check(spec, body, schemas + "FileDeleteResponse")
        for path in ("/files/nope", "/fine-tunes/nope"):
            status, body = get(path)
            assert status == 404
            check(spec, body, schemas + "ErrorData")
        resp = requests.get(base + "/files", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert resp.status_code == 401
        check(spec, resp.json(), schemas + "ErrorData")
        standin.faults["/files"] = [429]
        resp = requests.get(base + "/files", headers=auth, timeout=10)
        assert resp.status_code == 429
        check(spec, resp.json(), schemas + "ErrorData")


# ------------------------------------------------------------------------------------ transforms

def test_status_table_covers_the_spec_and_times_parse(spec: dict[str, Any]) -> None:
    from tunegate.providers.together.jobs import JOB_STATUS, timestamp, to_job

    assert set(spec["components"]["schemas"]["FinetuneJobStatus"]["enum"]) <= set(JOB_STATUS)
    expected = {"pending": "validating_files", "queued": "queued", "running": "running", "compressing": "running",
                "uploading": "running", "cancel_requested": "running", "cancelled": "cancelled", "error": "failed",
                "user_error": "failed", "completed": "succeeded", "something_new": "running"}
    for native, status in expected.items():
        job = to_job({"id": "ft-1", "status": native, "created_at": "2023-05-17T17:35:45.123Z",
                      "updated_at": "2023-05-17T18:46:23.456Z", "model_output_name": "me/out", "token_count": 9})
        assert job["status"] == status, native
        assert (job["finished_at"] is not None) == (status in ("succeeded", "failed", "cancelled"))
        assert job["fine_tuned_model"] == ("me/out" if status == "succeeded" else None)
        assert job["trained_tokens"] == (9 if status == "succeeded" else None)
    user_error = to_job({"id": "ft-1", "status": "user_error", "created_at": "2023-05-17T17:35:45Z"})
    assert user_error["error"] == {"code": "invalid_training_file", "param": None,
                                   "message": "Together reported the job as 'user_error'."}
    assert unix("2023-05-17T17:35:45.123456789Z") == 1684344945
    assert unix("2023-05-17T19:35:45+02:00") == 1684344945 and unix(1684344945) == 1684344945
    assert timestamp("2023-05-17T17:35:45.5Z") == 1684344945.5 and unix(None) is None
