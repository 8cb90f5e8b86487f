"""``tunegate eval``: two (or more) models on the same prompts, scored by OpenAI-shaped graders
(``graders.py``), through the gateway's chat API.

A model is either called live (``--model``) or read from a ``record`` output (``--answers FILE``, matched
to each prompt by its messages). Items come from a JSONL file: chat examples (the prompt is every message
up to the last assistant turn, that turn is ``item.reference``), DPO examples, or OpenAI eval rows
(``{"item": {...}}`` with ``messages`` or ``input``). Every field of the row is ``item.<field>``;
``item.prompt`` is the prompt as text when the row has no ``prompt`` of its own.

The result is one JSON document (``<data dir>/evals/<id>.json``), the dashboard's job page lists the runs
that name the job's tuned model.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunegate.client.http import Client, GatewayError

from .api import sha256_of
from .bundle import write_json
from .graders import Grade, Grader, JudgeError
from .record import ChatCaller, RecordError, held_out, jsonl_examples, messages_key, recorded_answers

JSON = dict[str, Any]
FORMAT = "tunegate-eval"
VERSION = 1


class EvalError(ValueError):
    pass


@dataclass
class Item:
    index: int
    messages: list[JSON]
    variables: JSON  # the `item` namespace
    extra: JSON = field(default_factory=dict)


def _as_text(messages: list[JSON]) -> str:
    def text(content: Any) -> str:
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return ""

    if len(messages) == 1:
        return text(messages[0].get("content"))
    return "\n".join(f"{m.get('role')}: {text(m.get('content'))}" for m in messages)


def _row(raw: Any) -> tuple[list[JSON], str | None, JSON, JSON] | None:
    """(prompt, reference, item variables, extra request fields) of one line."""
    if not isinstance(raw, dict):
        return None
    row = raw["item"] if isinstance(raw.get("item"), dict) else raw
    if isinstance(row.get("input"), str):  # an eval row whose input is the user's text
        return [{"role": "user", "content": row["input"]}], None, dict(row), {}
    if isinstance(row.get("input"), list) and "messages" not in row:
        row = {**row, "messages": row["input"]}
    got = held_out(row)
    if got is None:
        return None
    return got[0], got[1], dict(row), got[2]


def read_items(path: Path, limit: int | None = None) -> tuple[list[Item], list[str]]:
    found, skipped = jsonl_examples(path, _row, "no prompt", EvalError, limit)
    items: list[Item] = []
    for n, (prompt, reference, variables, extra) in found:
        variables.setdefault("prompt", _as_text(prompt))
        if reference is not None:
            variables.setdefault("reference", reference)
        items.append(Item(n, prompt, variables, extra))
    if not items:
        raise EvalError(f"{path} holds no prompt to evaluate" + (f" ({skipped[0]})" if skipped else ""))
    return items, skipped


@dataclass
class Contender:
    """One side of the comparison."""

    label: str
    model: str
    connection: str | None = None
    answers: dict[str, JSON] | None = None  # recorded: messages_key → assistant message
    answers_path: str | None = None

    def describe(self) -> JSON:
        out: JSON = {"label": self.label, "model": self.model,
                     "source": "recorded" if self.answers is not None else "gateway"}
        if self.connection:
            out["connection"] = self.connection
        if self.answers_path:
            out["answers"] = self.answers_path
        return out


def recorded(path: Path, label: str, model: str | None) -> Contender:
    try:
        answers, named = recorded_answers(path)
    except RecordError as exc:
        raise EvalError(str(exc)) from None
    if not answers:
        raise EvalError(f"{path} holds no recorded answer")
    return Contender(label, model or named or f"answers:{path.name}", answers=answers, answers_path=str(path))


@dataclass
class Sample:
    output_text: str | None
    error: str | None = None
    finish_reason: str | None = None
    usage: JSON | None = None
    seconds: float | None = None
    scores: dict[str, Grade] = field(default_factory=dict)

    def namespace(self) -> JSON:
        ns: JSON = {"output_text": self.output_text or ""}
        try:
            ns["output_json"] = json.loads(self.output_text or "")
        except ValueError:
            pass
        return ns

    def to_dict(self) -> JSON:
        out: JSON = {"output_text": self.output_text,
                     "scores": {name: g.to_dict() for name, g in self.scores.items()}}
        for k in ("error", "finish_reason", "usage", "seconds"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


@dataclass
class Evaluation:
    caller: ChatCaller
    graders: list[Grader]
    params: JSON  # temperature, max_tokens, seed for the live models
    judge_connection: str | None = None
    concurrency: int = 4

    def _client(self, connection: str | None) -> Client:
        return replace(self.caller.client, connection=connection) if connection else self.caller.client

    def judge(self, model: str, messages: list[JSON], params: JSON) -> str:
        try:
            answer = self.caller.ask({"model": model, "messages": messages, **params},
                                     self._client(self.judge_connection))
        except GatewayError as exc:
            raise JudgeError(f"the judge {model}: {exc}") from None
        return answer.text

    def sample(self, who: Contender, item: Item) -> Sample:
        if who.answers is not None:
            message = who.answers.get(messages_key(item.messages))
            if message is None:
                return Sample(None, error="no recorded answer for this prompt")
            content = message.get("content")
            return Sample(content if isinstance(content, str) else json.dumps(message.get("tool_calls")))
        body = {"model": who.model, "messages": item.messages, **item.extra,
                **{k: v for k, v in self.params.items() if v is not None}}
        try:
            answer = self.caller.ask(body, self._client(who.connection))
        except GatewayError as exc:
            return Sample(None, error=str(exc))
        return Sample(answer.text, finish_reason=answer.finish_reason, usage=answer.usage, seconds=answer.seconds)

    def one(self, who: Contender, item: Item) -> Sample:
        got = self.sample(who, item)
        if got.output_text is None:
            return got
        namespaces = {"item": item.variables, "sample": got.namespace()}
        for grader in self.graders:
            got.scores[grader.name] = grader.grade(namespaces, self.judge)
        return got

    def run(self, contenders: list[Contender], items: list[Item],
            tick: Callable[[], None] | None = None) -> dict[str, list[Sample]]:
        """Every contender on every item, ``concurrency`` at a time (model calls and judge calls share
        the rate limit); samples in item order."""
        jobs = [(c, i) for c in contenders for i in items]

        def work(pair: tuple[Contender, Item]) -> Sample:
            out = self.one(*pair)
            if tick is not None:
                tick()
            return out

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency), thread_name_prefix="eval") as pool:
            results = list(pool.map(work, jobs))
        samples: dict[str, list[Sample]] = {c.label: [] for c in contenders}
        for (c, _), s in zip(jobs, results, strict=True):
            samples[c.label].append(s)
        return samples


def summarize(graders: list[Grader], samples: list[Sample]) -> JSON:
    """Per grader: mean score over the items it could grade, how many passed (where passing is defined),
    and how many it could not grade (no answer, or the grader's error)."""
    per: JSON = {}
    for g in graders:
        grades = [s.scores.get(g.name) for s in samples]
        scored = [x.score for x in grades if x is not None and x.score is not None]
        passes = [x.passed for x in grades if x is not None and x.passed is not None]
        per[g.name] = {
            "type": g.spec.get("type"), "n": len(scored), "errors": len(samples) - len(scored),
            "mean": round(sum(scored) / len(scored), 6) if scored else None,
            "passed": sum(passes) if passes else None,
            "pass_rate": round(sum(passes) / len(passes), 6) if passes else None,
        }
        if g.spec.get("type") == "score_model":
            per[g.name]["range"] = g.spec.get("range") or [0, 1]
    return {"answers": {"n": len(samples), "failed": sum(1 for s in samples if s.output_text is None)},
            "graders": per}


def new_id() -> str:
    return "eval_" + datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "_" + secrets.token_hex(4)


def document(run_id: str, data: Path, items: list[Item], skipped: list[str], contenders: list[Contender],
             graders: list[Grader], samples: dict[str, list[Sample]], params: JSON, judge: str | None) -> JSON:
    digest = sha256_of(data) if data.is_file() else None
    return {
        "object": "eval.run", "format": FORMAT, "version": VERSION, "id": run_id,
        "created_at": int(datetime.now(UTC).timestamp()),
        "data": {"path": str(data), "sha256": digest, "items": len(items), "skipped": skipped},
        "models": [c.describe() for c in contenders], "params": params, "judge": judge,
        "graders": [g.spec for g in graders],
        "summary": {c.label: summarize(graders, samples[c.label]) for c in contenders},
        "items": [{"line": it.index, "prompt": it.messages, "reference": it.variables.get("reference"),
                   "samples": {c.label: samples[c.label][n].to_dict() for c in contenders}}
                  for n, it in enumerate(items)],
    }


def store(data_dir: Path, doc: JSON) -> Path:
    """``<data dir>/evals/<id>.json``, written whole then renamed (the dashboard never reads half)."""
    folder = data_dir / "evals"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{doc['id']}.json"
    write_json(path, doc)
    return path
