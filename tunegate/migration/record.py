"""``tunegate migrate record``: what a tuned model answers today on the team's prompts, kept as chat
fine-tuning JSONL (the golden set, and distillation data once the model is gone).

Prompts are the held-out turns of chat examples: every message up to the last assistant turn (that turn
is the reference). By default they come from the tuned model's own validation file in an exported
bundle, else its training file. Each prompt is sent to the gateway's ``POST /v1/chat/completions``
(never to a provider directly), rate-limited and a few at a time.

Two files grow side by side, one line per answer, each line flushed to disk before the next:

- ``<name>.jsonl``: ``{"messages": [...prompt, {"role": "assistant", "content": answer}]}`` (plus the
  example's ``tools``), which the gateway's validator accepts as a supervised training file;
- ``<name>.meta.jsonl``: the same line's key (sha256 of the prompt messages and the request parameters),
  the request parameters, the answer's ``usage``, ``finish_reason``, id, model, latency and time.

Resumable: a re-run first trims both files to the lines they share (a run killed between the two
writes, or half-way through a line, leaves at most one extra line, which is dropped), then asks only
for the keys not yet recorded. The same prompt twice in the input is asked once.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from tunegate.client.http import Client, GatewayError

from .bundle import BundleError, load_manifest, member, safe_name

JSON = dict[str, Any]
PARAMS = ("temperature", "top_p", "max_tokens", "seed")  # what `record` sets; part of each key
CARRIED = ("tools", "parallel_tool_calls")  # an example's own fields that shape the request and the output
RETRIED = {408, 409, 429, 500, 502, 503, 504}


T = TypeVar("T")


class RecordError(ValueError):
    pass


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def messages_key(messages: list[JSON]) -> str:
    """How eval finds a recorded answer for a prompt: the prompt messages alone."""
    return hashlib.sha256(canonical(messages).encode()).hexdigest()


def prompt_key(messages: list[JSON], params: JSON) -> str:
    return hashlib.sha256(canonical({"messages": messages, "params": params}).encode()).hexdigest()


@dataclass
class Prompt:
    index: int  # 1-based line in the prompts file
    messages: list[JSON]
    reference: str | None = None
    extra: JSON = field(default_factory=dict)  # tools, parallel_tool_calls


def held_out(example: Any) -> tuple[list[JSON], str | None, JSON] | None:
    """(prompt, reference, extra) of one example: chat (``messages``, cut before the last assistant
    turn), DPO (``input.messages``, the preferred output as reference) or a bare prompt list."""
    if not isinstance(example, dict):
        return None
    extra = {k: example[k] for k in CARRIED if k in example}
    messages = example.get("messages")
    if messages is None and isinstance(example.get("input"), dict):
        messages = example["input"].get("messages")
        preferred = example.get("preferred_output")
        ref = preferred[-1].get("content") if isinstance(preferred, list) and preferred and \
            isinstance(preferred[-1], dict) else None
        extra = {k: example["input"][k] for k in CARRIED if k in example["input"]}
        return (list(messages), ref if isinstance(ref, str) else None, extra) if isinstance(messages, list) \
            and messages else None
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return None
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None:
        return list(messages), None, extra
    prompt = messages[:last]
    ref = messages[last].get("content")
    if not any(m.get("role") == "user" for m in prompt):
        return None
    return prompt, ref if isinstance(ref, str) else None, extra


def jsonl_examples(path: Path, parse: Callable[[Any], T | None], no_prompt: str,
                   error: type[ValueError], limit: int | None = None) -> tuple[list[tuple[int, T]], list[str]]:
    """(line number, ``parse(example)``) for every line of a JSONL file that ``parse`` accepts, and a
    reason per line it does not (said, never dropped silently); at most ``limit`` accepted lines."""
    found: list[tuple[int, T]] = []
    skipped: list[str] = []
    try:
        with path.open("rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    got = parse(json.loads(raw))
                except ValueError:
                    skipped.append(f"line {n}: not JSON")
                    continue
                if got is None:
                    skipped.append(f"line {n}: {no_prompt}")
                    continue
                found.append((n, got))
                if limit is not None and len(found) >= limit:
                    break
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    return found, skipped


def read_prompts(path: Path) -> tuple[list[Prompt], list[str]]:
    """Every prompt of a JSONL file, and a line per example that holds none."""
    found, skipped = jsonl_examples(path, held_out, "no prompt (needs messages with a user turn before the last "
                                    "assistant turn)", RecordError)
    return [Prompt(n, *got) for n, got in found], skipped


def bundle_prompts(bundle: Path, model: str) -> tuple[Path, str, str]:
    """The file to take prompts from: the validation file of the job that produced ``model``, else its
    training file; (path, role, job id)."""
    try:
        manifest = load_manifest(bundle)
    except BundleError as exc:
        raise RecordError(str(exc)) from None
    jobs = [j for j in manifest.get("jobs") or [] if isinstance(j, dict) and j.get("fine_tuned_model") == model]
    if not jobs:
        raise RecordError(f"no job in {bundle} produced {model}; pass --prompts FILE")
    files = manifest.get("files") or {}
    for job in jobs:
        for role in ("validation_file", "training_file"):
            entry = files.get(job.get(role) or "")
            if isinstance(entry, dict) and entry.get("path"):
                try:  # never a file outside the bundle (load_manifest refuses such a bundle whole)
                    path = member(bundle, entry["path"], f"the path of file {job.get(role)!r}")
                except BundleError as exc:
                    raise RecordError(str(exc)) from None
                if path.is_file():
                    return path, role.split("_")[0], str(job.get("id"))
    raise RecordError(f"the bundle has neither the validation nor the training file of the job that produced "
                      f"{model} on disk; re-run 'tunegate migrate export' or pass --prompts FILE")


def default_output(bundle: Path | None, model: str) -> Path:
    name = safe_name(model, "model") + ".jsonl"
    if bundle is None:
        return Path("recorded-" + name)
    out = bundle / "recorded" / name
    try:  # appended to: never through a link that leads out of the bundle
        for path in (out, meta_path(out)):
            member(bundle, str(path.relative_to(bundle)), "the recording's path")
    except BundleError as exc:
        raise RecordError(str(exc)) from None
    return out


def meta_path(out: Path) -> Path:
    return out.with_name(out.name[:-len(".jsonl")] + ".meta.jsonl" if out.name.endswith(".jsonl")
                         else out.name + ".meta.jsonl")


# ---- calling the gateway -------------------------------------------------------------------------


class RateLimiter:
    """At most ``rate`` requests a second across every thread, evenly spaced (no bursts)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


