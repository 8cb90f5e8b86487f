"""The command line: ``tunegate serve``, ``keys``, ``connections``, ``migrate``, ``validate``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from tunegate.client import files_app, jobs_app
from tunegate.config import Settings
from tunegate.migration.cli import eval_command, migrate_app
from tunegate.private import secure_data_dir
from tunegate.secret_input import SecretInputError, read_secret, secret_pairs
from tunegate.store import Store
from tunegate.store.secretbox import SecretBox
from tunegate.webhooks.cli import webhooks_app

app = typer.Typer(help="tunegate: one OpenAI-compatible fine-tuning API over every provider.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="Manage tunegate keys.", no_args_is_help=True)
connections_app = typer.Typer(help="Manage stored provider connections.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(connections_app, name="connections")
app.add_typer(files_app, name="files")
app.add_typer(jobs_app, name="jobs")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(migrate_app, name="migrate")
app.command("eval")(eval_command)  # tunegate eval: compare models with OpenAI-shaped graders
db_app = typer.Typer(help="The gateway's database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console()
err = Console(stderr=True)
T = TypeVar("T")

ConfigOption = typer.Option(None, "--config", "-c", help="TOML config file.", envvar="TUNEGATE_CONFIG")


def _settings(config: Path | None) -> Settings:
    return Settings.load(config)


def _with_store(config: Path | None, work: Callable[[Store], Awaitable[T]]) -> T:
    settings = _settings(config)
    secure_data_dir(settings.data_dir, settings.resolved_database_url)  # the database file is made 0600

    async def run() -> T:
        store = await Store.open(settings.resolved_database_url,
                                 SecretBox.from_settings(settings.secret_key, settings.data_dir))
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Interface to bind (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8787)."),
    workers: int = typer.Option(1, help="Worker processes."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Run the gateway."""
    import os

    settings = _settings(config)
    if config:
        os.environ["TUNEGATE_CONFIG"] = str(config)  # worker processes load the same file
    # Migrate in a short-lived process, so the server never loads Alembic (and workers never race).
    subprocess.run([sys.executable, "-m", "tunegate", "migrate", *(["--config", str(config)] if config else [])],
                   check=True, stdout=subprocess.DEVNULL)
    sys.stdout.flush()
    sys.stderr.flush()
    # Become the server (same pid, so signals and supervisors see one process), without this CLI's modules.
    os.execv(sys.executable, [sys.executable, "-m", "tunegate.server", "--host", host or settings.host,
                              "--port", str(port or settings.port), "--workers", str(workers)])


def _upgrade_schema(config: Path | None) -> None:
    settings = _settings(config)
    _with_store(config, lambda store: asyncio.sleep(0))
    console.print(f"database ready: {settings.resolved_database_url.split('@')[-1]}")


@migrate_app.callback(invoke_without_command=True)
def migrate(ctx: typer.Context, config: Optional[Path] = ConfigOption) -> None:
    """Without a subcommand: create or upgrade the database schema (as 'tunegate db upgrade'; 'serve'
    runs it). With one: move fine-tuning off a provider (inventory, export, replay)."""
    if ctx.invoked_subcommand is None:
        _upgrade_schema(config)


@db_app.command("upgrade")
def db_upgrade(config: Optional[Path] = ConfigOption) -> None:
    """Create or upgrade the database schema."""
    _upgrade_schema(config)


