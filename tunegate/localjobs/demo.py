"""``tunegate demo``: a real fine-tuning job on this machine through the gateway's own HTTP API, ended by
a chat with the model it trained.

Starts the gateway in this process (embedded defaults, a free port, a data directory), takes the model
(``--model``: a Hugging Face id or a local directory; by default a tiny random model built offline),
uploads a small dataset shipped with tunegate (a quiz bot that answers every question as a pirate) and
trains it with the ``local`` provider — with the official ``openai`` SDK when it is installed, else plain
``urllib``. The terminal shows a progress bar (steps, epochs, loss), the job's summary and finally the
base model's and the tuned model's answers to one prompt, side by side, streamed from
``POST /v1/chat/completions`` (greedy decoding, so the difference is the training's, not chance's).

The gateway's own log (JSON request lines, warnings, whatever the training and serving processes write on
stderr) goes to ``gateway.log`` in the data directory, not to the terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tunegate.localjobs.demo_view import ChatView, TrainingView, printable, summary

DEMO_DATA = Path(__file__).with_name("demo_pirate.jsonl")
DEMO_PROMPT = "Capital of France?"
HEADERS = {"x-portkey-provider": "local"}
TERMINAL = ("succeeded", "failed", "cancelled")
LOG_NAME = "gateway.log"
MAX_ANSWER_TOKENS = 40
# The tiny random model knows nothing, so it needs many passes over 16 examples to say them back under
# greedy decoding (measured: 30 epochs, lr 2e-3, alpha 64 -> every training answer word for word, ~6 s of
# CPU). A real instruct model picks the style up in a few epochs; more would only cost the user time.
TINY_HYPERPARAMETERS = {"n_epochs": 30, "batch_size": 2, "learning_rate_multiplier": 10, "lora_alpha": 64}
MODEL_HYPERPARAMETERS = {"n_epochs": 4, "batch_size": 2, "learning_rate_multiplier": 5}
# What a Hub download takes: configs, tokenizer files and weights, not every other format a repo carries.
HUB_IGNORE = ["*.onnx", "onnx/*", "*.gguf", "*.h5", "*.msgpack", "*.tflite", "*.ot", "*.mlmodel", "*.pth",
              "original/*", "coreml/*", "runs/*"]


class DemoError(Exception):
    """Ends the demo with one line on stderr."""


@dataclass
class DemoModel:
    reference: str  # what the job's `model` is: an absolute directory or a Hugging Face id
    label: str  # how the terminal names it
    roots: list[Path] = field(default_factory=list)  # extra local_model_roots the gateway needs for it
    builtin: bool = False

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(TINY_HYPERPARAMETERS if self.builtin else MODEL_HYPERPARAMETERS)


# ---- the model ------------------------------------------------------------------------------------


def resolve_model(model: str | None, root: Path) -> DemoModel:
    """The model to train: the tiny built-in one, a local directory, or a Hugging Face id (downloaded to
    the Hugging Face cache here, because the training process itself never goes online)."""
    if model is None:
        from tunegate.trainer import build_tiny_model

        with _quiet_transformers():
            built = build_tiny_model(str(root / "models" / "tiny-llama"))
        return DemoModel(built, "tiny-llama (built-in, random weights)", builtin=True)
    path = Path(model).expanduser()
    if path.is_dir():
        return _directory_model(path, model)
    if model.startswith(("/", ".", "~")) or model.endswith(os.sep):
        raise DemoError(f"model '{model}': no such directory")
    from tunegate.localjobs.limits import model_shape_ok

    if not model_shape_ok(model):
        raise DemoError(f"model '{model}' is neither a local directory nor a Hugging Face model id (owner/name)")
    return DemoModel(_hub_snapshot(model), model)


def _directory_model(path: Path, given: str) -> DemoModel:
    real = path.resolve()
    if not (real / "config.json").is_file():
        raise DemoError(f"model '{given}' is a directory but not a Hugging Face model (it has no config.json)")
    if not _has_chat_template(real):
        raise DemoError(f"model '{given}' has no chat template: the demo needs an instruct (chat) model")
    return DemoModel(str(real), str(real), roots=[real])


def _hub_snapshot(model: str) -> str:
    """Download (or find in the cache) ``model``; the Hub id again, which the trainer resolves offline."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with transformers
        raise DemoError("a Hugging Face model needs huggingface_hub: pip install 'tunegate[local]'") from exc
    try:
        folder = snapshot_download(model, ignore_patterns=HUB_IGNORE)
    except RepositoryNotFoundError as exc:
        raise DemoError(f"model '{model}' was not found on the Hugging Face Hub (or it is private/gated)") from exc
    except LocalEntryNotFoundError as exc:
        raise DemoError(f"model '{model}' could not be found: it is not in the local Hugging Face cache and the "
                        "Hub cannot be reached (pass a local directory, or leave --model out for the built-in "
                        "tiny model)") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise DemoError(f"model '{model}' could not be downloaded: {type(exc).__name__}") from exc
    if not _has_chat_template(Path(folder)):
        raise DemoError(f"model '{model}' has no chat template: the demo needs an instruct (chat) model")
    return model


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No 'Writing model shards' bars while the tiny model is saved."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


