"""``tunegate migrate inventory | export | record | replay`` and ``tunegate eval``: the commands, over a
running gateway.

Options follow ``tunegate files``/``jobs`` (``--url``, ``--api-key``, ``--connection``, ``--json``); the
provider is ``--from`` (inventory, export) or ``--to`` (replay). Progress bars go to stderr, ``--json``
output to stdout, errors are one line on stderr with a non-zero exit status. ``tunegate migrate`` with no
subcommand still upgrades the database schema (``tunegate/cli.py``).
"""

# typer declares options as call defaults:
# ruff: noqa: B008

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from tunegate.client import ConnectionOpt, JsonOpt, KeyOpt, UrlOpt, _client
from tunegate.client.http import Client, GatewayError

from .bases import BaseMapError, parse_overrides
from .bundle import BundleError, load_manifest

migrate_app = typer.Typer(help="Move fine-tuning off a provider: inventory, export, record, replay (and, with "
                               "no subcommand, upgrade the database schema).")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

FromOpt = typer.Option("openai", "--from", help="The provider to read (Portkey's name).")


def _fail(message: str, code: int = 1) -> None:
    err.print(Text("error: ", style="red") + Text(message))
    raise typer.Exit(code)


def _dump(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _source(url: str | None, api_key: str | None, provider: str, connection: str | None) -> Client:
    return _client(url, api_key, provider, connection)


@contextmanager
def _bars(disabled: bool) -> Iterator[Callable[[str, int, int | None], None]]:
    """A stage callback (name, advance, total) drawing one bar per stage on stderr."""
    tasks: dict[str, TaskID] = {}
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), console=err,
                  disable=disabled) as progress:
        def update(stage: str, advance: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], advance=advance, total=total)

        yield update


# ---- inventory ---------------------------------------------------------------------------------------


