"""Stand-ins whose models answer each prompt differently, for `migrate record` and `tunegate eval`.

The OpenAI stand-in (``tests/standins/openai_like.py``) and the Together one answer every chat request
with one scripted reply; here a subclass picks the reply from the request (the wire shapes stay theirs:
``chat_reply`` with each stand-in's dialect). The OpenAI side also plays the judge: its base model reads
the grader prompt tunegate rendered (so the templating is checked on the wire) and answers the JSON a
score_model / label_model grader asks for. Each subclass counts requests in flight.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.gateway import Gateway
from tests.migration.conftest import Env, seed
from tests.standins.openai_like import ServerThread, StandIn, chat_reply
from tests.standins.together import TOGETHER_CHAT, TogetherStandIn

JUDGE = "gpt-4o-mini-2024-07-18"  # a base model of the OpenAI stand-in


def old_answer(text: str) -> str:
    """What the OpenAI-tuned model says: the reference answer of the seeded validation file ("Echo 3" →
    "3"), or a fixed-form answer to any other prompt."""
    m = re.fullmatch(r"Echo (\d+)", text)
    return m.group(1) if m else f"old answer to: {text}"


def new_answer(text: str) -> str:
    """The replacement model: right on even numbers, wordy on odd ones."""
    m = re.fullmatch(r"Echo (\d+)", text)
    if m:
        n = int(m.group(1))
        return str(n) if n % 2 == 0 else f"The answer is {n}"
    return f"new answer to: {text}"


def judge_answer(messages: list[dict[str, Any]]) -> str:
    """Score 1 when the rendered answer equals the rendered reference, else 0.25; label likewise."""
    text = "\n".join(str(m.get("content")) for m in messages)
    ref = re.search(r"Reference: (.*)", text)
    got = re.search(r"Answer: (.*)", text)
    same = bool(ref and got and ref.group(1).strip() == got.group(1).strip())
    if '{"result": "<label>"}' in text:
        return json.dumps({"result": "correct" if same else "incorrect"})
    return "```json\n" + json.dumps({"steps": [{"description": "compare", "conclusion": str(same)}],
                                     "result": 1.0 if same else 0.25}) + "\n```"


def last_user(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    return content if isinstance(content, str) else json.dumps(content)


@dataclass
class InFlight:
    now: int = 0
    most: int = 0
    delay: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each request

    async def enter(self) -> None:
        self.arrivals.append(time.monotonic())
        self.now += 1
        self.most = max(self.most, self.now)
        if self.delay:
            await asyncio.sleep(self.delay)

    def leave(self) -> None:
        self.now -= 1


@dataclass
class ScriptedOpenAI(StandIn):
    answer: Callable[[str], str] = old_answer
    flight: InFlight = field(default_factory=InFlight)
    judged: list[list[dict[str, Any]]] = field(default_factory=list)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model")
        if model not in self.base_models and model not in self.tuned_models():
            return self.error(404, f"The model `{model}` does not exist or you do not have access to it.",
                              "model_not_found")
        await self.flight.enter()
        try:
            if model == JUDGE:
                self.judged.append(body["messages"])
                reply = judge_answer(body["messages"])
            else:
                reply = self.answer(last_user(body))
            return await chat_reply(request, self.chat_dialect(), replace(self.chat, reply=reply), str(model))
        finally:
            self.flight.leave()


@dataclass
class ScriptedTogether(TogetherStandIn):
    answer: Callable[[str], str] = new_answer

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model")
        if model not in self.base_models and model not in self.tuned_models():
            return self.error(404, f"Unable to access model {model}.", "model_not_available")
        return await chat_reply(request, TOGETHER_CHAT, replace(self.chat, reply=self.answer(last_user(body))),
                                str(model))


@dataclass
class Rig(Env):
    @property
    def old(self) -> ScriptedOpenAI:
        assert isinstance(self.source, ScriptedOpenAI)
        return self.source

    @property
    def cli_env(self) -> dict[str, str]:
        # The eval command keeps its result in the gateway's data dir, where the dashboard reads it.
        return {**super().cli_env, "TUNEGATE_DATA_DIR": str(self.gateway.settings.data_dir)}

    def tuned(self) -> str:
        """The supervised job's tuned model on the OpenAI side."""
        return str(self.source.jobs[self.jobs["supervised"]]["fine_tuned_model"])


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    source, together = ScriptedOpenAI(mode="openai"), ScriptedTogether()
    with ServerThread(source.app()) as src, ServerThread(together.app()) as tgt, \
            Gateway(tmp_path / "data") as gw:
        async def setup(store: Any) -> str:
            await store.add_connection("src", "openai", {"api_key": source.api_key}, base_url=src.url)
            await store.add_connection("tgt", "together-ai", {"api_key": together.api_key}, base_url=tgt.url + "/v1")
            _, full = await store.create_key("migration", ["*"])
            return str(full)

        r = Rig(gw, source, together, gw.with_store(setup), tmp_path)
        seed(r)
        yield r


def prompts_file(path: Path, n: int, dup: int = 0) -> Path:
    """n chat examples "Echo i" → "i" (the last `dup` of them repeated once more)."""
    rows = [{"messages": [{"role": "system", "content": "Terse."}, {"role": "user", "content": f"Echo {i}"},
                          {"role": "assistant", "content": str(i)}]} for i in range(n)]
    rows += rows[n - dup:] if dup else []
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