# ---- talking to the gateway -----------------------------------------------------------------------


class ChatFailed(Exception):
    def __init__(self, status: int | None, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    @property
    def unsupported(self) -> bool:
        """The gateway has no chat serving for ``local`` (an older tunegate, or torch missing there)."""
        return self.code in ("unsupported_operation", "local_serving_unavailable")


class _Client:
    """The few calls the demo makes; the ``openai`` SDK if installed, else urllib."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url
        try:
            import openai
        except ImportError:
            self.sdk: Any = None
        else:
            self.sdk = openai.OpenAI(base_url=base_url, api_key="demo", default_headers=HEADERS, max_retries=2,
                                     timeout=300)

    @property
    def kind(self) -> str:
        return "openai SDK" if self.sdk is not None else "urllib"

    def _request(self, method: str, path: str, body: bytes | None, content_type: str) -> urllib.request.Request:
        return urllib.request.Request(self.base + path, data=body, method=method,
                                      headers={**HEADERS, "Content-Type": content_type})

    def _call(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json") -> Any:
        with urllib.request.urlopen(self._request(method, path, body, content_type),  # noqa: S310 - our loopback
                                    timeout=60) as response:
            return json.loads(response.read())

    def upload(self, path: Path) -> str:
        if self.sdk is not None:
            with open(path, "rb") as fh:
                return str(self.sdk.files.create(file=(path.name, fh), purpose="fine-tune").id)
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
                "Content-Type: application/jsonl\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        return str(self._call("POST", "/files", body, f"multipart/form-data; boundary={boundary}")["id"])

    def create(self, **body: Any) -> dict[str, Any]:
        if self.sdk is not None:
            return dict(self.sdk.fine_tuning.jobs.create(**body).model_dump())
        return dict(self._call("POST", "/fine_tuning/jobs", json.dumps(body).encode()))

    def retrieve(self, job_id: str) -> dict[str, Any]:
        if self.sdk is not None:
            return dict(self.sdk.fine_tuning.jobs.retrieve(job_id).model_dump())
        return dict(self._call("GET", f"/fine_tuning/jobs/{job_id}"))

    def new_events(self, job_id: str, after_seq: int) -> list[dict[str, Any]]:
        """Events newer than ``after_seq``, oldest first (the API lists newest first)."""
        if self.sdk is not None:
            page = [e.model_dump() for e in self.sdk.fine_tuning.jobs.list_events(job_id, limit=100).data]
        else:
            page = self._call("GET", f"/fine_tuning/jobs/{job_id}/events?limit=100")["data"]
        return [e for e in reversed(page) if _seq(e) > after_seq]

    def chat_stream(self, model: str, messages: list[dict[str, str]]) -> Iterator[str]:
        """The answer's text deltas as the gateway streams them (greedy: temperature 0)."""
        body = {"model": model, "messages": messages, "stream": True, "temperature": 0,
                "max_tokens": MAX_ANSWER_TOKENS}
        if self.sdk is not None:
            return self._sdk_stream(body)
        return self._urllib_stream(body)

    def _sdk_stream(self, body: dict[str, Any]) -> Iterator[str]:
        import openai

        try:
            for chunk in self.sdk.chat.completions.create(**body):
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        yield choice.delta.content
        except openai.APIStatusError as exc:
            error = exc.body if isinstance(exc.body, dict) else {}
            raise ChatFailed(exc.status_code, error.get("code"), str(error.get("message") or exc)) from exc
        except openai.APIError as exc:  # an error event inside the stream, or the connection broke
            error = exc.body if isinstance(exc.body, dict) else {}
            raise ChatFailed(None, error.get("code"), str(error.get("message") or exc.message)) from exc

    def _urllib_stream(self, body: dict[str, Any]) -> Iterator[str]:
        request = self._request("POST", "/chat/completions", json.dumps(body).encode(), "application/json")
        try:
            response = urllib.request.urlopen(request, timeout=300)  # noqa: S310 - our loopback gateway
        except urllib.error.HTTPError as exc:
            error = _error_of(exc.read())
            raise ChatFailed(exc.code, error.get("code"), str(error.get("message") or exc.reason)) from exc
        with response:
            for raw in response:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    error = event["error"] if isinstance(event["error"], dict) else {}
                    raise ChatFailed(None, error.get("code"), str(error.get("message")))
                for choice in event.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content


def _seq(event: dict[str, Any]) -> int:
    return int(str(event["id"]).rsplit("-", 1)[-1])


def _error_of(raw: bytes) -> dict[str, Any]:
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _GatewayLog:
    """Sends the gateway's log to a file for as long as the demo's gateway runs: Python logging (the JSON
    request lines, uvicorn's and tunegate's own loggers) through a JSON file handler, and file descriptor 2,
    which the training and serving child processes inherit, onto the same file. The terminal keeps stdout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handler: logging.Handler | None = None
        self.saved_stderr: int | None = None
        self.level = logging.getLogger().level

    def __enter__(self) -> _GatewayLog:
        from tunegate.logs import JsonFormatter

        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        handler = logging.StreamHandler(os.fdopen(os.dup(fd), "a", buffering=1, encoding="utf-8"))
        handler.setFormatter(JsonFormatter())
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        self.handler = handler
        sys.stderr.flush()
        self.saved_stderr = os.dup(2)
        os.dup2(fd, 2)
        os.close(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        if self.saved_stderr is not None:
            os.dup2(self.saved_stderr, 2)
            os.close(self.saved_stderr)
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()
        logging.getLogger().setLevel(self.level)


class _Gateway:
    def __init__(self, data_dir: Path, model_roots: list[Path]) -> None:
        import uvicorn

        from tunegate.app import create_app
        from tunegate.config import Settings

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = Settings(data_dir=data_dir, port=self.port, database_url=None, default_provider=None,
                            local_concurrency=max(1, Settings().local_concurrency),
                            local_model_roots=[data_dir / "models", *model_roots])
        self.app = create_app(settings)
        # log_config=None: uvicorn adds no stderr handlers of its own; its loggers reach the log file.
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="info",
                                                    lifespan="on", access_log=False, log_config=None))
        self.thread = threading.Thread(target=self.server.run, name="tunegate-demo-gateway", daemon=True)

    def __enter__(self) -> _Gateway:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):  # noqa: S310
                    return self
            except OSError:
                time.sleep(0.05)
        raise DemoError("the gateway did not start (see its log)")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


# ---- the demo ---------------------------------------------------------------------------------------


def run_demo(data_dir: Path | None = None, model: str | None = None, prompt: str | None = None,
             console: Console | None = None) -> int:
    """Run the demo; the process exit code (0: the job succeeded and, where the gateway serves it, the
    tuned model answered)."""
    out = console or Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    started = time.monotonic()
    os.environ.setdefault("TUNEGATE_TRAINER_THREADS", str(max(1, min(4, os.cpu_count() or 1))))
    root = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="tunegate-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        err.print("[red]error:[/red] local training needs PyTorch, transformers and peft: "
                  "pip install 'tunegate[local]'", soft_wrap=True)
        return 1
    out.print(f"[bold]tunegate demo[/bold] · data directory {root}")
    try:
        chosen = resolve_model(model, root)
    except DemoError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True, soft_wrap=True)  # one line
        return 1
    out.print(f"model: {chosen.label}")
    log_path = root / LOG_NAME
    try:
        with _GatewayLog(log_path), _Gateway(root, chosen.roots) as gateway:
            code = _train_and_chat(out, _Client(gateway.url + "/v1"), gateway.url, root, chosen,
                                   prompt or DEMO_PROMPT)
    except KeyboardInterrupt:
        out.print("interrupted; the demo's gateway has stopped")
        code = 130
    except DemoError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        code = 1
    out.print(f"gateway log: {log_path}")
    out.print(f"done in {time.monotonic() - started:.1f} s")
    return code


def _train_and_chat(out: Console, client: _Client, url: str, root: Path, chosen: DemoModel, prompt: str) -> int:
    out.print(f"gateway: {url} (the {client.kind}, x-portkey-provider: local)")
    dataset = root / DEMO_DATA.name
    dataset.write_bytes(DEMO_DATA.read_bytes())
    examples = [json.loads(line) for line in dataset.read_text().splitlines() if line.strip()]
    file_id = client.upload(dataset)
    out.print(f"uploaded {dataset.name}: {len(examples)} examples of a quiz bot that answers like a pirate "
              f"(e.g. {examples[1]['messages'][-1]['content']!r}) -> {file_id}")
    job = client.create(model=chosen.reference, training_file=file_id, suffix="demo", seed=42,
                        method={"type": "supervised", "supervised": {"hyperparameters": chosen.hyperparameters}})
    out.print(f"fine-tuning job {job['id']}")
    with TrainingView(out) as view:
        final = _follow(client, job["id"], root, view)
    if final["status"] != "succeeded":
        error = final.get("error") or {}
        out.print(f"[red]the job {final['status']}[/red]: {error.get('code')}: {error.get('message')}")
        return 1
    out.print(summary([
        ("fine-tuned model", str(final["fine_tuned_model"])),
        ("loss", view.loss_summary() or "—"),
        ("trained tokens", str(final.get("trained_tokens"))),
        ("hyperparameters", json.dumps(final.get("hyperparameters"))),
        ("adapter", str(final.get("_adapter_dir") or "—")),
        ("result files", ", ".join(final.get("result_files") or ()) + "  (GET /v1/files/{id}/content)"),
    ]))
    system = examples[0]["messages"][0]
    messages = ([system] if system.get("role") == "system" else []) + [{"role": "user", "content": prompt}]
    return _chat(out, client, str(final["model"]), str(final["fine_tuned_model"]), messages)


def _follow(client: _Client, job_id: str, root: Path, view: TrainingView) -> dict[str, Any]:
    """Poll the job and its events until it ends, feeding the progress view."""
    status, last_seq, adapter_dir = "", 0, None
    while True:
        current = client.retrieve(job_id)
        for event in client.new_events(job_id, last_seq):
            last_seq = _seq(event)
            data = event.get("data") or {}
            if event["type"] == "metrics":
                loss = data.get("train_loss")
                view.step(int(data.get("step") or 0), int(data.get("total_steps") or 0),
                          float(loss) if isinstance(loss, int | float) else None)
            elif event["message"] == "Fine-tuning job started" and data.get("total_steps"):
                hp = data.get("hyperparameters") or {}
                view.started(int(data["total_steps"]), int(hp.get("n_epochs") or 1))
                view.note(f"training: {data['total_steps']} steps, n_epochs={hp.get('n_epochs')}, "
                          f"batch_size={hp.get('batch_size')}, learning_rate={hp.get('learning_rate')}")
            elif data.get("adapter_dir"):  # relative to the data directory
                adapter_dir = str(root / data["adapter_dir"])
            elif event.get("level") in ("warn", "warning", "error"):
                view.note(f"[{event['level']}] {printable(str(event['message']))}")
        if current["status"] != status:
            status = current["status"]
            view.status(status if status != "running" else "training")
        if status in TERMINAL:
            return {**current, "_adapter_dir": adapter_dir}
        time.sleep(0.5)


def _chat(out: Console, client: _Client, base: str, tuned: str, messages: list[dict[str, str]]) -> int:
    out.print()
    out.print("[bold]chat[/bold] · POST /v1/chat/completions, stream, temperature 0 — the same prompt to both")
    columns = [("base model", base), ("fine-tuned model", tuned)]
    failures: list[ChatFailed] = []
    with ChatView(out, messages[-1]["content"], columns) as view:
        for index, model in enumerate((base, tuned)):
            try:
                view.stream(index, client.chat_stream(model, messages))
            except ChatFailed as exc:
                failures.append(exc)
                view.fail(index, f"({exc.status or 'stream'} {exc.code or 'error'}: {exc.message})")
    if any(f.unsupported for f in failures):
        # Training worked; this gateway just has no chat serving for `local` (yet, or not on this host).
        out.print("[yellow]The model is trained, but this gateway cannot chat with local models "
                  "(POST /v1/chat/completions answered 'unsupported'). Load the adapter above with PEFT "
                  "meanwhile.[/yellow]")
        return 0
    return 1 if failures else 0
