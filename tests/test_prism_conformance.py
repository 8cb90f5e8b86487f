"""Every OpenAI fine-tuning, files and uploads operation through the gateway to Prism serving the
official spec. Prism refuses requests that break the spec, so a 200 here means the gateway sent a
conforming request; the answers are checked against the spec's response schemas."""

from __future__ import annotations

import io
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.gateway import Gateway
from tests.spec_schemas import assert_matches
from tests.standins.prism import Prism, prism_binary
from tunegate.config import ProviderSettings

pytestmark = pytest.mark.skipif(prism_binary() is None, reason="prism not installed (cd .ci && npm ci)")


@pytest.fixture(scope="module")
def prism(specs_dir: Path) -> Iterator[Prism]:
    with Prism(specs_dir / "openai-openapi.yaml") as server:
        yield server


@pytest.fixture(scope="module")
def gateway_to_prism(prism: Prism, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Prism]]:
    with Gateway(tmp_path_factory.mktemp("prism-gw")) as gw:
        yield gw, prism


@pytest.fixture
def sdk(gateway_to_prism: tuple[Gateway, Prism]) -> openai.OpenAI:
    gw, prism = gateway_to_prism
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-prism", max_retries=0,
                         default_headers={"x-portkey-provider": "openai", "x-portkey-custom-host": prism.url})


def test_jobs(sdk: openai.OpenAI) -> None:
    job = sdk.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file="file-abc123",
                                      suffix="x", seed=42, method={"type": "supervised", "supervised": {}})
    assert_matches(job.model_dump(mode="json", exclude_unset=True), "FineTuningJob")
    listing = sdk.fine_tuning.jobs.list(limit=2, metadata={"foo": "bar"})
    assert listing.data and all(j.object == "fine_tuning.job" for j in listing.data)
    for op in (sdk.fine_tuning.jobs.retrieve, sdk.fine_tuning.jobs.cancel, sdk.fine_tuning.jobs.pause,
               sdk.fine_tuning.jobs.resume):
        assert_matches(op("ft-AF1WoRqd3aJAHsqc9NY7iL8F").model_dump(mode="json", exclude_unset=True),
                       "FineTuningJob")
    events = sdk.fine_tuning.jobs.list_events("ft-AF1WoRqd3aJAHsqc9NY7iL8F", limit=5)
    assert_matches(events.data[0].model_dump(mode="json", exclude_unset=True), "FineTuningJobEvent")
    checkpoints = sdk.fine_tuning.jobs.checkpoints.list("ft-AF1WoRqd3aJAHsqc9NY7iL8F")
    assert_matches(checkpoints.data[0].model_dump(mode="json", exclude_unset=True), "FineTuningJobCheckpoint")


def test_checkpoint_permissions_and_graders(sdk: openai.OpenAI) -> None:
    ckpt = "ft:gpt-4o-mini-2024-07-18:org:weather:B7R9VjQd"
    created = sdk.fine_tuning.checkpoints.permissions.create(ckpt, project_ids=["proj_abc"])
    assert created.data[0].object == "checkpoint.permission"
    deleted = sdk.fine_tuning.checkpoints.permissions.delete("cp_zc4Q7MP6XxulcVzj4MZdwsAB",
                                                             fine_tuned_model_checkpoint=ckpt)
    assert deleted.object == "checkpoint.permission"
    grader = {"type": "string_check", "name": "g", "input": "{{sample.output_text}}", "reference": "x",
              "operation": "eq"}
    assert sdk.fine_tuning.alpha.graders.validate(grader=grader) is not None
    result = sdk.fine_tuning.alpha.graders.run(grader=grader, model_sample="x")
    assert result.reward is not None


def test_files_and_uploads(sdk: openai.OpenAI) -> None:
    f = sdk.files.create(file=("upload", io.BytesIO(b'{"a": 1}\n')), purpose="assistants",
                         expires_after={"anchor": "created_at", "seconds": 3600})
    assert_matches(f.model_dump(mode="json", exclude_unset=True), "OpenAIFile")
    assert sdk.files.list(purpose="fine-tune", limit=10, order="asc").data
    assert_matches(sdk.files.retrieve("file-abc123").model_dump(mode="json", exclude_unset=True), "OpenAIFile")
    assert sdk.files.delete("file-abc123").deleted in (True, False)
    up = sdk.uploads.create(bytes=0, filename="f.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    assert_matches(up.model_dump(mode="json", exclude_unset=True), "Upload")
    part = sdk.uploads.parts.create("upload_abc123", data=b"abc")
    assert part.object == "upload.part"
    assert sdk.uploads.complete("upload_abc123", part_ids=["part_def456"]).object == "upload"
    assert sdk.uploads.cancel("upload_abc123").object == "upload"


SEED_CURLS = [
    # The four commands of ../shared/seed/fine-tuning-api.txt, as written; only the host is swapped.
    '''curl https://your-gateway.example.com/v1/fine_tuning/jobs \\
  -H "x-portkey-api-key: YOUR_API_KEY" \\
  -H "x-portkey-provider: openai"''',
    '''curl https://your-gateway.example.com/v1/fine_tuning/jobs \\
  -X POST \\
  -H "Content-Type: application/json" \\
  -H "x-portkey-api-key: YOUR_API_KEY" \\
  -H "x-portkey-provider: openai" \\
  -d '{
    "training_file": "file-abc123",
    "model": "gpt-4o-mini-2024-07-18"
  }\'''',
    '''curl https://your-gateway.example.com/v1/fine_tuning/jobs/ftjob-abc123 \\
  -H "x-portkey-api-key: YOUR_API_KEY" \\
  -H "x-portkey-provider: openai"''',
    '''curl https://your-gateway.example.com/v1/fine_tuning/jobs/ftjob-abc123/cancel \\
  -X POST \\
  -H "x-portkey-api-key: YOUR_API_KEY" \\
  -H "x-portkey-provider: openai"''',
]


@pytest.mark.parametrize("command", SEED_CURLS, ids=["list", "create", "retrieve", "cancel"])
def test_seed_curl_commands(command: str, gateway_to_prism: tuple[Gateway, Prism]) -> None:
    import json

    gw, prism = gateway_to_prism
    # A shell joins backslash-newline continuations; shlex does not.
    args = shlex.split(command.replace("\\\n", " ").replace("https://your-gateway.example.com", gw.url))
    # The operator points the openai provider at Prism (as a config file's [providers.openai] would).
    gw.settings.providers["openai"] = ProviderSettings(base_url=prism.url)
    out = subprocess.run([*args, "-s", "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=60)
    body, _, status = out.stdout.rpartition("\n")
    assert status == "200", out.stdout
    data = json.loads(body)
    if args[1].endswith("/jobs") and "POST" not in args:
        assert data["object"] == "list" and isinstance(data["has_more"], bool) and data["data"]
        assert_matches(data["data"][0], "FineTuningJob")
    else:
        assert_matches(data, "FineTuningJob")
        for field in ("id", "object", "model", "fine_tuned_model", "status", "created_at", "trained_tokens"):
            assert field in data
