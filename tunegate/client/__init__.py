"""Client commands: ``tunegate files …`` and ``tunegate jobs …`` against a running gateway.

The gateway's URL and key come from ``--url``/``TUNEGATE_URL`` (default http://127.0.0.1:8787) and
``TUNEGATE_API_KEY``, ``TUNEGATE_API_KEY_FILE`` or ``--api-key -`` (stdin) / ``--api-key @FILE`` (a tunegate
key, or a provider key on an open gateway; a key typed on the command line works, with a warning); the provider
from ``--provider``/``TUNEGATE_PROVIDER`` and a stored connection from ``--connection``/
``TUNEGATE_CONNECTION``. Every command takes ``--json``. Errors are one line on stderr and a non-zero
exit status; ``jobs watch`` exits 0 when the job succeeded, 1 when it failed, 2 when it was cancelled.
"""

# typer declares options as call defaults:
# ruff: noqa: B008

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from tunegate.client.http import Client, GatewayError
from tunegate.secret_input import SecretInputError, read_secret
from tunegate.ui.loss import loss_points, sparkline

files_app = typer.Typer(help="Upload, list, fetch and delete files through a running gateway.",
                        no_args_is_help=True)
jobs_app = typer.Typer(help="Create, list, inspect, cancel and watch fine-tuning jobs through a running gateway.",
                       no_args_is_help=True)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

STATUS_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "bright_black", "running": "blue",
                "queued": "yellow", "validating_files": "yellow", "paused": "magenta"}

UrlOpt = typer.Option(None, "--url", envvar="TUNEGATE_URL", help="Gateway URL (default http://127.0.0.1:8787).",
                      show_default=False)


