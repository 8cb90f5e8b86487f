"""The dated tables shipped with the package: ``retirements.toml`` (OpenAI base models and their announced
shutdown dates) and ``prices.toml`` (training price per 1M tokens, and throughput assumptions, per backend).

Each row keeps its source and the day it was checked, and the loaders hand those on, so whatever the
commands print from a table can say where it came from and whether it was verified.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Retirement:
    model: str
    shutdown: date
    source: str
    checked: str
    verified: bool
    announced: str | None = None
    seen_in: tuple[str, ...] = ()

    def days_left(self, today: date) -> int:
        return (self.shutdown - today).days

    def to_dict(self, today: date, within_days: int) -> dict[str, Any]:
        left = self.days_left(today)
        return {"shutdown": self.shutdown.isoformat(), "days_left": left, "flagged": left <= within_days,
                "source": self.source, "checked": self.checked, "verified": self.verified,
                "seen_in": list(self.seen_in)}


@dataclass(frozen=True)
class Platform:
    no_new_jobs_after: date
    source: str
    checked: str
    verified: bool


@dataclass(frozen=True)
class Retirements:
    by_model: dict[str, Retirement] = field(default_factory=dict)
    platform: Platform | None = None

    def lookup(self, model: str) -> Retirement | None:
        """The row for a base model id or alias (``gpt-4o-mini`` → ``gpt-4o-mini-2024-07-18``)."""
        return self.by_model.get(model)


@dataclass(frozen=True)
class Price:
    backend: str
    model: str  # fnmatch pattern
    usd_per_1m_tokens: float
    source: str
    checked: str
    verified: bool
    method: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"usd_per_1m_tokens": self.usd_per_1m_tokens, "pattern": self.model, "source": self.source,
                "checked": self.checked, "verified": self.verified, "note": self.note}


@dataclass(frozen=True)
class Throughput:
    backend: str
    queue_minutes: float
    tokens_per_second: float
    source: str


@dataclass(frozen=True)
class Prices:
    prices: tuple[Price, ...] = ()
    throughput: dict[str, Throughput] = field(default_factory=dict)

    def price(self, backend: str, model: str, method: str) -> Price | None:
        """The first row for this backend whose pattern matches the model (case-insensitively) and whose
        method, if it names one, is this job's."""
        for row in self.prices:
            if row.backend != backend or (row.method is not None and row.method != method):
                continue
            if fnmatch.fnmatchcase(model.lower(), row.model.lower()):
                return row
        return None


def _read(name: str) -> dict[str, Any]:
    return tomllib.loads(resources.files("tunegate.migration").joinpath(name).read_text("utf-8"))


@cache
def retirements() -> Retirements:
    data = _read("retirements.toml")
    by_model: dict[str, Retirement] = {}
    for row in data.get("model", []):
        entry = Retirement(model=row["id"], shutdown=date.fromisoformat(row["shutdown"]), source=row["source"],
                           checked=row["checked"], verified=bool(row.get("verified", False)),
                           announced=row.get("announced"), seen_in=tuple(row.get("seen_in", ())))
        for name in (row["id"], *row.get("aliases", ())):
            by_model[name] = entry
    platform = None
    if "platform" in data:
        p = data["platform"]
        platform = Platform(date.fromisoformat(p["no_new_jobs_after"]), p["source"], p["checked"],
                            bool(p.get("verified", False)))
    return Retirements(by_model, platform)


@cache
def prices() -> Prices:
    data = _read("prices.toml")
    rows = tuple(Price(backend=r["backend"], model=r["model"], usd_per_1m_tokens=float(r["usd_per_1m_tokens"]),
                       source=r["source"], checked=r["checked"], verified=bool(r.get("verified", False)),
                       method=r.get("method"), note=r.get("note")) for r in data.get("price", []))
    speed = {r["backend"]: Throughput(r["backend"], float(r["queue_minutes"]), float(r["tokens_per_second"]),
                                      r["source"]) for r in data.get("throughput", [])}
    return Prices(rows, speed)
