"""``tunegate demo``: a real fine-tuning job on this machine, through the gateway's own HTTP API.

Starts the gateway in this process (embedded defaults, a free port, a data directory), builds a tiny
random model there, uploads a small dataset shipped with tunegate and trains it with the ``local``
provider — with the official ``openai`` SDK when it is installed, else plain ``urllib``. Prints the
status and loss as it goes and ends with the fine-tuned model's name and where its adapter is.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEMO_DATA = Path(__file__).with_name("demo_data.jsonl")
HEADERS = {"x-portkey-provider": "local"}
TERMINAL = ("succeeded", "failed", "cancelled")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Client:
    """The few calls the demo makes; the ``openai`` SDK if installed, else urllib."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url
        try:
            import openai
        except ImportError:
            self.sdk: Any = None
        else:
            self.sdk = openai.OpenAI(base_url=base_url, api_key="demo", default_headers=HEADERS, max_retries=2)

    @property
    def kind(self) -> str:
        return "openai SDK" if self.sdk is not None else "urllib"

    def _call(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json") -> Any:
        request = urllib.request.Request(self.base + path, data=body, method=method,
                                         headers={**HEADERS, "Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - our own loopback gateway
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
        return [e for e in reversed(page) if int(e["id"].rsplit("-", 1)[-1]) > after_seq]


class _Gateway:
    def __init__(self, data_dir: Path) -> None:
        import uvicorn

        from tunegate.app import create_app
        from tunegate.config import Settings

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = Settings(data_dir=data_dir, port=self.port, database_url=None, default_provider=None,
                            local_concurrency=max(1, Settings().local_concurrency),
                            local_model_roots=[data_dir / "models"])  # where the demo builds its model
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on", access_log=False))
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
        raise RuntimeError("the gateway did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def run_demo(data_dir: Path | None = None, out: Callable[[str], None] = print) -> int:
    """Run the demo; the process exit code (0: the job succeeded)."""
    started = time.monotonic()
    os.environ.setdefault("TUNEGATE_TRAINER_THREADS", str(max(1, min(4, os.cpu_count() or 1))))
    root = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="tunegate-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    out(f"tunegate demo: data directory {root}")
    try:
        from tunegate.trainer import build_tiny_model
    except ImportError as exc:  # pragma: no cover - the package is part of tunegate
        out(f"error: {exc}")
        return 1
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        out("error: local training needs PyTorch, transformers and peft: pip install 'tunegate[local]'")
        return 1
    t = time.monotonic()
    model_dir = build_tiny_model(str(root / "models" / "tiny-llama"))
    out(f"built a tiny random model in {time.monotonic() - t:.1f} s: {model_dir}")
    dataset = root / "demo_data.jsonl"
    dataset.write_bytes(DEMO_DATA.read_bytes())

    with _Gateway(root) as gateway:
        client = _Client(gateway.url + "/v1")
        out(f"gateway listening on {gateway.url} (talking to it with the {client.kind})")
        file_id = client.upload(dataset)
        n_examples = sum(1 for line in dataset.read_text().splitlines() if line.strip())
        out(f"uploaded {dataset.name} ({n_examples} examples) with x-portkey-provider: local -> {file_id}")
        job = client.create(model=model_dir, training_file=file_id, suffix="demo", seed=42,
                            method={"type": "supervised", "supervised": {"hyperparameters": {
                                "n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": 10}}})
        out(f"created fine-tuning job {job['id']}: {job['status']}")
        status, last_seq, every, adapter_dir = job["status"], 0, 1, None
        while True:
            current = client.retrieve(job["id"])
            for event in client.new_events(job["id"], last_seq):
                last_seq = int(event["id"].rsplit("-", 1)[-1])
                data = event.get("data") or {}
                if event["type"] == "metrics":
                    step, total = data.get("step", 0), data.get("total_steps", 0)
                    if step == 1 or step == total or step % every == 0:
                        out(f"  {event['message']}")
                else:
                    if event["message"] == "Fine-tuning job started" and data.get("total_steps"):
                        every = max(1, int(data["total_steps"]) // 10)
                        hp = data.get("hyperparameters") or {}
                        out(f"  Fine-tuning job started: {data['total_steps']} steps, n_epochs={hp.get('n_epochs')}, "
                            f"batch_size={hp.get('batch_size')}, learning_rate={hp.get('learning_rate')}")
                        continue
                    if data.get("adapter_dir"):  # relative to the data directory
                        adapter_dir = str(root / data["adapter_dir"])
                    out(f"  [{event['level']}] {event['message']}")
            if current["status"] != status:
                status = current["status"]
                out(f"status: {status}")
            if status in TERMINAL:
                break
            time.sleep(0.5)

    if status != "succeeded":
        error = current.get("error") or {}
        out(f"the job {status}: {error.get('code')}: {error.get('message')}")
        return 1
    out("")
    out(f"fine-tuned model: {current['fine_tuned_model']}")
    out(f"trained tokens:   {current['trained_tokens']}")
    out(f"hyperparameters:  {json.dumps(current['hyperparameters'])}")
    out(f"adapter:          {adapter_dir}")
    out(f"result files:     {', '.join(current['result_files'])} (GET /v1/files/{{id}}/content)")
    out("load it with PEFT:")
    out(f"  PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({model_dir!r}), {adapter_dir!r})")
    out(f"done in {time.monotonic() - started:.1f} s")
    return 0
