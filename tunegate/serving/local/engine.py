"""The CPU (or single-GPU) engine of the local model server: transformers + peft, in worker threads.

* Base models are loaded on first use (``tunegate.trainer.engine.load_model_and_tokenizer``: the local
  directory or Hugging Face cache only, never the network) and kept resident, at most
  ``max_base_models`` of them (least recently used goes first, never one in use).
* Adapters are registered by name (``register``: a path, no loading) and loaded into their base model
  when first asked for, with peft's multi-adapter API (``load_adapter`` / ``set_adapter`` /
  ``delete_adapter``); at most ``max_loras`` stay loaded per base model (LRU).
* peft's active adapter is state of the whole model, so a :class:`_Gate` lets generations that use the
  same adapter (or the plain base model) run together and switches only when the model is idle, in
  arrival order (no adapter starves another).
* Generation streams token by token through a ``BaseStreamer``; a ``StoppingCriteria`` ends it when the
  request is cancelled (the HTTP client went away) or a stop sequence appeared.

Everything here blocks: the server calls it from its thread pool, never on its event loop.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


class EngineError(Exception):
    """A request the engine cannot serve, with the HTTP status and OpenAI error code to answer."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_value", param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.code, self.param = message, status, code, param


@dataclass
class GenerationRequest:
    base: str  # the base model's reference (a directory or a Hugging Face id)
    adapter: str | None  # a registered adapter's name, None for the base model alone
    messages: list[dict[str, Any]]
    max_new_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" or "length" (OpenAI's words)
    prompt_tokens: int
    completion_tokens: int
    cancelled: bool = False


@dataclass
class Adapter:
    name: str
    path: str
    base: str


