"""The client commands against a real gateway (on a socket) and the stateful OpenAI stand-in."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.ui.conftest import EXAMPLES, Env
from tests.ui.standin import TOTAL_STEPS, train_loss
from tunegate.cli import app

runner = CliRunner()


def tg(env: Env, *args: str, extra_env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), env={**env.cli_env, **(extra_env or {})})


def upload(env: Env) -> str:
    result = tg(env, "files", "upload", str(env.training_file()), "--json")
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert created["validation"]["ok"] is True
    return str(created["id"])


def test_files_round_trip(env: Env) -> None:
    path = env.training_file()
    result = tg(env, "files", "upload", str(path))
    assert result.exit_code == 0, result.output
    file_id = result.stdout.strip().splitlines()[-1]
    assert file_id.startswith("file-") and env.standin.contents[file_id] == EXAMPLES
    assert "OK: 0 error(s)" in result.stderr  # the local validation summary came first
    assert "uploading train.jsonl" in result.stderr  # the progress bar

    listed = json.loads(tg(env, "files", "list", "--json").stdout)
    assert [f["id"] for f in listed] == [file_id]
    got = json.loads(tg(env, "files", "get", file_id, "--json").stdout)
    assert got["filename"] == "train.jsonl" and got["bytes"] == len(EXAMPLES)

    target = env.tmp / "back.jsonl"
    result = tg(env, "files", "download", file_id, "-o", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == EXAMPLES

    assert json.loads(tg(env, "files", "rm", file_id, "--json").stdout)["deleted"] is True
    result = tg(env, "files", "get", file_id)
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: 404")
    assert "Traceback" not in result.output


def test_upload_refuses_an_invalid_file_before_sending_it(env: Env) -> None:
    bad = env.training_file("bad.jsonl", b'{"messages": [}\n')
    result = tg(env, "files", "upload", str(bad))
    assert result.exit_code == 1
    assert "did not pass validation" in result.stderr and "INVALID" in result.stderr
    assert not env.standin.files  # nothing reached the provider


def test_jobs_create_list_get_cancel(env: Env) -> None:
    file_id = upload(env)
    result = tg(env, "jobs", "create", "--model", "gpt-4o-mini-2024-07-18", "--training-file", file_id,
                "--suffix", "cli", "--n-epochs", "3", "--seed", "7", "--json")
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["hyperparameters"]["n_epochs"] == 3 and job["seed"] == 7

    other = json.loads(tg(env, "jobs", "create", "--model", "gpt-4o-mini-2024-07-18", "--training-file", file_id,
                          "--method", "dpo", "--json").stdout)
    assert env.standin.jobs[other["id"]]["method"]["type"] == "dpo"

    # Across providers, from the registry (no --provider).
    listed = tg(env, "jobs", "list", "--json", extra_env={"TUNEGATE_PROVIDER": ""})
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert {r["id"] for r in rows} == {job["id"], other["id"]} and {r["provider"] for r in rows} == {"openai"}
    table = tg(env, "jobs", "list", extra_env={"TUNEGATE_PROVIDER": ""})
    assert job["id"] in table.stdout and "validating_files" in table.stdout

    got = json.loads(tg(env, "jobs", "get", job["id"], "--json", extra_env={"TUNEGATE_PROVIDER": ""}).stdout)
    assert got["id"] == job["id"] and got["status"] == "queued"  # the stand-in advances per retrieve

    cancelled = tg(env, "jobs", "cancel", other["id"])
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    again = tg(env, "jobs", "cancel", other["id"])
    assert again.exit_code == 1 and "already cancelled" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_jobs_watch_follows_a_job_to_success(env: Env) -> None:
    file_id = upload(env)
    job = json.loads(tg(env, "jobs", "create", "--model", "gpt-4o-mini-2024-07-18", "--training-file", file_id,
                        "--json").stdout)
    result = tg(env, "jobs", "watch", job["id"], "--interval", "0.05")
    print(result.output)  # shown with pytest -s: the watch transcript
    assert result.exit_code == 0, result.output
    out = result.stdout
    for status in ("queued", "running", "succeeded"):
        assert f"status {status}" in out
    assert "event  Fine-tuning job started" in out
    last = f"{train_loss(TOTAL_STEPS):.4f} at step {TOTAL_STEPS}"
    assert last in out and "▁" in out and "█" in out  # the sparkline
    assert out.strip().splitlines()[-1].startswith("succeeded: ft:gpt-4o-mini-2024-07-18")


def test_jobs_watch_exit_codes(env: Env) -> None:
    file_id = upload(env)
    failing = json.loads(tg(env, "jobs", "create", "--model", "fail-model", "--training-file", file_id,
                            "--json").stdout)
    result = tg(env, "jobs", "watch", failing["id"], "--interval", "0.01")
    assert result.exit_code == 1 and "Training file has bad lines." in result.stdout

    doomed = json.loads(tg(env, "jobs", "create", "--model", "gpt-4o-mini", "--training-file", file_id,
                           "--json").stdout)
    tg(env, "jobs", "cancel", doomed["id"])
    result = tg(env, "jobs", "watch", doomed["id"], "--json", "--interval", "0.01")
    assert result.exit_code == 2
    updates = [json.loads(line) for line in result.stdout.splitlines()]
    assert updates[-1]["status"] == "cancelled"


def test_errors_are_one_line(env: Env) -> None:
    result = tg(env, "jobs", "list", extra_env={"TUNEGATE_URL": "http://127.0.0.1:9", "TUNEGATE_PROVIDER": ""})
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach the gateway at http://127.0.0.1:9")
    assert len(result.stderr.strip().splitlines()) == 1

    result = tg(env, "jobs", "list", extra_env={"TUNEGATE_API_KEY": "tg-nope.nope"})
    assert result.exit_code == 1 and result.stderr.startswith("error: 401")

    result = tg(env, "files", "upload", str(env.tmp / "missing.jsonl"))
    assert result.exit_code == 1 and "no such file" in result.stderr