@migrate_app.command("inventory")
def inventory_command(
    source: str = FromOpt,
    within_days: int = typer.Option(90, "--within-days", help="Flag retirements this close (days)."),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, connection: str | None = ConnectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Every job, tuned model, base model (with its announced shutdown date) and referenced file."""
    from .inventory import build

    client = _source(url, api_key, source, connection)
    try:
        with _bars(as_json) as bars:
            inv = build(client, source, within_days, progress=bars)
    except GatewayError as exc:
        _fail(str(exc))
    if as_json:
        _dump(inv)
    else:
        _print_inventory(inv)


def _when(days: Any, flagged: bool) -> Text:
    return Text(f"{days} days", style="bold red" if flagged else "")


def _print_inventory(inv: dict[str, Any]) -> None:
    totals = inv["totals"]
    out.print(f"{inv['source']}: {totals['jobs']} job(s) {totals['jobs_by_status']}, {totals['files']} file(s), "
              f"{totals['bytes']} bytes, {totals['missing_files']} missing")
    jobs = Table("job", "status", "model", "method", "fine-tuned model", "files", title="jobs", title_justify="left")
    for j in inv["jobs"]:
        n = len([f for f in (j["training_file"], j["validation_file"]) if f]) + len(j["result_files"])
        jobs.add_row(j["id"], j["status"], j["model"], j["method"], j["fine_tuned_model"] or "-", str(n))
    out.print(jobs)
    bases = Table("base model", "jobs", "shutdown", "left", "source", title="base models", title_justify="left")
    for b in inv["base_models"]:
        r = b["retirement"]
        if r is None:
            bases.add_row(b["model"], str(b["jobs"]), "none announced (not in retirements.toml)", "-", "-")
        else:
            bases.add_row(b["model"], str(b["jobs"]), r["shutdown"], _when(r["days_left"], r["flagged"]),
                          r["source"] + ("" if r["verified"] else " (unverified)"))
    out.print(bases)
    files = Table("file", "filename", "purpose", "bytes", "status", "used by", title="files", title_justify="left")
    for f in inv["files"]:
        used = ", ".join(f"{u['job']} ({u['role']})" for u in f["used_by"])
        files.add_row(f["id"], str(f["filename"] or "-"), str(f["purpose"] or "-"), str(f["bytes"] or "-"),
                      Text(str(f["status"]), style="red" if f["status"] == "missing" else ""), used)
    out.print(files)
    platform = inv.get("platform")
    if platform:
        out.print(Text(f"{inv['source']} takes no new fine-tuning jobs after {platform['no_new_jobs_after']} "
                       f"({platform['days_left']} days)", style="bold red" if platform["flagged"] else ""))


# ---- export ------------------------------------------------------------------------------------------


@migrate_app.command("export")
def export_command(
    directory: Path = typer.Argument(..., help="The bundle directory (created, or completed if it exists)."),
    source: str = FromOpt,
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, connection: str | None = ConnectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Stream every referenced file to DIR with its sha256, and each job's full object, into a bundle.
    Re-running fetches only what is missing or damaged."""
    from .export import export

    client = _source(url, api_key, source, connection)
    try:
        with _bars(as_json) as bars, Progress(TextColumn("[bold]bytes"), BarColumn(), DownloadColumn(),
                                             console=err, disable=as_json) as data:
            task = data.add_task("bytes", total=None)
            manifest, fetched = export(client, source, directory, progress=bars,
                                       chunk_progress=lambda n: data.advance(task, n))
    except (GatewayError, BundleError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the bundle: {exc.strerror or exc}")
    summary = {"bundle": str(directory), "bundle_id": manifest["bundle_id"], "complete": manifest["complete"],
               "jobs": len(manifest["jobs"]), "files": len(manifest["files"]), **fetched,
               "errors": manifest["errors"]}
    if as_json:
        _dump(summary)
    else:
        out.print(f"{directory}: {summary['jobs']} job(s), {summary['files']} file(s): "
                  f"{len(fetched['downloaded'])} downloaded, {len(fetched['kept'])} already there, "
                  f"{len(fetched['failed'])} failed")
        for e in manifest["errors"]:
            err.print(Text(f"  {e['file']}: {e['error']}", style="red"))
    if not manifest["complete"]:
        raise typer.Exit(1)


# ---- replay ------------------------------------------------------------------------------------------


@migrate_app.command("replay")
def replay_command(
    bundle: Path = typer.Argument(..., help="A bundle written by 'tunegate migrate export'."),
    to: str = typer.Option(..., "--to", help="The backend to re-create the jobs on, e.g. together-ai, local."),
    base: list[str] = typer.Option([], "--base", help="SOURCE=TARGET base-model mapping (repeatable; "
                                                      "'*=MODEL' for every job)."),
    job: list[str] = typer.Option([], "--job", help="Only these source jobs (repeatable)."),
    all_statuses: bool = typer.Option(False, "--all-statuses", help="Also jobs that did not succeed."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would happen, per job."),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, connection: str | None = ConnectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Re-create the bundle's jobs on another backend: upload (converted by the gateway), create with the
    hyperparameters and base model mapped. Idempotent; --dry-run prints tokens, cost, time and losses."""
    from tunegate.providers import canonical_name

    from .hyperparameters import TARGETS
    from .replay import Replayer, plan

    target = canonical_name(to)
    if target not in TARGETS:
        _fail(f"unknown backend {to!r}; known: {', '.join(sorted(TARGETS))}")
    try:
        manifest = load_manifest(bundle)
        overrides = parse_overrides(base)
    except (BundleError, BaseMapError) as exc:
        _fail(str(exc))
    plans = plan(bundle, manifest, target, overrides, only=set(job) or None, all_statuses=all_statuses)
    if dry_run:
        report = {"bundle": str(bundle), "target": target, "jobs": [p.to_dict() for p in plans]}
        _dump(report) if as_json else _print_plans(target, plans)
        return
    client = _source(url, api_key, target, connection)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), console=err,
                  disable=as_json) as progress:
        def bar(name: str, size: int) -> Callable[[int], None]:
            task = progress.add_task(f"uploading {name}", total=size)
            return lambda n: progress.advance(task, n)

        try:
            outcomes = Replayer(client, bundle, manifest, bar).run(plans)
        except BundleError as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(f"cannot read or write the bundle: {exc.strerror or exc}")
    if as_json:
        _dump({"bundle": str(bundle), "target": target, "jobs": [o.to_dict() for o in outcomes]})
    else:
        for o in outcomes:
            created = f" → {o.job.get('id')} ({o.job.get('status')})" if o.job else ""
            style = {"created": "green", "already": "", "failed": "red", "blocked": "red"}.get(o.result, "dim")
            out.print(Text(f"{o.source_job}: {o.result}{created}", style=style)
                      + Text(f"  {o.message}" if o.message else "", style="dim"))
    if any(o.result in ("failed", "blocked") for o in outcomes):
        raise typer.Exit(1)


def _print_plans(target: str, plans: list[Any]) -> None:
    for p in plans:
        e = p.estimate
        head = f"{p.job.get('id')} ({p.job.get('status')}, {p.job.get('model')}) → {target} {p.mapped.model or '?'}"
        if p.skipped:
            out.print(Text(f"{head}: skipped, {p.skipped}", style="dim"))
            continue
        out.print(Text(head, style="bold" if p.replayable else "bold red"))
        cost = (f"${e['cost']:.2f}" if e["cost"] >= 0.01 or e["cost"] == 0 else f"${e['cost']:.4f}") \
            if e.get("cost") is not None else f"unknown ({e.get('cost_unknown')})"
        out.print(f"  tokens: {e['training_tokens']} training, {e['validation_tokens']} validation (estimated); "
                  f"{e.get('epochs', '?')} epoch(s) → {e.get('billed_tokens', '?')} billed; cost {cost}; time "
                  f"{e.get('time_minutes', '?')} min")
        for line in ([e["epochs_assumed"]] if e.get("epochs_assumed") else []) + p.mapped.notes:
            out.print(f"  note: {line}")
        for line in p.mapped.blockers:
            out.print(Text(f"  cannot carry over: {line}", style="red"))


# ---- record ------------------------------------------------------------------------------------------


def _rate(value: str | None) -> float | None:
    """``--rate 5`` or ``--rate 5/s`` (also /m): requests per second, None for no limit."""
    if not value:
        return None
    number, _, unit = value.strip().partition("/")
    try:
        rate = float(number)
    except ValueError:
        _fail(f"--rate {value!r}: write it as N/s or N/m, e.g. 5/s")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0}.get(unit.strip().lower())
    if per is None or rate <= 0:
        _fail(f"--rate {value!r}: write it as N/s or N/m, e.g. 5/s")
    assert per is not None
    return rate / per


RateOpt = typer.Option(None, "--rate", help="At most N requests a second (N/s) or minute (N/m).")
ConcurrencyOpt = typer.Option(4, "--concurrency", min=1, max=64, help="Requests in flight at once.")
TemperatureOpt = typer.Option(0.0, "--temperature", min=0.0, max=2.0, help="Sampling temperature.")
MaxTokensOpt = typer.Option(None, "--max-tokens", min=1, help="max_tokens for each answer.")
SeedOpt = typer.Option(None, "--seed", help="seed for each answer (where the backend takes one).")


@migrate_app.command("record")
def record_command(
    model: str = typer.Option(..., "--model", help="The tuned model to record, e.g. ft:gpt-4o-mini:org:x:abc."),
    prompts: Path | None = typer.Option(None, "--prompts", help="JSONL of chat examples or prompts "
                                                                "(default: the model's own held-out turns)."),
    bundle: Path | None = typer.Option(None, "--bundle", help="A bundle from 'tunegate migrate export': the "
                                                              "prompts come from the job that made the model."),
    out_path: Path | None = typer.Option(None, "--out", help="Output JSONL (default BUNDLE/recorded/<model>.jsonl)."),
    rate: str | None = RateOpt, concurrency: int = ConcurrencyOpt,
    temperature: float = TemperatureOpt, top_p: float | None = typer.Option(None, "--top-p", min=0.0, max=1.0),
    max_tokens: int | None = MaxTokensOpt, seed: int | None = SeedOpt,
    retries: int = typer.Option(3, "--retries", min=0, max=10, help="Retries of a 429/5xx per prompt."),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, connection: str | None = ConnectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Record the tuned model's answers on the team's prompts as chat fine-tuning JSONL, with each request's
    parameters, usage, finish_reason and latency in a .meta.jsonl beside it. Resumable: re-run to finish."""
    from tunegate.data.validator import validate_path

    from . import record as rec

    try:
        if prompts is None:
            if bundle is None:
                _fail("say where the prompts are: --bundle DIR (the model's own validation or training file) "
                      "or --prompts FILE")
            assert bundle is not None
            source, role, job_id = rec.bundle_prompts(bundle, model)
        else:
            source, role, job_id = prompts, "prompts", None
        items, skipped = rec.read_prompts(source)
        target = out_path or rec.default_output(bundle, model)
        params = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed}
        recorder = rec.Recorder(target, model, params)
        trimmed = recorder.resume()
    except rec.RecordError as exc:
        _fail(str(exc))
    if not items:
        _fail(f"{source} holds no prompt" + (f" ({skipped[0]})" if skipped else ""))
    caller = rec.ChatCaller(_client(url, api_key, None, connection), rec.RateLimiter(_rate(rate)), retries)
    progress = rec.Progress(total=len(items), skipped=skipped, trimmed=trimmed)
    with Progress(TextColumn("[bold]recording"), BarColumn(), MofNCompleteColumn(), console=err,
                  disable=as_json) as bar:
        task = bar.add_task("recording", total=len(items))
        try:
            recorder.run(items, caller, concurrency, progress,
                         on_answer=lambda p: bar.update(task, completed=p.done + p.recorded + p.duplicates))
        except OSError as exc:
            _fail(f"cannot write {target}: {exc.strerror or exc}")
    report = validate_path(target) if target.exists() else None
    summary = {"model": model, "prompts_from": str(source), "role": role, "job": job_id, "out": str(target),
               "meta": str(rec.meta_path(target)), "prompts": len(items), "already_recorded": progress.done,
               "recorded": progress.recorded, "duplicates": progress.duplicates, "failed": progress.failed,
               "skipped": skipped, "trimmed_lines": trimmed,
               "valid": report.ok if report else None,
               "complete": not progress.failed}
    if as_json:
        _dump(summary)
    else:
        line = (f"{target}: {progress.done + progress.recorded} of {len(items) - progress.duplicates} prompt(s) "
                f"recorded ({progress.recorded} now, {progress.done} before"
                + (f", {progress.duplicates} duplicate(s) asked once" if progress.duplicates else "") + ")")
        out.print(Text(line, style="green" if not progress.failed else ""))
        for f in progress.failed[:10]:
            err.print(Text(f"  line {f['line']}: {f['error']}", style="red"))
        for s in skipped[:5]:
            err.print(Text(f"  skipped {s}", style="dim"))
        if report is not None and not report.ok:
            err.print(Text(report.summary(), style="red"))
    if progress.failed:
        raise typer.Exit(1)


# ---- eval (registered as the top-level 'tunegate eval' in tunegate/cli.py) ---------------------------


def _model_connections(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        model, sep, conn = pair.rpartition("=")
        if not sep or not model or not conn:
            _fail(f"--model-connection {pair!r}: write it as MODEL=CONNECTION")
        out[model] = conn
    return out


def eval_command(
    model: list[str] = typer.Option([], "--model", help="A model to run on the prompts (repeatable: A, B, ...)."),
    answers: Path | None = typer.Option(None, "--answers", help="A 'migrate record' output: its answers are "
                                                                "model A, matched to each prompt."),
    data: Path = typer.Option(..., "--data", help="JSONL of chat examples (the last assistant turn is "
                                                  "item.reference) or eval rows {\"item\": {...}}."),
    graders_file: Path | None = typer.Option(None, "--graders", help="OpenAI grader JSON: one grader, a list, "
                                                                     "{\"graders\": [...]} or testing_criteria."),
    judge: str | None = typer.Option(None, "--judge", help="The model that judges score_model/label_model "
                                                           "graders (replaces the model they name)."),
    judge_connection: str | None = typer.Option(None, "--judge-connection", help="Connection for the judge."),
    model_connection: list[str] = typer.Option([], "--model-connection", help="MODEL=CONNECTION (repeatable)."),
    html_path: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N items."),
    store: bool = typer.Option(True, "--store/--no-store", help="Keep the result in <data dir>/evals/ for the "
                                                                "dashboard."),
    rate: str | None = RateOpt, concurrency: int = ConcurrencyOpt,
    temperature: float = TemperatureOpt, max_tokens: int | None = MaxTokensOpt, seed: int | None = SeedOpt,
    config: Path | None = typer.Option(None, "--config", "-c", envvar="TUNEGATE_CONFIG",
                                       help="TOML config (for the data dir)."),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, connection: str | None = ConnectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Compare models on the same prompts with OpenAI-shaped graders (string_check, text_similarity,
    score_model, label_model, multi): a table, --json, --html, and the run kept for the dashboard."""
    from . import eval as ev
    from . import graders as gr
    from . import record as rec
    from .report import html, table

    if not model and answers is None:
        _fail("name what to compare: --answers FILE and/or --model MODEL (repeatable)")
    try:
        if graders_file is not None:
            try:
                spec = json.loads(graders_file.read_text("utf-8"))
            except (OSError, ValueError) as exc:
                _fail(f"cannot read {graders_file}: {getattr(exc, 'strerror', None) or exc}")
            graders = gr.load_file_data(spec, judge)
        else:
            graders = gr.defaults(judge)
        items, skipped = ev.read_items(data, limit)
        labels = iter("ABCDEFGHIJ")
        contenders = [ev.recorded(answers, next(labels), None)] if answers is not None else []
        via = _model_connections(model_connection)
        contenders += [ev.Contender(next(labels), m, via.get(m, connection)) for m in model]
    except (gr.GraderError, ev.EvalError) as exc:
        _fail(str(exc))
    except StopIteration:
        _fail("at most 10 models at once")
    params = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed}
    caller = rec.ChatCaller(_client(url, api_key, None, connection), rec.RateLimiter(_rate(rate)))
    run = ev.Evaluation(caller, graders, params, judge_connection or connection, concurrency)
    with Progress(TextColumn("[bold]evaluating"), BarColumn(), MofNCompleteColumn(), console=err,
                  disable=as_json) as bar:
        task = bar.add_task("evaluating", total=len(items) * len(contenders))
        samples = run.run(contenders, items, tick=lambda: bar.advance(task))
    doc = ev.document(ev.new_id(), data, items, skipped, contenders, graders, samples, params, judge)
    try:
        if store:
            from tunegate.config import Settings

            doc["stored"] = str(ev.store(Settings.load(config).data_dir, doc))
        if html_path is not None:
            html_path.write_text(html(doc), "utf-8")
            doc["html"] = str(html_path)
    except OSError as exc:
        _fail(f"cannot write the result: {exc.strerror or exc}")
    if as_json:
        _dump(doc)
        return
    out.print(table(doc))
    for where in ("stored", "html"):
        if doc.get(where):
            out.print(f"{where}: {doc[where]}")