@app.command()
def validate(
    file: Path = typer.Argument(..., help="JSONL training file."),
    method: str = typer.Option("supervised", help="supervised | dpo | reinforcement"),
    model: Optional[str] = typer.Option(None, help="Base model, for context-length checks."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check a fine-tuning file before uploading it."""
    from tunegate.data.cli import validate_command

    raise typer.Exit(validate_command(str(file), method=method, model=model, as_json=as_json))


# ---- keys ------------------------------------------------------------------------------------


@app.command()
def demo(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Work here (default: a new temp dir)."),
    model: Optional[str] = typer.Option(None, "--model", help="A Hugging Face model id (e.g. "
                                        "HuggingFaceTB/SmolLM2-135M-Instruct) or a local model directory "
                                        "(default: a tiny built-in model, offline)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="What to ask the base and the tuned model."),
) -> None:
    """Fine-tune a model on this machine through the gateway's own API (local provider), then chat with it."""
    from tunegate.localjobs.demo import run_demo

    raise typer.Exit(run_demo(data_dir, model=model, prompt=prompt))


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., help="A label for the key."),
    connection: list[str] = typer.Option(["*"], "--connection", help="Connections it may use ('*' = all)."),
    allow_provider_keys: bool = typer.Option(False, help="Let requests bring their own provider key."),
    rate_limit: Optional[int] = typer.Option(None, help="Requests per minute."),
    config: Optional[Path] = ConfigOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a key. The key is shown once; only its hash is stored."""
    key, full = _with_store(config, lambda s: s.create_key(name, connection, allow_provider_keys, rate_limit))
    if as_json:
        print(json.dumps({"id": key.id, "name": key.name, "key": full, "connections": key.connections}))
    else:
        console.print(f"created key [bold]{key.id}[/bold] ({name}); store it now, it is not shown again:")
        print(full)


@keys_app.command("list")
def keys_list(config: Optional[Path] = ConfigOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """List keys (never their secrets)."""
    keys = _with_store(config, lambda s: s.list_keys())
    rows = [dict(id=k.id, name=k.name, connections=k.connections, allow_provider_keys=k.allow_provider_keys,
                 created_at=k.created_at, revoked=k.revoked_at is not None) for k in keys]
    _print_rows(rows, as_json)


@keys_app.command("revoke")
def keys_revoke(key_id: str, config: Optional[Path] = ConfigOption) -> None:
    """Revoke a key by id."""
    if not _with_store(config, lambda s: s.revoke_key(key_id)):
        fail(f"no active key with id {key_id}")
    console.print(f"revoked {key_id}")


# ---- connections -----------------------------------------------------------------------------


@connections_app.command("add")
def connections_add(
    name: str = typer.Argument(..., help="Connection name (used as x-portkey-virtual-key)."),
    provider: str = typer.Option(..., help="Provider name (Portkey's), e.g. openai, azure-openai, together-ai."),
    api_key: Optional[str] = typer.Option(
        None, envvar="TUNEGATE_PROVIDER_API_KEY", callback=lambda ctx, param, value: _secret_option(
            ctx, param, value, "the provider key", "TUNEGATE_PROVIDER_API_KEY"),
        help="The provider key: '-' reads it from stdin, '@FILE' from a file, or set TUNEGATE_PROVIDER_API_KEY "
             "(a value on the command line is deprecated: others can read it)."),
    secret: list[str] = typer.Option([], help="Other secrets (encrypted at rest): NAME reads "
                                              "TUNEGATE_SECRET_<NAME>, NAME=- a line of stdin, NAME=@FILE a file "
                                              "(NAME=VALUE is deprecated)."),
    option: list[str] = typer.Option([], help="Provider options as NAME=VALUE, e.g. azure_resource_name=x."),
    base_url: Optional[str] = typer.Option(None, help="Override the provider's base URL."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Store a provider connection; its secrets are encrypted with TUNEGATE_SECRET_KEY."""
    from tunegate.providers import known_names, provider_named

    adapter = provider_named(provider)
    if adapter is None:
        fail(f"unknown provider {provider!r}; known: {known_names()}")
        return
    provider = adapter.name  # stored under the canonical name, whichever alias was typed
    try:
        secrets = secret_pairs(secret)
    except SecretInputError as exc:
        fail(str(exc))
        return
    if api_key:
        secrets[adapter.credential_field] = api_key
    options: dict[str, Any] = _pairs(option)

    async def add(store: Store) -> bool:
        if await store.get_connection(name) is not None:
            return False
        await store.add_connection(name, provider, secrets, base_url=base_url, options=options)
        return await store.keys_exist()

    protected = _with_store(config, add)
    console.print(f"stored connection [bold]{name}[/bold] ({provider})")
    if protected is False:
        err.print("[yellow]note:[/yellow] no tunegate key exists yet, so the gateway is open: create one with "
                  "'tunegate keys create' before exposing it.")


@connections_app.command("list")
def connections_list(config: Optional[Path] = ConfigOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """List connections (secret names only, never values)."""
    _print_rows(_with_store(config, lambda s: s.list_connections()), as_json)


@connections_app.command("remove")
def connections_remove(name: str, config: Optional[Path] = ConfigOption) -> None:
    """Delete a stored connection."""
    if not _with_store(config, lambda s: s.remove_connection(name)):
        fail(f"no connection named {name}")
    console.print(f"removed {name}")


def _secret_option(ctx: typer.Context, param: typer.CallbackParam, value: str | None, what: str,
                   env: str) -> str | None:
    """A secret option's value: from the environment as it is; from the command line '-' (stdin),
    '@FILE', or a literal with a warning."""
    if value is None or not _from_command_line(ctx, param):
        return value
    try:
        return read_secret(value, what, env)
    except SecretInputError as exc:
        raise typer.BadParameter(str(exc)) from None


def _from_command_line(ctx: typer.Context, param: typer.CallbackParam) -> bool:
    # By name: typer may bring its own copy of click, whose ParameterSource is another enum class.
    return getattr(ctx.get_parameter_source(param.name or ""), "name", None) == "COMMANDLINE"


def _pairs(items: list[str]) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"expected NAME=VALUE, got {item!r}")
        # Structured values (e.g. timeouts={"connect": 5}) are given as JSON.
        pairs[name.strip()] = json.loads(value) if value[:1] in "{[" and value else value
    return pairs


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        console.print("(none)")
        return
    table = Table(*rows[0].keys())
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


def main() -> None:
    app()