class _Gate:
    """Who may use a model now: any number of generations with the same adapter, or one switch of the
    adapter while nobody generates. Waiters are served in arrival order."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.mode: str | None = None
        self.users = 0
        self.queue: deque[tuple[object, str | None]] = deque()

    @contextmanager
    def use(self, mode: str | None, switch: Callable[[str | None], None]) -> Iterator[None]:
        ticket = object()
        with self.cond:
            self.queue.append((ticket, mode))
            try:
                while not self._may_enter(ticket, mode):
                    self.cond.wait()
                if self.mode != mode or self.users == 0:
                    switch(mode)  # nobody generates now: the model's adapter state may change
                    self.mode = mode
                self.users += 1
            finally:
                self.queue.remove((ticket, mode))
                self.cond.notify_all()
        try:
            yield
        finally:
            with self.cond:
                self.users -= 1
                self.cond.notify_all()

    def _may_enter(self, ticket: object, mode: str | None) -> bool:
        for other, other_mode in self.queue:
            if other is ticket:
                break
            if other_mode != mode:
                return False  # someone who came earlier needs another adapter: let them go first
        return self.users == 0 or self.mode == mode

    @contextmanager
    def idle(self) -> Iterator[None]:
        """Hold the model while nobody generates (to delete an adapter)."""
        with self.cond:
            while self.users:
                self.cond.wait()
            yield


class Resident:
    """One base model in memory with its loaded adapters."""

    def __init__(self, reference: str, model: Any, tokenizer: Any, max_loras: int) -> None:
        self.reference = reference
        self.model = model  # a PeftModel once an adapter was loaded
        self.tokenizer = tokenizer
        self.max_loras = max_loras
        self.loaded: OrderedDict[str, str] = OrderedDict()  # adapter name -> path, least recently used first
        self.gate = _Gate()
        # A fast (Rust) tokenizer used from two threads at once fails ("Already borrowed"): one at a time.
        self.tokenizer_lock = threading.Lock()
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None

    def switch(self, adapter: Adapter | None) -> None:
        """Make ``adapter`` (None: the plain base model) the active one. Called while the model is idle."""
        from peft import PeftModel

        if adapter is None:
            if isinstance(self.model, PeftModel):
                self.model.base_model.disable_adapter_layers()  # type: ignore[operator]
            return
        if adapter.name not in self.loaded:
            while len(self.loaded) >= self.max_loras:
                oldest, _ = self.loaded.popitem(last=False)
                self.model.delete_adapter(oldest)
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(adapter.path, adapter_name=adapter.name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(self.model, adapter.path, adapter_name=adapter.name,
                                                       is_trainable=False)
            self.model.eval()
        self.loaded[adapter.name] = adapter.path
        self.loaded.move_to_end(adapter.name)
        self.model.base_model.enable_adapter_layers()
        self.model.set_adapter(adapter.name)

    def drop(self, name: str) -> None:
        if name in self.loaded:
            with self.gate.idle():
                if self.gate.mode == name:
                    self.gate.mode = "\0none"  # the next user switches, whatever it asks for
                self.loaded.pop(name, None)
                self.model.delete_adapter(name)


class Engine:
    def __init__(self, *, device: str = "auto", max_loras: int = 4, max_base_models: int = 1,
                 default_max_tokens: int = 512, threads: int | None = None,
                 loader: Callable[[str, str], tuple[Any, Any]] | None = None) -> None:
        self.device = _pick_device(device)
        self.max_loras = max(1, max_loras)
        self.max_base_models = max(1, max_base_models)
        self.default_max_tokens = default_max_tokens
        self.adapters: dict[str, Adapter] = {}
        self.residents: OrderedDict[str, Resident] = OrderedDict()
        self._lock = threading.Lock()  # residents and adapters
        self._loading: dict[str, threading.Lock] = {}
        self._loader = loader or _load_base
        if threads:
            import torch

            torch.set_num_threads(threads)

    # ---- adapters --------------------------------------------------------------------------------

    def register(self, name: str, path: str, base: str | None) -> Adapter:
        """Remember an adapter (checked, not loaded: that happens on first use)."""
        config = os.path.join(path, "adapter_config.json")
        if not os.path.isfile(config):
            raise EngineError(f"No adapter found at the path given for '{name}'.", status=404, code="adapter_not_found",
                              param="lora_path")
        if base is None:
            with open(config, encoding="utf-8") as fh:
                base = json.load(fh).get("base_model_name_or_path")
        if not isinstance(base, str) or not base:
            raise EngineError(f"Adapter '{name}' names no base model.", param="base_model_name")
        with self._lock:
            old = self.adapters.get(name)
            self.adapters[name] = adapter = Adapter(name, path, base)
        if old is not None and (old.path != path or old.base != base):
            self._drop_loaded(old)
        return adapter

    def unregister(self, name: str) -> None:
        with self._lock:
            adapter = self.adapters.pop(name, None)
        if adapter is None:
            raise EngineError(f"The lora adapter '{name}' cannot be found.", status=404, code="adapter_not_found",
                              param="lora_name")
        self._drop_loaded(adapter)

    def _drop_loaded(self, adapter: Adapter) -> None:
        resident = self.residents.get(adapter.base)
        if resident is not None:
            resident.drop(adapter.name)

    # ---- base models -----------------------------------------------------------------------------

    def resident(self, reference: str) -> Resident:
        with self._lock:
            found = self.residents.get(reference)
            if found is not None:
                self.residents.move_to_end(reference)
                return found
            loading = self._loading.setdefault(reference, threading.Lock())
        with loading:  # one load per model, however many requests wait for it
            with self._lock:
                if reference in self.residents:
                    return self.residents[reference]
            model, tokenizer = self._loader(reference, self.device)
            resident = Resident(reference, model, tokenizer, self.max_loras)
            with self._lock:
                self._evict_bases()
                self.residents[reference] = resident
                self._loading.pop(reference, None)
            return resident

    def _evict_bases(self) -> None:
        for ref in list(self.residents):
            if len(self.residents) < self.max_base_models:
                return
            if self.residents[ref].gate.users == 0:
                # Generations that still hold a reference finish on it; the memory goes with the last one.
                del self.residents[ref]

    # ---- generation ------------------------------------------------------------------------------

    def resolve(self, model: str) -> tuple[str, Adapter | None]:
        """(base reference, adapter) for a request's ``model``: a registered adapter, else a base model."""
        with self._lock:
            adapter = self.adapters.get(model)
        return (adapter.base, adapter) if adapter is not None else (model, None)

    def prompt(self, resident: Resident, messages: list[dict[str, Any]], tools: list[Any] | None) -> list[int]:
        tokenizer = resident.tokenizer
        chat = [_template_message(m) for m in messages]
        try:
            with resident.tokenizer_lock:
                text = tokenizer.apply_chat_template(chat, tools=tools, add_generation_prompt=True, tokenize=False)
                plain = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) if tools else ""
            if tools and text == plain:
                raise EngineError("This model's chat template has no place for tools, so 'tools' cannot be used "
                                  "with it.", param="tools", code="unsupported_parameter")
        except EngineError:
            raise
        except Exception as exc:  # a template that raises on these messages (e.g. roles it refuses)
            raise EngineError(f"The model's chat template refused these messages: {exc}", param="messages") from exc
        with resident.tokenizer_lock:
            ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def generate(self, req: GenerationRequest, on_text: Callable[[str], None],
                 cancelled: threading.Event) -> GenerationResult:
        """Run one generation to its end, handing each piece of text to ``on_text`` as it is decoded."""
        import torch
        from transformers.generation.stopping_criteria import StoppingCriteriaList  # not the lazy top level:
        # transformers' lazy attribute lookup is not safe from several threads on first use

        with self._lock:
            adapter = self.adapters.get(req.adapter) if req.adapter else None
        if req.adapter and adapter is None:
            raise EngineError(f"The model '{req.adapter}' is not loaded here.", status=404, code="model_not_found",
                              param="model")
        resident = self.resident(req.base)
        ids = self.prompt(resident, req.messages, req.tools)
        budget = self._budget(resident, len(ids), req.max_new_tokens)
        streamer = _Streamer(resident.tokenizer, req.stop, on_text, resident.tokenizer_lock)
        halt = _Halt(cancelled, streamer)
        kwargs: dict[str, Any] = dict(max_new_tokens=budget, streamer=streamer,
                                      stopping_criteria=StoppingCriteriaList([halt]),
                                      pad_token_id=resident.tokenizer.pad_token_id,
                                      eos_token_id=resident.tokenizer.eos_token_id)
        if req.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=req.temperature, top_p=req.top_p, top_k=None)
        with resident.gate.use(adapter.name if adapter else None, lambda _mode: resident.switch(adapter)):
            if req.seed is not None:
                torch.manual_seed(req.seed)
            device = next(resident.model.parameters()).device
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            with torch.inference_mode():
                resident.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        eos = resident.tokenizer.eos_token_id
        ended_by_model = bool(streamer.ids) and streamer.ids[-1] in (eos if isinstance(eos, list) else [eos])
        length = not (streamer.stopped or ended_by_model or cancelled.is_set()) and len(streamer.ids) >= budget
        return GenerationResult(streamer.text, "length" if length else "stop", len(ids), len(streamer.ids),
                                cancelled=cancelled.is_set())

    def _budget(self, resident: Resident, prompt_tokens: int, asked: int | None) -> int:
        room = (resident.context - prompt_tokens) if resident.context else None
        if room is not None and room <= 0:
            raise EngineError(f"This model's context is {resident.context} tokens and the messages take "
                              f"{prompt_tokens}.", param="messages", code="context_length_exceeded")
        budget = asked if asked is not None else self.default_max_tokens
        if room is not None and budget > room:
            if asked is not None:
                raise EngineError(f"This model's context is {resident.context} tokens: the messages take "
                                  f"{prompt_tokens}, so at most {room} can be generated (asked: {asked}).",
                                  param="max_tokens", code="context_length_exceeded")
            budget = room
        return budget

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"device": self.device, "adapters": sorted(self.adapters),
                    "base_models": {ref: {"loaded_adapters": list(r.loaded), "active": r.gate.users}
                                    for ref, r in self.residents.items()}}


