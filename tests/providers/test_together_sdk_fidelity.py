"""Together: what its own Python SDKs show about the real wire, where the spec file says otherwise
(issue 13, item 4). TP = togethercomputer/together-python@eba5e5f (1.5.x); T3 = PyPI together==3.1.1.
Each test names the SDK source it follows; tunegate/providers/together/MAPPING.md lists them all."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread
from tests.standins.together import TogetherStandIn
from tunegate.data import ConversionError, convert_lines
from tunegate.providers.together.files import to_file
from tunegate.providers.together.jobs import to_checkpoints, to_events, to_job

CHAT = b"".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}"},
                                         {"role": "assistant", "content": f"{i}"}]}).encode() + b"\n"
                for i in range(12))  # at least 10 lines: what the gateway asked of every upload until issue 13
WANDB_KEY = "wandb-secret-123456"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TogetherStandIn, openai.OpenAI]]:
    standin = TogetherStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        headers = {"x-portkey-provider": "together", "x-portkey-custom-host": upstream.url + "/v1",
                   "x-portkey-wandb-api-key": WANDB_KEY}
        yield standin, openai.OpenAI(base_url=gw.url + "/v1", api_key=standin.api_key, default_headers=headers,
                                     max_retries=0)


def created_bodies(standin: TogetherStandIn) -> list[Any]:
    return [json.loads(r.body) for r in standin.requests if r.method == "POST" and r.path == "/v1/fine-tunes"]


def upload(sdk: openai.OpenAI, data: bytes = CHAT, name: str = "train.jsonl", purpose: Any = "fine-tune") -> Any:
    return sdk.files.create(file=(name, io.BytesIO(data)), purpose=purpose)


def test_capitalised_levels_and_types_give_the_failure_reason(env: tuple[TogetherStandIn, openai.OpenAI]) -> None:
    """TP/T3 FinetuneEventLevels "Info"/"Warning"/"Error", FinetuneEventType "JOB_USER_ERROR"."""
    standin, sdk = env
    job = sdk.fine_tuning.jobs.create(training_file=upload(sdk).id, model="baddata-model")
    polled = [sdk.fine_tuning.jobs.retrieve(job.id) for _ in range(2)]
    failed = polled[-1]
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.message == "The training file has no example with an assistant message."
    assert failed.error.code == "invalid_training_file"
    levels = [(e.level, e.data["type"]) for e in sdk.fine_tuning.jobs.list_events(job.id).data]  # type: ignore[index]
    assert levels == [("error", "JOB_USER_ERROR"), ("warn", "WARNING"), ("info", "JOB_PENDING")]
    # The same rule on a job the SDK's own words describe, without the stand-in.
    raw = {"id": "ft-1", "status": "error", "created_at": "2025-01-01T00:00:00Z",
           "events": [{"type": "JOB_ERROR", "level": "Error", "message": "Out of memory at step 3."},
                      {"type": "JOB_STOPPED", "level": "Info", "message": "Stopped."}]}
    assert to_job(raw)["error"]["message"] == "Out of memory at step 3."
    assert [e["level"] for e in to_events("ft-1", raw["events"])] == ["info", "error"]


def test_validation_file_sends_n_evals(env: tuple[TogetherStandIn, openai.OpenAI]) -> None:
    """TP/T3 create(): n_evals defaults to 0, which leaves a validation file unused."""
    standin, sdk = env
    f = upload(sdk)
    sdk.fine_tuning.jobs.create(training_file=f.id, validation_file=f.id, model="m",
                                hyperparameters={"n_epochs": 3})
    sdk.fine_tuning.jobs.create(training_file=f.id, validation_file=f.id, model="m")
    sdk.fine_tuning.jobs.create(training_file=f.id, validation_file=f.id, model="m",
                                extra_body={"together": {"n_evals": 7}})
    sdk.fine_tuning.jobs.create(training_file=f.id, model="m")
    bodies = created_bodies(standin)
    assert [b.get("n_evals") for b in bodies] == [3, 1, 7, None]


def test_wandb_key_is_sent_under_the_sdks_name(env: tuple[TogetherStandIn, openai.OpenAI]) -> None:
    """TP/T3 FinetuneRequest.wandb_key (the spec's `wandb_api_key` is not what the SDKs send)."""
    standin, sdk = env
    f = upload(sdk)
    job = sdk.fine_tuning.jobs.create(training_file=f.id, model="m",
                                      integrations=[{"type": "wandb", "wandb": {"project": "p"}}])
    sdk.fine_tuning.jobs.create(training_file=f.id, model="m",
                                extra_body={"together": {"wandb_api_key": "other-key-123456",
                                                         "wandb_project_name": "q"}})
    first, second = created_bodies(standin)
    assert first["wandb_key"] == WANDB_KEY and "wandb_api_key" not in first
    assert second["wandb_key"] == "other-key-123456" and "wandb_api_key" not in second
    assert standin.jobs[job.id]["wandb_url"]  # the stand-in saw a key where the SDKs put it
    assert WANDB_KEY not in json.dumps(job.model_dump())


def test_suffix_limit_is_40(env: tuple[TogetherStandIn, openai.OpenAI]) -> None:
    """TP/T3 FinetuneRequest.suffix: "up to 40 character suffix"."""
    standin, sdk = env
    f = upload(sdk)
    assert sdk.fine_tuning.jobs.create(training_file=f.id, model="m", suffix="s" * 40).status
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.fine_tuning.jobs.create(training_file=f.id, model="m", suffix="s" * 41)
    assert bad.value.body["param"] == "suffix"  # type: ignore[index]
    assert len(created_bodies(standin)) == 1


def test_trained_tokens_count_every_epoch(env: tuple[TogetherStandIn, openai.OpenAI]) -> None:
    """TP FinetuneResponse.token_count: "dataset token count"; OpenAI's trained_tokens counts epochs."""
    standin, sdk = env
    job = sdk.fine_tuning.jobs.create(training_file=upload(sdk).id, model="m", hyperparameters={"n_epochs": 2})
    done = [sdk.fine_tuning.jobs.retrieve(job.id) for _ in range(5)][-1]
    assert done.status == "succeeded" and done.trained_tokens == 54321 * 2
    base = {"id": "ft-1", "status": "completed", "created_at": "2025-01-01T00:00:00Z", "token_count": 100}
    assert to_job({**base, "n_epochs": 3})["trained_tokens"] == 300
    assert to_job({**base, "n_epochs": 3, "epochs_completed": 2})["trained_tokens"] == 200  # stopped early
    assert to_job(base)["trained_tokens"] == 100


def test_final_checkpoints_are_named_by_the_job(env: tuple[TogetherStandIn, openai.OpenAI]) -> None:
    """TP resources/finetune.py _parse_raw_checkpoints: `<job>:<step>` only for intermediate ones."""
    standin, sdk = env
    job = sdk.fine_tuning.jobs.create(training_file=upload(sdk).id, model="m")
    for _ in range(5):
        sdk.fine_tuning.jobs.retrieve(job.id)
    names = [(c.step_number, c.fine_tuned_model_checkpoint) for c in sdk.fine_tuning.jobs.checkpoints.list(job.id)]
    assert names == [(30, job.id), (30, job.id), (20, f"{job.id}:20"), (10, f"{job.id}:10")]
    final = to_checkpoints("ft-9", [{"step": 5, "checkpoint_type": "Final", "created_at": "2025-01-01T00:00:00Z"}])
    assert final[0]["fine_tuned_model_checkpoint"] == "ft-9"


def test_float_seconds_remaining_gives_an_estimate() -> None:
    """TP/T3 FinetuneProgress.seconds_remaining: float (the spec: integer)."""
    raw = {"id": "ft-1", "status": "running", "created_at": "2025-01-01T00:00:00Z",
           "progress": {"estimate_available": True, "seconds_remaining": 90.25}}
    assert to_job(raw, now=1000.0)["estimated_finish"] == 1091
    assert to_job({**raw, "progress": {"estimate_available": True, "seconds_remaining": 90}},
                  now=1000.0)["estimated_finish"] == 1090


def test_csv_only_for_evals(env: tuple[TogetherStandIn, openai.OpenAI]) -> None:
    """TP utils/files.py _check_csv / _check_parquet: CSV only for `eval`, Parquet for anything else."""
    standin, sdk = env
    for name, purpose in (("requests.csv", "batch"), ("train.csv", "fine-tune"), ("evals.parquet", "evals")):
        with pytest.raises(openai.BadRequestError) as bad:
            upload(sdk, b"a,b\nhi,there\n", name, purpose=purpose)
        assert bad.value.body["code"] == "unsupported_file_type", name  # type: ignore[index]
        assert bad.value.body["param"] == "file"  # type: ignore[index]
    assert standin.uploads == []
    upload(sdk, b"question,answer\nhi,there\n", "evals.csv", purpose="evals")
    assert standin.uploads[-1]["file_type"] == "csv" and standin.uploads[-1]["purpose"] == "eval"


def test_image_parts_of_user_messages_reach_together(env: tuple[TogetherStandIn, openai.OpenAI]) -> None:
    """TP utils/files.py _check_message_content: user messages may hold base64 image_url parts."""
    standin, sdk = env
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    line = {"messages": [{"role": "system", "content": "Describe."},
                         {"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]},
                         {"role": "assistant", "content": "A cat."}]}
    f = upload(sdk, json.dumps(line).encode() + b"\n" + CHAT)
    sent = json.loads(standin.contents[f.id].splitlines()[0])
    assert sent["messages"][1]["content"][1] == image
    # One format per example (TP validate_messages): the text-only messages become text parts too.
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "Describe."}]
    assert sent["messages"][2]["content"] == [{"type": "text", "text": "A cat."}]