@dataclass
class Answer:
    message: JSON  # the assistant message: role, content and tool_calls when there are any
    finish_reason: str | None
    usage: JSON | None
    id: str | None
    model: str | None
    system_fingerprint: str | None
    seconds: float

    @property
    def text(self) -> str:
        content = self.message.get("content")
        return content if isinstance(content, str) else ""


@dataclass
class ChatCaller:
    """POST /v1/chat/completions through the gateway, rate-limited, retrying what a retry can fix
    (429, 5xx, an unreachable gateway) with backoff; anything else is the gateway's own message."""

    client: Client
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(None))
    retries: int = 3
    backoff: float = 1.0

    def ask(self, payload: JSON, client: Client | None = None) -> Answer:
        attempt = 0
        while True:
            self.limiter.wait()
            started = time.monotonic()
            try:
                body = (client or self.client).json("POST", "/v1/chat/completions", payload=payload)
                return _answer(body, time.monotonic() - started)
            except GatewayError as exc:
                if attempt >= self.retries or (exc.status is not None and exc.status not in RETRIED):
                    raise
            attempt += 1
            time.sleep(min(self.backoff * 2 ** (attempt - 1), 30.0))


def _answer(body: Any, seconds: float) -> Answer:
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise GatewayError("the gateway answered the chat completion without a choice")
    choice = choices[0]
    raw: JSON = choice["message"] if isinstance(choice.get("message"), dict) else {}
    message: JSON = {"role": "assistant", "content": raw.get("content")}
    if raw.get("tool_calls"):
        message["tool_calls"] = raw["tool_calls"]
    return Answer(message, choice.get("finish_reason"), body.get("usage"), body.get("id"), body.get("model"),
                  body.get("system_fingerprint"), round(seconds, 4))


# ---- the two files -------------------------------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(end offset, line) of every whole, parseable line, stopping at the first that is not."""
    if not path.exists():
        return
    offset = 0
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return
            try:
                json.loads(raw)
            except ValueError:
                return
            offset += len(raw)
            yield offset, raw


def _fsync_append(fh: Any, obj: Any) -> None:
    fh.write((json.dumps(obj, ensure_ascii=False) + "\n").encode())
    fh.flush()
    os.fsync(fh.fileno())


@dataclass
class Progress:
    total: int
    done: int = 0  # recorded before this run
    recorded: int = 0  # by this run
    failed: list[JSON] = field(default_factory=list)
    duplicates: int = 0
    skipped: list[str] = field(default_factory=list)
    trimmed: int = 0  # lines dropped from files an interrupted run left uneven