class _Streamer:
    """transformers' streamer protocol: ``put`` gets the prompt once, then each new token. Text goes out
    as soon as it is whole (a multi-byte character split over tokens waits for its last piece) and can
    no longer turn out to be the start of a stop sequence."""

    def __init__(self, tokenizer: Any, stop: list[str], on_text: Callable[[str], None],
                 lock: threading.Lock) -> None:
        self.tokenizer = tokenizer
        self.lock = lock
        self.stop = [s for s in stop if s]
        self.on_text = on_text
        self.ids: list[int] = []
        self.text = ""  # what has been handed out
        self.stopped = False  # a stop sequence ended the text
        self._prompt_seen = False
        self._folded = ""  # the text of ids[:_mark]
        self._mark = 0

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.stopped:
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        self._emit(final=False)

    def end(self) -> None:
        if not self.stopped:
            self._emit(final=True)

    def _emit(self, *, final: bool) -> None:
        with self.lock:
            decoded = self._folded + self.tokenizer.decode(self.ids[self._mark:], skip_special_tokens=True)
        if not final and decoded.endswith("\ufffd"):
            return  # half a character
        if decoded.endswith("\n"):
            # Like transformers' TextStreamer: a finished line is decoded for good, so each token costs
            # the decoding of its line, not of the whole answer.
            self._folded, self._mark = decoded, len(self.ids)
        cut = _first_stop(decoded, self.stop, len(self.text))
        if cut is not None:
            decoded, self.stopped = decoded[:cut], True
        elif not final:
            decoded = decoded[:len(decoded) - _held_back(decoded, self.stop)]
        if len(decoded) > len(self.text) and decoded.startswith(self.text):
            piece, self.text = decoded[len(self.text):], decoded
            self.on_text(piece)