@pytest.mark.parametrize(("content_role", "url", "match"), [
    ("assistant", "data:image/png;base64,AAAA", "only in user messages"),
    ("user", "https://example.com/cat.png", "base64 data URLs"),
    ("user", "data:image/gif;base64,AAAA", "base64 data URLs"),
])
def test_image_rules(content_role: str, url: str, match: str) -> None:
    parts = [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": url}}]
    user = parts if content_role == "user" else "hi"
    answer = parts if content_role == "assistant" else "ok"
    line = json.dumps({"messages": [{"role": "user", "content": user},
                                    {"role": "assistant", "content": answer}]}).encode()
    with pytest.raises(ConversionError, match=match):
        list(convert_lines([line], "together"))


def test_processing_status_decides_the_file_status() -> None:
    """T3 FileResponse.processing_status and validation_report (newer answers than `Processed`)."""
    base = {"id": "file-1", "bytes": 3, "created_at": 1, "filename": "a.jsonl", "purpose": "fine-tune"}
    assert to_file({**base, "processing_status": "RUNNING"})["status"] == "uploaded"
    assert to_file({**base, "processing_status": "COMPLETED", "Processed": False})["status"] == "processed"
    bad = to_file({**base, "processing_status": "INVALID_FORMAT",
                   "validation_report": {"valid": False, "error": "Line 2 is not JSON."}})
    assert (bad["status"], bad["status_details"]) == ("error", "Line 2 is not JSON.")
    assert to_file({**base, "Processed": True})["status"] == "processed"
