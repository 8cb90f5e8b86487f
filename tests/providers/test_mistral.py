"""Mistral through the gateway with the official `openai` SDK, against the stateful stand-in
(tests/standins/mistral.py): lifecycle, cursors over page numbers, failures, cancel/start, events and
checkpoints, files, request mapping (what Mistral received) and Mistral's errors in OpenAI's shape."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway import Gateway
from tests.standins.mistral import MistralStandIn
from tests.standins.openai_like import ServerThread
from tunegate.providers import REGISTRY

EXAMPLES = b"".join(
    json.dumps({"messages": [{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": [{"type": "text", "text": f"Say {i}"}]},
                             {"role": "assistant", "content": f"{i}", "weight": 1}]}).encode() + b"\n"
    for i in range(12)
)
# What Mistral must receive for EXAMPLES: text parts joined into a string (tunegate.data.converters).
MISTRAL_EXAMPLES = b"".join(
    json.dumps({"messages": [{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": f"Say {i}"},
                             {"role": "assistant", "content": f"{i}", "weight": 1}]},
               separators=(",", ":")).encode() + b"\n"
    for i in range(12)
)
NO_RETRY = json.dumps({"retry": {"attempts": 0}})
WANDB_KEY = "w" * 40


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[MistralStandIn, Gateway, str]]:
    standin = MistralStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        yield standin, gw, upstream.url + "/v1"  # custom host: up to and including the version segment


def sdk(env: tuple[MistralStandIn, Gateway, str], key: str | None = None, **headers: str) -> openai.OpenAI:
    standin, gw, host = env
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key or standin.api_key, max_retries=0,
                         default_headers={"x-portkey-provider": "mistral", "x-portkey-custom-host": host, **headers})


def ebody(info: pytest.ExceptionInfo[Any]) -> dict[str, Any]:
    """The OpenAI error object the SDK parsed from an error answer."""
    body = info.value.body
    assert isinstance(body, dict)
    return body


def upload(client: openai.OpenAI, data: bytes = EXAMPLES, name: str = "train.jsonl") -> Any:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


def body_of(standin: MistralStandIn, method: str, path_end: str) -> Any:
    matches = [r for r in standin.requests if r.method == method and r.path.endswith(path_end)]
    return json.loads(matches[-1].body)


def test_full_lifecycle(env: tuple[MistralStandIn, Gateway, str]) -> None:
    standin, _gw, _host = env
    client = sdk(env)
    f = upload(client)
    assert f.object == "file" and f.purpose == "fine-tune" and f.filename == "train.jsonl"
    assert f.bytes == len(MISTRAL_EXAMPLES) and f.status == "processed"
    assert standin.contents[f.id] == MISTRAL_EXAMPLES  # converted on the way, line by line
    sent = standin.recorded("POST", "/v1/files")[-1]
    assert sent.headers["Authorization"] == f"Bearer {standin.api_key}"
    assert sent.headers["Content-Type"].startswith("multipart/form-data")

    job = client.fine_tuning.jobs.create(training_file=f.id, validation_file=f.id, model="open-mistral-7b",
                                         suffix="weather-bot", hyperparameters={"n_epochs": 3,
                                                                                "learning_rate_multiplier": 2})
    native = body_of(standin, "POST", "/fine_tuning/jobs")
    assert native == {"model": "open-mistral-7b", "training_files": [{"file_id": f.id, "weight": 1}],
                      "validation_files": [f.id], "suffix": "weather-bot", "auto_start": True,
                      "hyperparameters": {"epochs": 3, "learning_rate": 0.0002}}
    assert job.object == "fine_tuning.job" and job.status == "queued" and job.model == "open-mistral-7b"
    assert job.training_file == f.id and job.validation_file == f.id
    assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.learning_rate_multiplier == 2.0
    assert job.hyperparameters.batch_size == "auto"
    assert isinstance(job.created_at, int) and job.finished_at is None and job.error is None
    assert job.estimated_finish == job.created_at + 120  # metadata.expected_duration_seconds
    assert job.model_extra and job.model_extra["provider_status"] == "QUEUED"

    seen = []
    for _ in range(10):
        current = client.fine_tuning.jobs.retrieve(job.id)
        seen.append((current.status, current.model_extra["provider_status"]))
        if current.status == "succeeded":
            break
    assert seen == [("validating_files", "VALIDATING"), ("queued", "VALIDATED"), ("running", "RUNNING"),
                    ("succeeded", "SUCCESS")]
    assert current.fine_tuned_model == standin.jobs[job.id]["fine_tuned_model"]
    assert current.fine_tuned_model.startswith("ft:open-mistral-7b:")
    assert current.trained_tokens == 1310720 and current.finished_at == standin.jobs[job.id]["modified_at"]
    assert current.estimated_finish is None
    assert standin.recorded("GET", f"/fine_tuning/jobs/{job.id}")[-1].headers["Authorization"] == (
        f"Bearer {standin.api_key}")

    listed = client.fine_tuning.jobs.list()
    assert [j.id for j in listed.data] == [job.id] and listed.has_more is False
    assert listed.data[0].status == "succeeded"

    events = client.fine_tuning.jobs.list_events(job.id)
    assert [e.message for e in events.data] == [
        "Job status changed to SUCCESS", "Job status changed to RUNNING", "Job status changed to VALIDATED",
        "Job status changed to VALIDATING", "Job status changed to QUEUED"]
    assert [e.id for e in events.data] == [f"ftevent-{job.id}-{n}" for n in (4, 3, 2, 1, 0)]
    assert all(e.object == "fine_tuning.job.event" and e.level == "info" for e in events.data)
    first_two = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(first_two.data) == 2 and first_two.has_more is True
    rest = client.fine_tuning.jobs.list_events(job.id, limit=2, after=first_two.data[-1].id)
    assert [e.id for e in rest.data] == [f"ftevent-{job.id}-{n}" for n in (2, 1)] and rest.has_more is True
    assert [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=2)] == [e.id for e in events.data]

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert [(c.step_number, c.metrics.train_loss, c.metrics.valid_loss, c.metrics.valid_mean_token_accuracy)
            for c in checkpoints.data] == [(20, 0.75, 0.9, 0.72), (10, 1.25, 1.5, 0.61)]
    assert checkpoints.data[0].id == f"ftckpt-{job.id}-20" and checkpoints.data[0].fine_tuning_job_id == job.id
    assert checkpoints.data[0].metrics.step == 20 and checkpoints.data[0].fine_tuned_model_checkpoint == ""
    one = client.fine_tuning.jobs.checkpoints.list(job.id, limit=1, after=f"ftckpt-{job.id}-20")
    assert [c.step_number for c in one.data] == [10] and one.has_more is False

    second = client.fine_tuning.jobs.create(training_file=f.id, model="open-mistral-7b")
    cancelled = client.fine_tuning.jobs.cancel(second.id)
    assert cancelled.status == "cancelled" and cancelled.model_extra["provider_status"] == "CANCELLATION_REQUESTED"
    assert standin.recorded("POST", f"/fine_tuning/jobs/{second.id}/cancel")

    files = client.files.list()
    assert [x.id for x in files.data] == [f.id] and files.data[0].filename == "train.jsonl"
    assert client.files.retrieve(f.id).bytes == len(MISTRAL_EXAMPLES)
    assert client.files.content(f.id).read() == MISTRAL_EXAMPLES
    deleted = client.files.delete(f.id)
    assert deleted.id == f.id and deleted.deleted is True and f.id not in standin.files


def test_cancelled_job(env: tuple[MistralStandIn, Gateway, str]) -> None:
    standin, _gw, _host = env
    client = sdk(env)
    f = upload(client)
    job = client.fine_tuning.jobs.create(training_file=f.id, model="open-mistral-7b")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "validating_files"
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "cancelled" and done.model_extra["provider_status"] == "CANCELLED"
    assert done.fine_tuned_model is None and done.error is None
    # Mistral refuses to cancel a finished job: its 400 arrives in OpenAI's shape.
    with pytest.raises(openai.BadRequestError) as again:
        client.fine_tuning.jobs.cancel(job.id)
    assert again.value.status_code == 400
    assert ebody(again)["message"] == f"Job {job.id} cannot be cancelled: it is CANCELLED."


def test_failed_jobs_carry_openai_errors(env: tuple[MistralStandIn, Gateway, str]) -> None:
    client = sdk(env)
    f = upload(client)
    bad_data = client.fine_tuning.jobs.create(training_file=f.id, model="fail-mistral-7b")
    statuses = [client.fine_tuning.jobs.retrieve(bad_data.id).status for _ in range(2)]
    assert statuses == ["validating_files", "failed"]
    failed = client.fine_tuning.jobs.retrieve(bad_data.id)
    assert failed.error is not None and failed.error.code == "invalid_training_file"
    assert failed.error.param == "training_file"
    assert failed.error.message == "Invalid file format: line 1: the last message must be from the assistant."
    assert failed.model_extra["provider_status"] == "FAILED_VALIDATION" and failed.finished_at is not None
    events = client.fine_tuning.jobs.list_events(bad_data.id).data
    assert events[0].level == "error" and events[0].message.startswith("Job status changed to FAILED_VALIDATION: ")

    crashed = client.fine_tuning.jobs.create(training_file=f.id, model="crash-mistral-7b")
    for _ in range(6):
        job = client.fine_tuning.jobs.retrieve(crashed.id)
        if job.status == "failed":
            break
    assert job.status == "failed" and job.model_extra["provider_status"] == "FAILED"
    assert job.error is not None and job.error.code == "job_failed" and job.error.param is None
    assert job.error.message == "Training diverged at step 20 (loss is NaN)."
    # A job list has no events: the error is Mistral's status, said plainly.
    listed = {j.id: j for j in client.fine_tuning.jobs.list()}
    assert listed[crashed.id].error is not None
    assert listed[crashed.id].error.message == "The Mistral fine-tuning job failed (FAILED)."


def test_auto_pagination_follows_after_cursors(env: tuple[MistralStandIn, Gateway, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    standin, _gw, _host = env
    client = sdk(env)
    f = upload(client)
    created = [client.fine_tuning.jobs.create(training_file=f.id, model="open-mistral-7b").id for _ in range(7)]
    newest_first = list(reversed(created))

    first = client.fine_tuning.jobs.list(limit=3)
    assert [j.id for j in first.data] == newest_first[:3] and first.has_more is True
    # One request of `limit` items: Mistral's `total` says whether more follow.
    assert ("page", "0") in standin.requests[-1].query and ("page_size", "3") in standin.requests[-1].query
    second = client.fine_tuning.jobs.list(limit=3, after=first.data[-1].id)
    assert [j.id for j in second.data] == newest_first[3:6] and second.has_more is True
    last = client.fine_tuning.jobs.list(limit=3, after=second.data[-1].id)
    assert [j.id for j in last.data] == newest_first[6:] and last.has_more is False
    exact = client.fine_tuning.jobs.list(limit=7)
    assert len(exact.data) == 7 and exact.has_more is False
    assert [j.id for j in client.fine_tuning.jobs.list(limit=3)] == newest_first  # the SDK's auto-pagination

    # Re-listing across several Mistral pages: Mistral pages of 2, OpenAI pages of 3.
    monkeypatch.setattr(REGISTRY["mistral-ai"], "max_page_size", 2)
    before = len(standin.requests)
    assert [j.id for j in client.fine_tuning.jobs.list(limit=3)] == newest_first
    pages = [dict(r.query)["page"] for r in standin.requests[before:] if r.path == "/v1/fine_tuning/jobs"]
    # Each OpenAI page starts at the Mistral page saved for its cursor: items 0-1 and 2 (a page cut after
    # item 2), then that page again (2 skipped, 3) and 4-5, then 6.
    assert pages == ["0", "1", "1", "2", "3"]

    # A server that caps page_size lower than asked: the page numbers still line up.
    standin.max_page_size = 1
    monkeypatch.setattr(REGISTRY["mistral-ai"], "max_page_size", 100)
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2)] == newest_first

    with pytest.raises(openai.BadRequestError) as unknown:
        client.fine_tuning.jobs.list(limit=2, after="not-a-job")
    assert ebody(unknown)["param"] == "after" and ebody(unknown)["code"] == "invalid_cursor"

    files = [upload(client, name=f"part{i}.jsonl").id for i in range(4)]
    listed = client.files.list(limit=2)
    assert [x.id for x in listed.data] == [files[3], files[2]] and listed.has_more is True
    assert listed.first_id == files[3] and listed.last_id == files[2]
    assert [x.id for x in client.files.list(limit=2)] == [*reversed(files), f.id]
    assert [x.id for x in client.files.list(purpose="fine-tune", limit=10)][:1] == [files[3]]
    assert ("purpose", "fine-tune") in standin.requests[-1].query


def test_start_resume_and_pause(env: tuple[MistralStandIn, Gateway, str]) -> None:
    standin, _gw, _host = env
    client = sdk(env)
    f = upload(client)
    # A job created elsewhere without auto_start waits in VALIDATED until started.
    waiting = standin.add_job("open-mistral-7b", f.id, auto_start=False)
    assert [client.fine_tuning.jobs.retrieve(waiting["id"]).status for _ in range(3)] == [
        "validating_files", "queued", "queued"]
    started = client.fine_tuning.jobs.resume(waiting["id"])
    assert started.status == "queued" and started.model_extra["provider_status"] == "STARTED"
    assert standin.recorded("POST", f"/fine_tuning/jobs/{waiting['id']}/start")
    assert [client.fine_tuning.jobs.retrieve(waiting["id"]).status for _ in range(2)] == ["running", "succeeded"]
    with pytest.raises(openai.BadRequestError) as pause:
        client.fine_tuning.jobs.pause(waiting["id"])
    assert ebody(pause)["code"] == "unsupported_operation"
    assert "pausing" in ebody(pause)["message"]


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"seed": 7}, "seed"),
    ({"hyperparameters": {"batch_size": 8}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"learning_rate_multiplier": 20000}}, "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"beta": 0.1}}, "hyperparameters.beta"),
    ({"method": {"type": "dpo", "dpo": {}}}, "method.type"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}}},
     "method.supervised.hyperparameters.batch_size"),
    ({"metadata": {"team": "a"}}, "metadata"),
    ({"suffix": "x" * 19}, "suffix"),
    ({"integrations": [{"type": "wandb", "wandb": {"project": "p", "entity": "me"}}]},
     "integrations[0].wandb.entity"),
    ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "x-portkey-wandb-api-key"),
    ({"extra_body": {"repositories": []}}, "repositories"),
])
def test_unmappable_requests_are_400s_naming_the_field(env: tuple[MistralStandIn, Gateway, str],
                                                       kwargs: dict[str, Any], param: str) -> None:
    standin, _gw, _host = env
    client = sdk(env)
    f = upload(client)
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(training_file=f.id, model="open-mistral-7b", **kwargs)
    assert ebody(refused)["param"] == param
    assert not standin.recorded("POST", "/fine_tuning/jobs")  # nothing reached Mistral


def test_method_native_hyperparameters_and_wandb(env: tuple[MistralStandIn, Gateway, str]) -> None:
    standin, _gw, _host = env
    client = sdk(env, **{"x-portkey-wandb-api-key": WANDB_KEY})
    f = upload(client)
    job = client.fine_tuning.jobs.create(
        training_file=f.id, model="open-mistral-7b",
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "training_steps": 10, "learning_rate": 0.00005, "n_epochs": "auto"}}},  # type: ignore[typeddict-unknown-key]
        integrations=[{"type": "wandb", "wandb": {"project": "ft", "name": "run-1"}}])
    native = body_of(standin, "POST", "/fine_tuning/jobs")
    assert native["hyperparameters"] == {"training_steps": 10, "learning_rate": 0.00005}
    assert native["integrations"] == [{"type": "wandb", "project": "ft", "api_key": WANDB_KEY, "name": "run-1"}]
    assert job.hyperparameters.learning_rate_multiplier == 0.5 and job.hyperparameters.n_epochs == "auto"
    assert job.hyperparameters.model_extra["training_steps"] == 10
    assert job.method is not None and job.method.type == "supervised"
    assert job.integrations is not None and job.integrations[0].wandb.project == "ft"
    assert job.integrations[0].wandb.name == "run-1"


def test_upload_purposes_and_conversion_errors(env: tuple[MistralStandIn, Gateway, str]) -> None:
    standin, _gw, _host = env
    client = sdk(env)
    batch = client.files.create(file=("b.jsonl", io.BytesIO(b'{"custom_id": "1"}\n')), purpose="batch")
    assert batch.purpose == "batch" and standin.contents[batch.id] == b'{"custom_id": "1"}\n'  # not converted
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("a.pdf", io.BytesIO(b"%PDF")), purpose="assistants")
    assert ebody(purpose)["param"] == "purpose"
    with pytest.raises(openai.BadRequestError) as expiry:
        client.files.create(file=("t.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune",
                            expires_after={"anchor": "created_at", "seconds": 3600})
    assert ebody(expiry)["param"] == "expires_after"
    # OpenAI accepts image parts; Mistral's text fine-tuning does not: a 400 naming the line.
    image_line = json.dumps({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
        {"role": "assistant", "content": "A cat."}]}).encode() + b"\n"
    with pytest.raises(openai.BadRequestError) as conversion:
        client.files.create(file=("v.jsonl", io.BytesIO(EXAMPLES + image_line)), purpose="fine-tune")
    assert ebody(conversion)["param"] == "file" and ebody(conversion)["code"] == "invalid_training_file"
    assert "line 13" in ebody(conversion)["message"]
    assert set(standin.files) == {batch.id}  # nothing was created upstream for the refused files
    with pytest.raises(openai.BadRequestError) as order:
        client.files.list(order="asc")
    assert ebody(order)["param"] == "order"


def test_mistral_errors_arrive_openai_shaped(env: tuple[MistralStandIn, Gateway, str]) -> None:
    standin, _gw, _host = env
    client = sdk(env)
    wrong = sdk(env, key="wrong-mistral-key-123456")
    with pytest.raises(openai.AuthenticationError) as denied:
        wrong.fine_tuning.jobs.list()
    assert denied.value.status_code == 401 and ebody(denied)["message"] == "Unauthorized"
    assert set(ebody(denied)) >= {"message", "type", "param", "code"}
    assert "wrong-mistral-key-123456" not in json.dumps(denied.value.body)

    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.retrieve("7ad642c1-fc6f-4e07-a0b1-fa4e2c3a9b4e")
    assert missing.value.status_code == 404
    assert ebody(missing)["message"] == "Job with id '7ad642c1-fc6f-4e07-a0b1-fa4e2c3a9b4e' not found."
    assert ebody(missing)["code"] == "3101"
    with pytest.raises(openai.NotFoundError):
        client.files.content("7ad642c1-fc6f-4e07-a0b1-fa4e2c3a9b4e")

    standin.faults["/fine_tuning/jobs"] = [429]
    limited = sdk(env, **{"x-portkey-config": NO_RETRY})
    with pytest.raises(openai.RateLimitError) as rate:
        limited.fine_tuning.jobs.list()
    assert rate.value.status_code == 429 and ebody(rate)["message"] == "Requests rate limit exceeded"

    standin.faults["/fine_tuning/jobs"] = [500, 500, 500]  # tunegate retries a GET three times in all
    with pytest.raises(openai.InternalServerError) as broken:
        client.fine_tuning.jobs.list()
    assert broken.value.status_code == 500 and ebody(broken)["message"] == "Service unavailable (scripted 500)"
    assert standin.faults["/fine_tuning/jobs"] == []

    standin.faults["/files"] = [503, 502]  # two failures, then the third try succeeds
    assert client.files.list().data == []

    standin.faults["/fine_tuning/jobs"] = [503]  # a create is never retried blindly
    f = upload(client)
    with pytest.raises(openai.APIStatusError) as unavailable:
        client.fine_tuning.jobs.create(training_file=f.id, model="open-mistral-7b")
    assert unavailable.value.status_code == 503 and not standin.jobs

    # Mistral's own validation (HTTPValidationError) arrives as a 422 with the field in the message.
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        client.fine_tuning.jobs.create(training_file=f.id, model="open-mistral-7b",
                                       hyperparameters={"warmup_fraction": 5})  # type: ignore[arg-type]
    assert invalid.value.status_code == 422
    assert ebody(invalid)["message"].startswith("hyperparameters")
    assert ebody(invalid)["code"] == "validation_error"


def test_native_shapes_the_stand_in_does_not_send() -> None:
    """Timestamps as ISO strings or milliseconds, oldest-first events, and Mistral's wrapped
    validation error are all read correctly."""
    from tunegate.providers.mistral import Mistral, jobs
    from tunegate.upstream import UpstreamResponse

    assert jobs.unix("2024-05-31T16:23:12Z") == 1717172592 == jobs.unix(1717172592000)
    assert jobs.unix("2024-05-31T16:23:12") == 1717172592 and jobs.unix(None) is None
    raw = {"id": "j1", "model": "m", "status": "FAILED", "created_at": "2024-05-31T16:23:12Z",
           "modified_at": 1717172700, "training_files": [{"file_id": "f1"}, {"file_id": "f2"}],
           "hyperparameters": {"epochs": 1.5},
           "events": [{"name": "status-updated", "data": {"status": "RUNNING"}, "created_at": 1717172600},
                      {"name": "status-updated", "data": {"status": "FAILED", "message": "OOM"},
                       "created_at": 1717172690}]}
    job = jobs.to_job(raw)
    assert job["created_at"] == 1717172592 and job["finished_at"] == 1717172690
    assert job["training_file"] == "f1" and job["training_files"] == ["f1", "f2"]
    assert job["hyperparameters"]["n_epochs"] == 1.5
    assert job["error"] == {"code": "job_failed", "message": "OOM", "param": None}
    assert [e["id"] for e in jobs.events(raw)] == ["ftevent-j1-1", "ftevent-j1-0"]
    wrapped = {"object": "error", "type": "invalid_request_message_error", "param": None, "code": None,
               "message": {"detail": [{"loc": ["body", "hyperparameters", "learning_rate"],
                                       "msg": "Input should be less than or equal to 1", "type": "less_than_equal"}]}}
    response = UpstreamResponse(422, {}, json.dumps(wrapped).encode())
    assert Mistral().error_message(response) == ("hyperparameters.learning_rate: Input should be less than or "
                                                 "equal to 1", "invalid_request_message_error", "validation_error")
    plain = UpstreamResponse(401, {}, b'{"detail": "Unauthorized"}')
    assert Mistral().error_message(plain)[0] == "Unauthorized"