def _first_stop(text: str, stops: list[str], sent: int) -> int | None:
    found = [i for i in (text.find(s, max(0, sent - len(s) + 1)) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop sequence."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class _Halt:
    """Ends ``generate`` at the next token once the request is cancelled or a stop sequence appeared."""

    def __init__(self, cancelled: threading.Event, streamer: _Streamer) -> None:
        self.cancelled = cancelled
        self.streamer = streamer

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = self.cancelled.is_set() or self.streamer.stopped
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as chat templates expect it: text content, and OpenAI's ``developer`` role as ``system``."""
    from tunegate.serving.shapes import text_of

    out = {k: v for k, v in message.items() if k in ("role", "content", "name", "tool_calls", "tool_call_id")}
    out["role"] = "system" if message.get("role") == "developer" else message.get("role")
    out["content"] = text_of(message.get("content"))
    return out


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """The ``<tool_call>{"name": …, "arguments": …}</tool_call>`` blocks that tool-aware chat templates
    (Qwen 2.5, Hermes) ask the model to write, as OpenAI tool calls; the text around them stays content."""
    import secrets

    calls: list[dict[str, Any]] = []
    rest: list[str] = []
    pos = 0
    while (start := text.find(TOOL_CALL_OPEN, pos)) >= 0:
        end = text.find(TOOL_CALL_CLOSE, start)
        if end < 0:
            break
        try:
            raw = json.loads(text[start + len(TOOL_CALL_OPEN):end])
        except ValueError:
            break
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            break
        rest.append(text[pos:start])
        args = raw.get("arguments", {})
        calls.append({"id": "call_" + secrets.token_hex(12), "type": "function",
                      "function": {"name": raw["name"], "arguments": args if isinstance(args, str) else json.dumps(args)}})
        pos = end + len(TOOL_CALL_CLOSE)
    rest.append(text[pos:])
    return ("".join(rest).strip() if calls else text), calls


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _load_base(reference: str, device: str) -> tuple[Any, Any]:
    from tunegate.trainer.engine import load_model_and_tokenizer
    from tunegate.trainer.spec import TrainingError

    try:
        model, tokenizer = load_model_and_tokenizer(reference, device)
    except TrainingError as exc:
        raise EngineError(f"Model '{reference}' could not be loaded here: {exc.message}", status=404,
                          code="model_not_found", param="model") from None
    model.eval()
    return model, tokenizer
