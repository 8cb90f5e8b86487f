"""``tunegate webhooks add|list|rm|test|log``: a key's webhook endpoints, through a running gateway.

Endpoints belong to the tunegate key the command uses (``--api-key`` / ``TUNEGATE_API_KEY``); the
signing secret is printed once, by ``add``.
"""

# typer declares options as call defaults:
# ruff: noqa: B008

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from tunegate.client import JsonOpt, KeyOpt, UrlOpt, _client, _dump, _fail, _when, out
from tunegate.client.http import GatewayError
from tunegate.webhooks.outbox import DEFAULT_EVENT_TYPES, EVENT_TYPES

webhooks_app = typer.Typer(help="Webhook endpoints of your tunegate key (signed, OpenAI's shape).",
                           no_args_is_help=True)


def _call(method: str, path: str, url: str | None, api_key: str | None, payload: Any = None) -> Any:
    try:
        return _client(url, api_key, None, None).json(method, path, payload=payload, provider=False)
    except GatewayError as exc:
        _fail(str(exc))


@webhooks_app.command("add")
def webhooks_add(
    target: str = typer.Argument(..., help="The receiver's URL (https recommended)."),
    event_type: list[str] = typer.Option(DEFAULT_EVENT_TYPES, "--event-type", "-e",
                                         help=f"Event types ({', '.join(EVENT_TYPES)})."),
    name: str | None = typer.Option(None, help="A label (default: the URL's host)."),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, as_json: bool = JsonOpt,
) -> None:
    """Register an endpoint; its signing secret is shown this once."""
    body: dict[str, Any] = {"url": target, "event_types": event_type}
    if name:
        body["name"] = name
    created = _call("POST", "/v1/webhooks", url, api_key, body)
    if as_json:
        _dump(created)
        return
    out.print(Text.assemble("created ", (created["id"], "bold"), f" for {', '.join(created['event_types'])}; "
                            "signing secret (store it now, it is not shown again):"))
    print(created["signing_secret"])


@webhooks_app.command("list")
def webhooks_list(url: str | None = UrlOpt, api_key: str | None = KeyOpt, as_json: bool = JsonOpt) -> None:
    """List your endpoints (never their secrets)."""
    found = _call("GET", "/v1/webhooks", url, api_key)["data"]
    if as_json:
        _dump(found)
        return
    table = Table("id", "name", "url", "event types", "secret", "created (UTC)")
    for e in found:
        table.add_row(e["id"], e["name"], e["url"], ", ".join(e["event_types"]), e.get("signing_secret_hint") or "",
                      _when(e.get("created_at")))
    out.print(table if found else "(no webhook endpoints)")


@webhooks_app.command("rm")
def webhooks_rm(endpoint_id: str = typer.Argument(...), url: str | None = UrlOpt, api_key: str | None = KeyOpt) -> None:
    """Delete an endpoint (its pending deliveries are dropped)."""
    _call("DELETE", f"/v1/webhooks/{endpoint_id}", url, api_key)
    out.print(f"removed {endpoint_id}")


@webhooks_app.command("test")
def webhooks_test(
    endpoint_id: str = typer.Argument(...),
    event_type: str = typer.Option("fine_tuning.job.succeeded", "--event-type", "-e"),
    url: str | None = UrlOpt, api_key: str | None = KeyOpt, as_json: bool = JsonOpt,
) -> None:
    """Send one signed sample event now; exit 1 unless the receiver answered 2xx."""
    result = _call("POST", f"/v1/webhooks/{endpoint_id}/test", url, api_key, {"event_type": event_type})
    if as_json:
        _dump(result)
    status = result.get("status_code")
    ok = isinstance(status, int) and 200 <= status < 300
    if not as_json:
        out.print(f"{event_type} -> {status if status is not None else 'no answer'}")
    if not ok:
        raise typer.Exit(1)


@webhooks_app.command("log")
def webhooks_log(endpoint_id: str = typer.Argument(...), url: str | None = UrlOpt, api_key: str | None = KeyOpt,
                 as_json: bool = JsonOpt) -> None:
    """The endpoint's delivery log, newest first: state, attempts, last status, latency."""
    rows = _call("GET", f"/v1/webhooks/{endpoint_id}/deliveries", url, api_key)["data"]
    if as_json:
        _dump(rows)
        return
    table = Table("webhook-id", "event", "job", "state", "attempts", "last status", "latency ms", "changed (UTC)")
    for r in rows:
        table.add_row(r["id"], r["type"], r["job_id"], r["state"], str(r["attempts"]),
                      str(r["last_status"] or r["last_error"] or "-"),
                      f"{r['latency_ms']:.1f}" if r["latency_ms"] is not None else "-", _when(r["created_at"]))
    out.print(table if rows else "(no deliveries)")
