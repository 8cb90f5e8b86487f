"""The migration path end to end, through the CLI, over real sockets: an OpenAI-shaped source with several
jobs and files → inventory → export (interrupted, then completed) → replay --dry-run → replay onto Together
(stand-in) and onto `local` (real training of the tiny model), each replay re-run without duplicates."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.migration.conftest import DEMO, DPO, SUFFIX, VALIDATION, Env
from tunegate.cli import app
from tunegate.data.validator import validate_path
from tunegate.migration import api, export
from tunegate.migration.bundle import MANIFEST, REPLAYS

runner = CliRunner()
SRC = ["--from", "openai", "--connection", "src"]


def tg(env: Env, *args: str) -> Any:
    return runner.invoke(app, list(args), env=env.cli_env)


def ok_json(env: Env, *args: str) -> Any:
    result = tg(env, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def content_gets(env: Env) -> list[str]:
    return [r.path for r in env.source.requests if r.method == "GET" and r.path.endswith("/content")]


def stable(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k != "exported_at"}


def test_inventory_lists_every_page_and_flags_retiring_bases(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "PAGE", 2)  # three jobs: two pages
    inv = ok_json(env, "migrate", "inventory", *SRC, "--within-days", "60")
    listed = [r for r in env.source.requests if r.method == "GET" and r.path == "/fine_tuning/jobs"]
    assert len(listed) == 2 and listed[1].query["after"]
    assert {j["id"] for j in inv["jobs"]} == set(env.jobs.values())
    assert inv["totals"]["jobs_by_status"] == {"succeeded": 2, "failed": 1}
    sup = next(j for j in inv["jobs"] if j["id"] == env.jobs["supervised"])
    assert sup["suffix"] == SUFFIX and sup["hyperparameters"]["learning_rate_multiplier"] == 2.0
    assert sup["method"] == "supervised" and sup["seed"] == 7
    dpo = next(j for j in inv["jobs"] if j["id"] == env.jobs["dpo"])
    assert dpo["method"] == "dpo" and dpo["hyperparameters"]["beta"] == 0.2

    # Files: training, validation and the result files, each with its size, status and users.
    by_id = {f["id"]: f for f in inv["files"]}
    assert by_id[sup["training_file"]]["bytes"] == DEMO.stat().st_size
    assert by_id[sup["validation_file"]]["bytes"] == len(VALIDATION)
    assert {u["role"] for u in by_id[sup["training_file"]]["used_by"]} == {"training"}
    assert len([u for u in by_id[sup["training_file"]]["used_by"]]) == 2  # the failed job used it too
    assert all(f["status"] == "processed" for f in inv["files"]) and len(sup["result_files"]) == 1

    # Base models with their shutdown dates, flagged when within 60 days of today.
    bases = {b["model"]: b for b in inv["base_models"]}
    assert bases["gpt-4o-mini-2024-07-18"]["retirement"]["shutdown"] == "2027-01-14"
    left = bases["gpt-4o-mini-2024-07-18"]["retirement"]["days_left"]
    assert bases["gpt-4o-mini-2024-07-18"]["retirement"]["flagged"] is (left <= 60)
    assert bases["fail-mini"]["retirement"] is None
    assert {t["model"] for t in inv["tuned_models"]} == {sup["fine_tuned_model"], dpo["fine_tuned_model"]}
    assert inv["platform"]["no_new_jobs_after"] == "2027-01-06"

    table = tg(env, "migrate", "inventory", *SRC)  # the human form names the same things
    assert table.exit_code == 0, table.output
    assert env.jobs["dpo"] in table.stdout and "2027-01-14" in table.stdout


def test_export_interrupted_then_completed_without_duplicates(env: Env, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    clean_dir, bundle = tmp_path / "clean", tmp_path / "bundle"
    summary = ok_json(env, "migrate", "export", str(clean_dir), *SRC)
    assert summary["complete"] is True and summary["jobs"] == 3 and summary["files"] == 5
    clean = json.loads((clean_dir / MANIFEST).read_text())
    before = len(content_gets(env))

    # Stop the second download half-way (as Ctrl-C would), through the real command.
    files_seen: list[int] = []

    def stop_in_second_file(n: int) -> None:
        files_seen.append(n)
        if len(files_seen) == 2:
            raise KeyboardInterrupt

    real = export.export

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **{**kwargs, "chunk_progress": stop_in_second_file})

    monkeypatch.setattr(export, "export", interrupted)
    result = tg(env, "migrate", "export", str(bundle), *SRC, "--json")
    assert result.exit_code != 0
    monkeypatch.setattr(export, "export", real)
    half = json.loads((bundle / MANIFEST).read_text())
    assert half["complete"] is False and len(half["files"]) == 1  # only the finished file is listed
    on_disk = sorted(p for p in (bundle / "files").rglob("*") if p.is_file())
    assert len(on_disk) == 1 and not list(bundle.rglob("*.part"))  # nothing half-written left behind
    assert not list(bundle.glob(".*.tmp"))

    # A damaged file is fetched again; the finished one is kept.
    done = next(iter(half["files"].values()))
    again = ok_json(env, "migrate", "export", str(bundle), *SRC)
    assert again["complete"] is True and again["kept"] == [done["id"]] and len(again["downloaded"]) == 4
    assert stable(json.loads((bundle / MANIFEST).read_text())) == {**stable(clean),
                                                                   "bundle_id": half["bundle_id"]}
    (bundle / done["path"]).write_bytes(b"damaged\n")
    third = ok_json(env, "migrate", "export", str(bundle), *SRC)
    assert third["downloaded"] == [done["id"]] and len(third["kept"]) == 4
    # Every file's bytes fetched once per run that needed them: 5 (clean) + 2 (interrupted) + 4 + 1.
    assert len(content_gets(env)) - before == 2 + 4 + 1
    for entry in json.loads((bundle / MANIFEST).read_text())["files"].values():
        assert api.sha256_of(bundle / entry["path"]) == entry["sha256"]


def export_bundle(env: Env, tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    assert ok_json(env, "migrate", "export", str(bundle), *SRC)["complete"] is True
    return bundle


def dry(env: Env, bundle: Path, *args: str) -> dict[str, Any]:
    report = ok_json(env, "migrate", "replay", str(bundle), "--dry-run", *args)
    return {j["source_job"]: j for j in report["jobs"]}


def test_dry_run_says_tokens_cost_time_and_what_does_not_carry_over(env: Env, tmp_path: Path) -> None:
    bundle = export_bundle(env, tmp_path)
    requests_before = len(env.together.requests)
    plans = dry(env, bundle, "--to", "together-ai")
    sup, dpo, failed = (plans[env.jobs[n]] for n in ("supervised", "dpo", "failed"))
    assert failed["skipped"] and "failed" in failed["skipped"]
    tokens = validate_path(DEMO).stats["estimated_tokens"]
    est = sup["estimate"]
    assert est["training_tokens"] == tokens and est["epochs"] == 2
    assert est["billed_tokens"] == 2 * tokens + 2 * est["validation_tokens"]  # Together bills validation too
    assert est["cost"] == pytest.approx(est["billed_tokens"] / 1e6 * 0.48, abs=1e-4)
    assert est["time_minutes"] > 0 and "assumption" in est["time_assumption"]
    assert sup["model"] == "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference" and sup["learning_rate"] == 2e-5
    assert any("metadata" in n for n in sup["notes"]) and sup["blockers"] == []
    assert dpo["model"] == "meta-llama/Meta-Llama-3.1-70B-Instruct-Reference"
    assert dpo["body"]["method"] == {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "beta": 0.2}}}
    assert dpo["estimate"]["price"]["usd_per_1m_tokens"] == 7.25  # the 70B DPO row
    assert len(env.together.requests) == requests_before  # a dry run sends nothing

    fireworks = dry(env, bundle, "--to", "fireworks-ai")
    assert any("method 'dpo'" in b for b in fireworks[env.jobs["dpo"]]["blockers"])
    assert any("seed 7 not carried" in n for n in fireworks[env.jobs["supervised"]]["notes"])
    mistral = dry(env, bundle, "--to", "mistral-ai")[env.jobs["supervised"]]
    assert mistral["body"]["suffix"] == SUFFIX[:18] and any("longer than" in n for n in mistral["notes"])
    assert any("batch_size 4 not carried" in n for n in mistral["notes"])
    assert mistral["estimate"]["cost"] is None and "no price" in mistral["estimate"]["cost_unknown"]
    bedrock = dry(env, bundle, "--to", "bedrock", "--base", "gpt-4o-mini-2024-07-18=meta.llama3-1-8b-instruct-v1:0")
    b = bedrock[env.jobs["supervised"]]
    assert b["model"] == "meta.llama3-1-8b-instruct-v1:0" and b["learning_rate"] == pytest.approx(2e-4)
    # A model without a mapping is reported, not guessed.
    nomap = dry(env, bundle, "--to", "together-ai", "--all-statuses")[env.jobs["failed"]]
    assert nomap["replayable"] is False and any("--base fail-mini=MODEL" in x for x in nomap["blockers"])

    human = tg(env, "migrate", "replay", str(bundle), "--dry-run", "--to", "fireworks-ai")
    assert human.exit_code == 0 and "cannot carry over: method 'dpo'" in human.stdout


def test_dry_run_blocks_files_the_target_cannot_take(env: Env, tmp_path: Path) -> None:
    bundle = export_bundle(env, tmp_path)
    manifest = json.loads((bundle / MANIFEST).read_text())
    sup = next(j for j in manifest["jobs"] if j["id"] == env.jobs["supervised"])
    path = bundle / manifest["files"][sup["training_file"]]["path"]
    tool = {"messages": [{"role": "user", "content": "weather?"},
                         {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                             "name": "w", "arguments": "{}"}}]}]}
    path.write_bytes(path.read_bytes() + json.dumps(tool).encode() + b"\n")
    plan = dry(env, bundle, "--to", "together-ai")[env.jobs["supervised"]]
    assert any("cannot convert 1 line(s)" in b and "line 17" in b for b in plan["blockers"])


def test_replay_onto_together_is_idempotent(env: Env, tmp_path: Path) -> None:
    bundle = export_bundle(env, tmp_path)
    args = ("migrate", "replay", str(bundle), "--to", "together-ai", "--connection", "tgt")
    first = ok_json(env, *args)
    results = {j["source_job"]: j for j in first["jobs"]}
    assert results[env.jobs["failed"]]["result"] == "skipped"
    assert {results[env.jobs[n]]["result"] for n in ("supervised", "dpo")} == {"created"}
    assert len(env.together.jobs) == 2 and len(env.together.uploads) == 3
    sent = {j["_body"]["suffix"]: j["_body"] for j in env.together.jobs.values()}
    sup = sent[SUFFIX]
    assert sup["learning_rate"] == pytest.approx(2e-5) and sup["n_epochs"] == 2 and sup["batch_size"] == 4
    assert sup["random_seed"] == 7 and sup["model"] == "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
    assert sup["validation_file"] and sup["n_evals"] == 2
    assert sent["prefs"]["training_method"] == {"method": "dpo", "dpo_beta": 0.2}
    uploaded = {u["file_name"]: u["_bytes"] for u in env.together.uploads}
    assert set(uploaded) == {"support.jsonl", "support-valid.jsonl", "prefs.jsonl"}
    assert uploaded["prefs.jsonl"].count(b"\n") == len(DPO.splitlines())  # converted line by line

    # A second run creates nothing and uploads nothing.
    again = ok_json(env, *args)
    assert {j["result"] for j in again["jobs"] if j["source_job"] != env.jobs["failed"]} == {"already"}
    assert len(env.together.jobs) == 2 and len(env.together.uploads) == 3

    # A run that died after the create, before recording it: the Idempotency-Key returns the same job.
    record = json.loads((bundle / REPLAYS).read_text())
    created = record["targets"]["together-ai@tgt"]["jobs"].pop(env.jobs["supervised"])
    (bundle / REPLAYS).write_text(json.dumps(record))
    third = {j["source_job"]: j for j in ok_json(env, *args)["jobs"]}
    assert third[env.jobs["supervised"]]["result"] == "created"
    assert third[env.jobs["supervised"]]["job"]["id"] == created["id"]
    assert len(env.together.jobs) == 2 and len(env.together.uploads) == 3


def test_replay_onto_local_trains_the_tiny_model(env: Env, tmp_path: Path, tiny_model: str) -> None:
    bundle = export_bundle(env, tmp_path)
    args = ("migrate", "replay", str(bundle), "--to", "local", "--connection", "here", "--job", env.jobs["supervised"],
            "--base", f"gpt-4o-mini-2024-07-18={tiny_model}")
    plan = dry(env, bundle, *args[3:])[env.jobs["supervised"]]
    assert plan["learning_rate"] == pytest.approx(4e-4) and plan["estimate"]["cost"] == 0.0
    results = {j["source_job"]: j for j in ok_json(env, *args)["jobs"]}
    job = results[env.jobs["supervised"]]
    assert job["result"] == "created" and results[env.jobs["dpo"]]["result"] == "skipped"
    sdk = env.sdk(**{"x-portkey-provider": "local", "x-portkey-virtual-key": "here"})
    deadline = time.monotonic() + 240
    while (current := sdk.fine_tuning.jobs.retrieve(job["job"]["id"])).status not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, current.status
        time.sleep(0.5)
    assert current.status == "succeeded", current.error
    assert current.hyperparameters.n_epochs == 2 and current.hyperparameters.batch_size == 4
    assert current.hyperparameters.learning_rate_multiplier == 2.0 and current.seed == 7
    assert current.fine_tuned_model and SUFFIX in current.fine_tuned_model
    assert current.metadata == {"team": "support"} and current.validation_file
    rerun = {j["source_job"]: j for j in ok_json(env, *args)["jobs"]}
    assert rerun[env.jobs["supervised"]]["result"] == "already"  # no second job
    listed = sdk.fine_tuning.jobs.list(limit=10).data
    assert [j.id for j in listed] == [current.id]


def test_replay_says_why_the_gateway_refuses_before_uploading(env: Env, tmp_path: Path) -> None:
    bundle = export_bundle(env, tmp_path)
    # This key's gateway has no Bedrock connection: the refusal is the gateway's own words, before any upload.
    result = tg(env, "migrate", "replay", str(bundle), "--to", "bedrock")
    assert result.exit_code == 1
    assert "no connection for provider 'bedrock'" in result.stdout and "Broken pipe" not in result.stdout
    assert json.loads((bundle / REPLAYS).read_text())["targets"]["bedrock"] == {"files": {}, "jobs": {}} \
        if (bundle / REPLAYS).exists() else True