def _key_option(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """``--api-key -`` reads the key from stdin, ``--api-key @FILE`` from a file; a key typed on the
    command line works with a warning (others can read it); from TUNEGATE_API_KEY it is taken as it is."""
    # The source by name: typer may bring its own copy of click, whose ParameterSource is another enum.
    if value is None or getattr(ctx.get_parameter_source(param.name or ""), "name", None) != "COMMANDLINE":
        return value
    try:
        return read_secret(value, "the API key", "TUNEGATE_API_KEY or TUNEGATE_API_KEY_FILE")
    except SecretInputError as exc:
        raise typer.BadParameter(str(exc)) from None


KeyOpt = typer.Option(None, "--api-key", envvar="TUNEGATE_API_KEY", callback=_key_option, show_default=False,
                      help="tunegate key (or provider key): '-' reads it from stdin, '@FILE' from a file; or set "
                           "TUNEGATE_API_KEY / TUNEGATE_API_KEY_FILE.")
ProviderOpt = typer.Option(None, "--provider", "-p", envvar="TUNEGATE_PROVIDER", help="Provider, e.g. openai.")
ConnectionOpt = typer.Option(None, "--connection", envvar="TUNEGATE_CONNECTION",
                             help="Stored connection (x-portkey-virtual-key).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of tables.")


def _client(url: str | None, api_key: str | None, provider: str | None, connection: str | None) -> Client:
    try:
        return Client.from_env(url, api_key, provider, connection)
    except GatewayError as exc:  # an unreadable TUNEGATE_API_KEY_FILE
        _fail(str(exc))
        raise


def _fail(message: str, code: int = 1) -> None:
    err.print(Text("error: ", style="red") + Text(message))
    raise typer.Exit(code)


def _dump(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool) or ts <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _status(status: Any) -> Text:
    text = str(status or "?")
    return Text(text, style=STATUS_STYLE.get(text, ""))


def _kv(title: str, obj: dict[str, Any], fields: list[str]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name in fields:
        value = obj.get(name)
        if name == "status":
            table.add_row(name, _status(value))
        elif name.endswith("_at"):
            table.add_row(name, _when(value))
        elif value is not None and value != "":
            table.add_row(name, json.dumps(value) if isinstance(value, dict | list) else str(value))
    out.print(table)


# ---- files ---------------------------------------------------------------------------------------


@files_app.command("upload")
def files_upload(
    file: Path = typer.Argument(..., help="JSONL file to upload.", exists=False),
    purpose: str = typer.Option("fine-tune", help="File purpose."),
    method: str = typer.Option("supervised", help="Validate as: supervised | dpo | reinforcement."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip the local validation."),
    force: bool = typer.Option(False, "--force", help="Upload even if the local validation finds errors."),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, provider: str | None = ProviderOpt,
    connection: str | None = ConnectionOpt, as_json: bool = JsonOpt,
) -> None:
    """Validate a file locally, then stream it to the gateway with a progress bar."""
    if not file.is_file():
        _fail(f"no such file: {file}")
    report = None
    if not no_validate and purpose == "fine-tune":
        from tunegate.data.validator import validate_path

        try:
            report = validate_path(file, method=method)
        except (OSError, ValueError) as exc:
            _fail(f"cannot validate {file}: {exc}")
        assert report is not None
        if not as_json:
            err.print(Text(report.summary(), style="green" if report.ok else "red"))
        if not report.ok and not force:
            if as_json:
                _dump({"uploaded": False, "validation": report.to_dict()})
            _fail(f"{file} did not pass validation ({report.error_count} error(s)); fix it or pass --force")
    client = _client(url, api_key, provider, connection)
    size = file.stat().st_size
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=err, disable=as_json, transient=False) as progress:
            task = progress.add_task(f"uploading {file.name}", total=size)
            created = client.upload(file, purpose, lambda n: progress.advance(task, n))
    except GatewayError as exc:
        _fail(str(exc))
    if as_json:
        _dump({**created, "validation": report.to_dict() if report else None})
    else:
        out.print(created.get("id"))


@files_app.command("list")
def files_list(
    purpose: str | None = typer.Option(None, help="Only files with this purpose."),
    limit: int | None = typer.Option(None, help="At most this many."),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, provider: str | None = ProviderOpt,
    connection: str | None = ConnectionOpt, as_json: bool = JsonOpt,
) -> None:
    """List files on a provider (or the gateway's default file store)."""
    try:
        listing = _client(url, api_key, provider, connection).json("GET", "/v1/files",
                                                                   params={"purpose": purpose, "limit": limit})
    except GatewayError as exc:
        _fail(str(exc))
    files = listing.get("data", [])
    if as_json:
        _dump(files)
        return
    if not files:
        out.print("(no files)")
        return
    table = Table("id", "filename", "purpose", "bytes", "status", "created (UTC)")
    for f in files:
        table.add_row(f.get("id"), f.get("filename"), f.get("purpose"), str(f.get("bytes")), _status(f.get("status")),
                      _when(f.get("created_at")))
    out.print(table)


@files_app.command("get")
def files_get(
    file_id: str = typer.Argument(...),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, provider: str | None = ProviderOpt,
    connection: str | None = ConnectionOpt, as_json: bool = JsonOpt,
) -> None:
    """Show one file."""
    try:
        found = _client(url, api_key, provider, connection).json("GET", f"/v1/files/{_q(file_id)}")
    except GatewayError as exc:
        _fail(str(exc))
    if as_json:
        _dump(found)
    else:
        _kv(found.get("id", file_id), found, ["id", "filename", "purpose", "bytes", "status", "created_at",
                                                  "expires_at"])


@files_app.command("rm")
def files_rm(
    file_id: str = typer.Argument(...),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, provider: str | None = ProviderOpt,
    connection: str | None = ConnectionOpt, as_json: bool = JsonOpt,
) -> None:
    """Delete a file."""
    try:
        result = _client(url, api_key, provider, connection).json("DELETE", f"/v1/files/{_q(file_id)}")
    except GatewayError as exc:
        _fail(str(exc))
    if as_json:
        _dump(result)
    else:
        out.print(f"deleted {result.get('id', file_id)}")


@files_app.command("download")
def files_download(
    file_id: str = typer.Argument(...),
    output: Path | None = typer.Option(None, "--output", "-o", help="Where to write it (default: the id)."),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, provider: str | None = ProviderOpt,
    connection: str | None = ConnectionOpt, as_json: bool = JsonOpt,
) -> None:
    """Download a file's content, streamed to disk ('-o -' writes to stdout)."""
    target = output or Path(file_id)
    client = _client(url, api_key, provider, connection)
    written = 0
    partial = target.with_name(target.name + ".part") if str(target) != "-" else None
    try:
        with client.open("GET", f"/v1/files/{_q(file_id)}/content") as resp:
            total = resp.headers.get("Content-Length")
            sink = sys.stdout.buffer if partial is None else partial.open("wb")
            try:
                with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                              TransferSpeedColumn(), console=err, disable=as_json or partial is None) as progress:
                    task = progress.add_task(f"downloading {file_id}", total=int(total) if total else None)
                    while chunk := resp.read(256 * 1024):
                        sink.write(chunk)
                        written += len(chunk)
                        progress.advance(task, len(chunk))
            finally:
                if partial is not None:
                    sink.close()
    except GatewayError as exc:
        if partial is not None:
            partial.unlink(missing_ok=True)
        _fail(str(exc))
    except OSError as exc:
        if partial is not None:
            partial.unlink(missing_ok=True)
        _fail(f"download failed: {exc.strerror or type(exc).__name__}")
    if partial is not None:
        partial.replace(target)
        if as_json:
            _dump({"id": file_id, "path": str(target), "bytes": written})
        else:
            err.print(f"wrote {written} bytes to {target}")


# ---- jobs ----------------------------------------------------------------------------------------


JOB_FIELDS = ["id", "status", "model", "fine_tuned_model", "training_file", "validation_file", "hyperparameters",
              "method", "seed", "trained_tokens", "error", "created_at", "finished_at", "estimated_finish"]


@jobs_app.command("create")
def jobs_create(
    model: str = typer.Option(..., help="Base model."),
    training_file: str = typer.Option(..., "--training-file", help="File id."),
    validation_file: str | None = typer.Option(None, "--validation-file", help="File id."),
    suffix: str | None = typer.Option(None, help="Suffix for the fine-tuned model's name."),
    n_epochs: int | None = typer.Option(None, "--n-epochs", help="Epochs."),
    seed: int | None = typer.Option(None, help="Seed."),
    method: str | None = typer.Option(None, help="supervised | dpo | reinforcement."),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, provider: str | None = ProviderOpt,
    connection: str | None = ConnectionOpt, as_json: bool = JsonOpt,
) -> None:
    """Create a fine-tuning job."""
    body: dict[str, Any] = {"model": model, "training_file": training_file}
    for name, value in (("validation_file", validation_file), ("suffix", suffix), ("seed", seed)):
        if value is not None:
            body[name] = value
    hyper = {"n_epochs": n_epochs} if n_epochs is not None else {}
    if method:
        if method not in ("supervised", "dpo", "reinforcement"):
            _fail(f"unknown method {method!r}: use supervised, dpo or reinforcement")
        body["method"] = {"type": method, method: {"hyperparameters": hyper} if hyper else {}}
    elif hyper:
        body["hyperparameters"] = hyper
    try:
        job = _client(url, api_key, provider, connection).json("POST", "/v1/fine_tuning/jobs", payload=body)
    except GatewayError as exc:
        _fail(str(exc))
    if as_json:
        _dump(job)
    else:
        out.print(Text.assemble("created ", (str(job.get("id")), "bold"), " (", _status(job.get("status")), ")"))


@jobs_app.command("list")
def jobs_list(
    status: str | None = typer.Option(None, help="Only jobs with this status (registry listing)."),
    model: str | None = typer.Option(None, help="Only models containing this text (registry listing)."),
    limit: int = typer.Option(50, help="At most this many."),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, provider: str | None = ProviderOpt,
    connection: str | None = ConnectionOpt, as_json: bool = JsonOpt,
) -> None:
    """List jobs. Without --provider: every job the gateway has seen, across providers (from its
    registry); with --provider: that provider's own listing."""
    client = _client(url, api_key, provider, connection)
    try:
        if client.provider:
            jobs = client.json("GET", "/v1/fine_tuning/jobs", params={"limit": limit}).get("data", [])
            jobs = [{**j, "provider": j.get("provider") or client.provider} for j in jobs]
            jobs = [j for j in jobs if (not status or j.get("status") == status)
                    and (not model or model.lower() in str(j.get("model", "")).lower())]
        else:
            jobs = client.json("GET", "/ui/api/jobs", params={"status": status, "model": model},
                               provider=False).get("data", [])[:limit]
    except GatewayError as exc:
        _fail(str(exc))
    if as_json:
        _dump(jobs)
        return
    if not jobs:
        out.print("(no jobs)")
        return
    table = Table("id", "provider", "status", "model", "fine-tuned model", "created (UTC)")
    for j in jobs:
        table.add_row(j.get("id"), j.get("provider"), _status(j.get("status")), j.get("model"),
                      j.get("fine_tuned_model") or "-", _when(j.get("created_at")))
    out.print(table)


@jobs_app.command("get")
def jobs_get(
    job_id: str = typer.Argument(...),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, provider: str | None = ProviderOpt,
    connection: str | None = ConnectionOpt, as_json: bool = JsonOpt,
) -> None:
    """Show one job (its provider is found from the gateway's registry when not given)."""
    try:
        job = _client(url, api_key, provider, connection).json("GET", f"/v1/fine_tuning/jobs/{_q(job_id)}")
    except GatewayError as exc:
        _fail(str(exc))
    if as_json:
        _dump(job)
    else:
        _kv(job.get("id", job_id), job, JOB_FIELDS)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: str = typer.Argument(...),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, provider: str | None = ProviderOpt,
    connection: str | None = ConnectionOpt, as_json: bool = JsonOpt,
) -> None:
    """Cancel a job."""
    try:
        job = _client(url, api_key, provider, connection).json("POST", f"/v1/fine_tuning/jobs/{_q(job_id)}/cancel")
    except GatewayError as exc:
        _fail(str(exc))
    if as_json:
        _dump(job)
    else:
        out.print(Text.assemble(f"{job.get('id', job_id)}: ", _status(job.get("status"))))


@jobs_app.command("watch")
def jobs_watch(
    job_id: str = typer.Argument(...),
    interval: float = typer.Option(5.0, help="Seconds between polls."),
    timeout: float | None = typer.Option(None, help="Give up after this many seconds (exit 3)."),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, provider: str | None = ProviderOpt,
    connection: str | None = ConnectionOpt, as_json: bool = JsonOpt,
) -> None:
    """Follow a job until it ends: status, new events, a loss sparkline. Exit status: 0 succeeded,
    1 failed, 2 cancelled (3 on --timeout)."""
    from tunegate.client.watch import Watcher

    watcher = Watcher(_client(url, api_key, provider, connection), job_id, out, as_json=as_json)
    try:
        code = watcher.run(interval, timeout)
    except GatewayError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        err.print("stopped watching (the job goes on)")
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def _q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe=":")


__all__ = ["files_app", "jobs_app", "loss_points", "sparkline"]