class Recorder:
    def __init__(self, out: Path, model: str, params: JSON) -> None:
        self.out, self.meta = out, meta_path(out)
        self.model, self.params = model, params
        self.keys: set[str] = set()

    def resume(self) -> int:
        """Trim both files to the lines they share and learn which keys are done; the lines dropped."""
        outs, metas = list(_lines(self.out)), list(_lines(self.meta))
        keep = min(len(outs), len(metas))
        dropped = 0
        for path, lines in ((self.out, outs), (self.meta, metas)):
            size = lines[keep - 1][0] if keep else 0
            if not path.exists() or path.stat().st_size == size:
                continue
            with path.open("r+b") as fh:
                fh.seek(size)
                tail = fh.read()
                # An interrupted run leaves at most one line more (or a part of one): anything longer is
                # not ours to cut.
                if tail.count(b"\n") > 1:
                    raise RecordError(f"{path} does not match {self.meta.name if path == self.out else self.out.name}"
                                      f" after line {keep}; repair or move the two files")
                fh.truncate(size)
            dropped += 1
        for _, raw in metas[:keep]:
            entry = json.loads(raw)
            request = entry.get("request") or {}
            if request.get("model") != self.model or {k: request.get(k) for k in PARAMS} != \
                    {k: self.params.get(k) for k in PARAMS}:
                raise RecordError(f"{self.out} holds answers recorded with other settings ({request.get('model')}, "
                                  f"{ {k: request.get(k) for k in PARAMS if request.get(k) is not None} }); "
                                  "pass --out for a new file")
            self.keys.add(str(entry.get("key")))
        return dropped

    def request(self, prompt: Prompt) -> JSON:
        body: JSON = {"model": self.model, "messages": prompt.messages, **prompt.extra}
        body.update({k: v for k, v in self.params.items() if v is not None})
        return body

    def run(self, prompts: Iterable[Prompt], caller: ChatCaller, concurrency: int, progress: Progress,
            on_answer: Callable[[Progress], None] | None = None) -> Progress:
        pending: list[tuple[str, Prompt]] = []
        queued: set[str] = set()
        for p in prompts:
            key = prompt_key(p.messages, {**{k: self.params.get(k) for k in PARAMS}, **p.extra})
            if key in self.keys:
                progress.done += 1
            elif key in queued:
                progress.duplicates += 1
            else:
                queued.add(key)
                pending.append((key, p))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with self.out.open("ab") as out, self.meta.open("ab") as meta:
            self._drive(pending, caller, max(1, concurrency), out, meta, progress, on_answer)
        return progress

    def _drive(self, pending: list[tuple[str, Prompt]], caller: ChatCaller, concurrency: int, out: Any,
               meta: Any, progress: Progress, on_answer: Callable[[Progress], None] | None) -> None:
        """At most ``concurrency`` requests in flight; answers written here, on this thread, as they come.
        On Ctrl-C the queue is dropped and what was written stays."""
        todo = iter(pending)
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="record")
        running: dict[Future[Answer], tuple[str, Prompt, JSON]] = {}
        try:
            while True:
                while len(running) < concurrency and (nxt := next(todo, None)) is not None:
                    body = self.request(nxt[1])
                    running[pool.submit(caller.ask, body)] = (nxt[0], nxt[1], body)
                if not running:
                    return
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    key, prompt, body = running.pop(fut)
                    try:
                        answer = fut.result()
                    except GatewayError as exc:
                        progress.failed.append({"line": prompt.index, "error": str(exc)})
                        continue
                    self._write(out, meta, key, prompt, body, answer)
                    progress.recorded += 1
                    if on_answer is not None:
                        on_answer(progress)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _write(self, out: Any, meta: Any, key: str, prompt: Prompt, body: JSON, answer: Answer) -> None:
        # The answer first, its meta second: a run killed in between leaves one extra answer line, which
        # `resume` drops (the meta is what says a key is done).
        _fsync_append(out, {"messages": [*prompt.messages, answer.message], **prompt.extra})
        request = {k: v for k, v in body.items() if k not in ("messages", *CARRIED)}
        for k in PARAMS:
            request.setdefault(k, None)
        _fsync_append(meta, {
            "key": key, "line": prompt.index, "request": request, "reference": prompt.reference,
            "finish_reason": answer.finish_reason, "usage": answer.usage, "response_id": answer.id,
            "response_model": answer.model, "system_fingerprint": answer.system_fingerprint,
            "seconds": answer.seconds, "recorded_at": datetime.now(UTC).isoformat(timespec="seconds")})
        self.keys.add(key)


def recorded_answers(path: Path) -> tuple[dict[str, JSON], str | None]:
    """A record output as {messages_key(prompt): assistant message}, and the model its meta names."""
    answers: dict[str, JSON] = {}
    if not path.is_file():
        raise RecordError(f"{path} does not exist")
    for _, raw in _lines(path):
        line = json.loads(raw)
        messages = line.get("messages") if isinstance(line, dict) else None
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
                and messages[-1].get("role") == "assistant":
            answers[messages_key(messages[:-1])] = messages[-1]
    model = None
    for _, raw in _lines(meta_path(path)):
        model = (json.loads(raw).get("request") or {}).get("model")
        break
    return answers, model
