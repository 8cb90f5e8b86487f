"""``tunegate jobs watch``: follow a job through the gateway until it ends.

It reads the job watcher's snapshot (``GET /v1/tunegate/jobs/{id}/snapshot``), which costs the provider
no call: however many people watch a job, the provider sees only the watcher's polls. Events are read
when the snapshot's status or ``trained_tokens`` has changed since the last read (once per change), or on
every poll when the gateway answers live (a job it does not watch; an older gateway without the route).

On a terminal it redraws one panel (status, elapsed time, the latest events, a loss sparkline);
otherwise (a pipe, a CI log) it prints one line per change, and with ``--json`` one JSON object per
change. The exit status is the job's outcome: 0 succeeded, 1 failed, 2 cancelled, 3 timed out.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any
from urllib.parse import quote

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tunegate.client.http import Client, GatewayError
from tunegate.ui.loss import loss_points, sparkline

TERMINAL = {"succeeded": 0, "failed": 1, "cancelled": 2}
STYLE = {"succeeded": "green", "failed": "red", "cancelled": "bright_black", "running": "blue",
         "queued": "yellow", "validating_files": "yellow"}
MAX_EVENT_PAGES = 20


class Watcher:
    def __init__(self, client: Client, job_id: str, console: Console, *, as_json: bool = False) -> None:
        self.client = client
        self.job_id = job_id
        self.console = console
        self.as_json = as_json
        self.events: dict[str, dict[str, Any]] = {}
        self.job: dict[str, Any] = {}
        self.started = time.monotonic()
        self.source = "live"  # where the last read came from: "snapshot" or "live"
        self.snapshot_age: int | None = None  # seconds, for a snapshot
        self.reads = {"snapshot": 0, "live": 0, "events": 0}  # requests made, by kind
        self._snapshots = True  # False once the gateway turns out not to have the snapshot route
        self._progress: tuple[Any, Any] | None = None  # (status, trained_tokens) when events were last read

    # ---- polling -------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return f"/v1/fine_tuning/jobs/{quote(self.job_id, safe=':')}"

    def poll(self) -> list[dict[str, Any]]:
        """Refresh the job and, when it may have news, fetch events not seen before; returns the new
        events, oldest first."""
        self.job = self._read_job()
        progress = (self.job.get("status"), self.job.get("trained_tokens"))
        if self.source == "snapshot" and progress == self._progress:
            return []  # the watcher has seen nothing new: neither have the events
        self._progress = progress
        return self._read_events()

    def _read_job(self) -> dict[str, Any]:
        if self._snapshots:
            try:
                with self.client.open("GET", f"/v1/tunegate/jobs/{quote(self.job_id, safe=':')}/snapshot") as resp:
                    raw = resp.read()
                    source = resp.headers.get("x-tunegate-source")
                    age = resp.headers.get("x-tunegate-snapshot-age")
            except GatewayError as exc:
                if exc.code != "unknown_route":
                    raise
                self._snapshots = False  # a gateway from before the route: read the job itself from now on
            else:
                self.source = "snapshot" if source == "snapshot" else "live"
                self.snapshot_age = int(age) if self.source == "snapshot" and age and age.isdigit() else None
                self.reads[self.source] += 1
                try:
                    return _job(json.loads(raw))
                except ValueError:
                    raise GatewayError("the gateway answered the job read with something that is not JSON") from None
        self.source, self.snapshot_age = "live", None
        self.reads["live"] += 1
        return _job(self.client.json("GET", self.path))

    def _read_events(self) -> list[dict[str, Any]]:
        fresh: list[dict[str, Any]] = []
        after = None
        for _ in range(MAX_EVENT_PAGES):
            self.reads["events"] += 1
            page = self.client.json("GET", self.path + "/events", params={"limit": 100, "after": after})
            data = [e for e in (page or {}).get("data", []) if isinstance(e, dict) and isinstance(e.get("id"), str)]
            new = [e for e in data if e["id"] not in self.events]
            fresh.extend(new)
            if len(new) < len(data) or not page.get("has_more") or not data:
                break
            after = data[-1]["id"]
        for event in fresh:
            self.events[event["id"]] = event
        return sorted(fresh, key=lambda e: (e.get("created_at") or 0, e["id"]))

    def loss(self) -> list[dict[str, Any]]:
        return loss_points(self.events.values())

    # ---- rendering -----------------------------------------------------------------------------

    def loss_line(self) -> Text | None:
        points = self.loss()
        train = [p["train_loss"] for p in points if p["train_loss"] is not None]
        if not train:
            return None
        last = points[-1]
        text = Text("loss ")
        text.append(sparkline(train), style="cyan")
        text.append(f" {train[-1]:.4f} at step {last['step']}")
        valid = [p["valid_loss"] for p in points if p["valid_loss"] is not None]
        if valid:
            text.append(f" (valid {valid[-1]:.4f})")
        return text

    def panel(self) -> Panel:
        status = str(self.job.get("status") or "?")
        head = Text.assemble((self.job_id, "bold"), "  ", (status, STYLE.get(status, "")),
                             f"  {time.monotonic() - self.started:.0f}s")
        if self.snapshot_age is not None:
            head.append(f"  (as the gateway saw it {self.snapshot_age}s ago)", style="dim")
        if self.job.get("fine_tuned_model"):
            head.append(f"\nmodel {self.job['fine_tuned_model']}")
        table = Table.grid(padding=(0, 1))
        ordered = sorted(self.events.values(), key=lambda e: (e.get("created_at") or 0, e["id"]))
        latest = [e for e in ordered if e.get("type") != "metrics"][-6:]  # metrics: the loss line
        for event in latest:
            table.add_row(_clock(event.get("created_at")), str(event.get("message", "")))
        parts: list[Any] = [head, table]
        loss = self.loss_line()
        if loss is not None:
            parts.append(loss)
        return Panel(Group(*parts), title="tunegate jobs watch", title_align="left")

    def line(self, text: str | Text) -> None:
        self.console.print(Text.assemble((time.strftime("%H:%M:%S "), "dim"), text), soft_wrap=True)

    # ---- the loop ------------------------------------------------------------------------------

    def run(self, interval: float, timeout: float | None) -> int:
        if self.console.is_terminal and not self.as_json:
            with Live(self.panel(), console=self.console, refresh_per_second=4, transient=False) as live:
                return self._loop(interval, timeout, lambda fresh, changed: live.update(self.panel()))
        return self._loop(interval, timeout, self._print_changes)

    def _loop(self, interval: float, timeout: float | None, show: Any) -> int:
        last_status = None
        while True:
            fresh = self.poll()
            status = self.job.get("status")
            show(fresh, status != last_status)
            last_status = status
            if status in TERMINAL:
                self._finish(status)
                return TERMINAL[status]
            if timeout is not None and time.monotonic() - self.started >= timeout:
                self.console.print(f"gave up after {timeout:.0f}s; the job is {status}", style="yellow")
                return 3
            time.sleep(interval)

    def _print_changes(self, fresh: list[dict[str, Any]], changed: bool) -> None:
        if self.as_json:
            if changed or fresh:
                loss = self.loss()
                sys.stdout.write(json.dumps({"id": self.job_id, "status": self.job.get("status"),
                                             "new_events": fresh, "last_loss": loss[-1] if loss else None,
                                             "source": self.source, "snapshot_age": self.snapshot_age}) + "\n")
                sys.stdout.flush()
            return
        if changed:
            status = str(self.job.get("status"))
            self.line(Text.assemble("status ", (status, STYLE.get(status, "bold"))))
        for event in fresh:
            if event.get("type") == "metrics":
                continue  # summarised by the loss line
            self.line(Text(f"event  {event.get('message', '')}"))
        if any(e.get("type") == "metrics" for e in fresh):
            summary = self.loss_line()
            if summary is not None:
                self.line(summary)

    def _finish(self, status: str) -> None:
        if self.as_json:
            return
        if status == "succeeded":
            message = Text.assemble(("succeeded", "green"), f": {self.job.get('fine_tuned_model') or ''}")
        elif status == "failed":
            error = self.job.get("error") or {}
            message = Text.assemble(("failed", "red"), f": {error.get('message') or 'no reason given'}"
                                    + (f" [{error['code']}]" if error.get("code") else ""))
        else:
            message = Text("cancelled", style="bright_black")
        self.console.print(message)


def _job(answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise GatewayError("the gateway answered the job read with something that is not a JSON object")
    return answer


def _clock(ts: Any) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.gmtime(ts))
