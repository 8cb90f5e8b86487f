"""Eval runs beside a job: the results ``tunegate eval`` keeps in ``<data dir>/evals/<id>.json`` that
name the job's tuned model (as one of the compared models). Only each run's summary reaches the page
(models, graders, scores), never its prompts or answers.

Blocking file reads: called through ``asyncio.to_thread``. Summaries are cached by (name, mtime, size), so
a page view re-reads only files that changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_FILES = 500  # the newest runs looked at per page view
MAX_RUNS = 20  # shown per job
_CACHE: dict[str, tuple[tuple[int, int], dict[str, Any] | None]] = {}


def _summary(path: Path) -> dict[str, Any] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _CACHE.get(path.name)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        doc = json.loads(path.read_text("utf-8"))
        models = [{"label": str(m["label"]), "model": str(m["model"]), "source": str(m.get("source"))}
                  for m in doc["models"]]
        graders = [str(g.get("name") or g.get("type")) for g in doc["graders"]]
        summary: dict[str, Any] | None = {
            "id": str(doc["id"]), "created_at": doc.get("created_at"), "items": doc["data"]["items"],
            "models": models, "graders": graders,
            "scores": {name: {m["label"]: (doc["summary"][m["label"]]["graders"].get(name) or {}).get("mean")
                              for m in models} for name in graders},
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        summary = None  # not a result this version can read: left out, not an error page
    if len(_CACHE) > 4 * MAX_FILES:
        _CACHE.clear()
    _CACHE[path.name] = (stamp, summary)
    return summary


def runs_for(data_dir: Path, model: str | None) -> list[dict[str, Any]]:
    """The newest runs (ids sort by time) that compared ``model``."""
    if not model:
        return []
    folder = data_dir / "evals"
    try:
        names = sorted((p for p in folder.glob("eval_*.json")), key=lambda p: p.name, reverse=True)[:MAX_FILES]
    except OSError:
        return []
    runs = []
    for path in names:
        got = _summary(path)
        if got is not None and any(m["model"] == model for m in got["models"]):
            runs.append(got)
            if len(runs) >= MAX_RUNS:
                break
    return runs
