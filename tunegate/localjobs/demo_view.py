"""What ``tunegate demo`` shows on the terminal: a progress bar over the job's steps and epochs with the
loss, the job's summary, and the base and tuned model's answers side by side as they stream in.

Everything here reads OpenAI-shaped job events and chat deltas; nothing talks to the gateway. On a
terminal the bar and the answers redraw in place; piped, each is printed once when it is complete, so a
log of the run stays readable.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from tunegate.ui.loss import sparkline


def printable(text: str) -> str:
    """Model output as the terminal may show it: a random model emits control bytes (escape sequences,
    form feeds) that would move the cursor or clear the screen, so they are shown as '·'."""
    return "".join(c if c.isprintable() or c == "\n" else "·" for c in text)


def stop(live: Live) -> None:
    """Stop a live display; piped, rich prints its last frame without the line end a terminal gets."""
    live.stop()
    if not live.console.is_terminal:
        live.console.line()


class TrainingView:
    """A progress bar over the job's steps (phase, steps, epoch, time) and, under it, the loss: the last
    step's and a sparkline of the mean loss per epoch (single steps jump with each batch's examples)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.losses: list[tuple[int, float]] = []  # (step, train loss)
        self.epochs = 0
        self.total = 0
        self.progress = Progress(
            TextColumn("[bold]{task.description:<9}"), BarColumn(bar_width=20),
            TextColumn("{task.completed}/{task.total} steps"), TextColumn("{task.fields[epoch]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)
        self.task: TaskID = self.progress.add_task("validating", total=None, epoch="")
        self.live = Live(self, console=console, refresh_per_second=8)

    def __rich__(self) -> Group:
        return Group(self.progress.get_renderable(), Text(self.loss_text(), style="cyan"))

    def __enter__(self) -> TrainingView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.refresh()
        stop(self.live)

    def note(self, message: str) -> None:
        """A line above the bar (it scrolls; the bar stays at the bottom)."""
        self.live.console.print(message, highlight=False)

    def status(self, status: str) -> None:
        self.progress.update(self.task, description=status.replace("_", " "))

    def started(self, total_steps: int, n_epochs: int) -> None:
        self.total, self.epochs = total_steps, max(1, n_epochs)
        self.progress.update(self.task, total=total_steps, completed=0, description="training",
                             epoch=f"epoch 1/{self.epochs}")

    def step(self, step: int, total_steps: int, loss: float | None) -> None:
        if total_steps and total_steps != self.total:
            self.total = total_steps
            self.progress.update(self.task, total=total_steps)
        if loss is not None:
            self.losses.append((step, loss))
        self.progress.update(self.task, completed=step, epoch=f"epoch {self.epoch_of(step)}/{self.epochs}"
                             if self.epochs else "")

    def epoch_of(self, step: int) -> int:
        per_epoch = max(1, self.total // max(1, self.epochs)) if self.total else 1
        return min(max(1, self.epochs), (max(step, 1) - 1) // per_epoch + 1)

    def epoch_means(self) -> list[float]:
        by_epoch: dict[int, list[float]] = {}
        for step, loss in self.losses:
            by_epoch.setdefault(self.epoch_of(step), []).append(loss)
        return [sum(v) / len(v) for _, v in sorted(by_epoch.items())]

    def loss_text(self) -> str:
        if not self.losses:
            return ""
        return f"loss {self.losses[-1][1]:.3f}   per epoch {sparkline(self.epoch_means(), 50)}"

    def loss_summary(self) -> str:
        """"4.91 → 1.12  ▇▆▅▃▂▁" (the first and last epoch's mean loss) or ""."""
        means = self.epoch_means()
        if not means:
            return ""
        return f"{means[0]:.2f} → {means[-1]:.2f} (mean per epoch)  {sparkline(means, 50)}"


def summary(rows: Iterable[tuple[str, str]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, Text(value))
    return table


class ChatView:
    """The same prompt's answers in two columns, filled in as their streams arrive."""

    def __init__(self, console: Console, prompt: str, columns: list[tuple[str, str]]) -> None:
        self.console = console
        self.prompt = prompt
        self.columns = columns  # (title, model name)
        self.answers = ["" for _ in columns]
        self.notes = ["" for _ in columns]
        self.live = Live(self.render(), console=console, refresh_per_second=15, transient=False)

    def __enter__(self) -> ChatView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self.render())
        stop(self.live)

    def stream(self, index: int, deltas: Iterator[str]) -> None:
        for delta in deltas:
            self.answers[index] += delta
            self.live.update(self.render())

    def fail(self, index: int, message: str) -> None:
        self.notes[index] = message
        self.live.update(self.render())

    def render(self) -> Group:
        table = Table(expand=True, show_lines=False, padding=(0, 1))
        for title, model in self.columns:
            table.add_column(Text.assemble((title, "bold"), "\n", (model, "dim")), ratio=1, overflow="fold")
        cells: list[Any] = []
        for answer, note in zip(self.answers, self.notes, strict=True):
            cell = Text(printable(answer))
            if note:
                cell.append(("\n" if answer else "") + note, style="yellow")
            cells.append(cell)
        table.add_row(*cells)
        return Group(Panel(Text(printable(self.prompt)), title="prompt", title_align="left", expand=True), table)
