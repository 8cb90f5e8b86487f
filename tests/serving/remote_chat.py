"""The OpenAI-shaped remote backends for the chat tests: each stand-in on a real socket, the headers a
client sends for it, and what chat and a tuned model look like there."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import openai

from tests.gateway import Gateway
from tests.standins.fireworks import FireworksStandIn
from tests.standins.mistral import MistralStandIn
from tests.standins.openai_like import ChatScript, ServerThread, StandIn
from tests.standins.together import TogetherStandIn

BACKENDS = ("openai", "azure-ga", "azure-v1", "together", "mistral", "fireworks")
NO_RETRY = json.dumps({"retry": {"attempts": 0}})
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
TRAINING = b"".join(
    json.dumps({"messages": [{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": f"Say {i}"},
                             {"role": "assistant", "content": f"{i}"}]}).encode() + b"\n"
    for i in range(12))
AZURE_DEPLOYMENT = "chat-deploy"
FW_ACCOUNT = "acme-ai"
FW_DEPLOYMENT = "accounts/acme-ai/deployments/base-llama"


@dataclass
class Backend:
    name: str
    provider: str
    standin: Any
    url: str  # the stand-in's root
    host: str  # what x-portkey-custom-host (or a connection's base_url) names
    key: str
    model: str  # a model every key may call
    base_model: str  # what a fine-tuning job starts from
    chat_path: str  # the upstream path chat goes to (for the default model)
    options: dict[str, str] = field(default_factory=dict)  # provider options (x-portkey-… headers)
    after_tuned: Callable[[Backend, Gateway, str, dict[str, str]], None] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"x-portkey-provider": self.provider, "x-portkey-custom-host": self.host,
                **{"x-portkey-" + k.replace("_", "-"): v for k, v in self.options.items()}}

    def client(self, gw: Gateway, **headers: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=gw.url + "/v1", api_key=self.key, max_retries=0,
                             default_headers={**self.headers, **headers})

    def async_client(self, gw: Gateway, **headers: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=self.key, max_retries=0,
                                  default_headers={**self.headers, **headers})

    def chat_requests(self) -> list[Any]:
        return [r for r in self.standin.requests if r.path.endswith("/chat/completions")]

    def sent_body(self) -> dict[str, Any]:
        (last,) = self.chat_requests()[-1:]
        return dict(json.loads(last.body))

    def reset(self) -> None:
        self.standin.requests.clear()
        self.standin.faults.clear()
        self.standin.chat = ChatScript()


def _azure_deploy(backend: Backend, gw: Gateway, tuned: str, headers: dict[str, str]) -> None:
    backend.standin.deployments["tuned-deploy"] = tuned  # deployed in the portal, out of band


def _fireworks_deploy(backend: Backend, gw: Gateway, tuned: str, headers: dict[str, str]) -> None:
    import requests

    resp = requests.post(f"{gw.url}/v1/models/{tuned}/deploy", json={"deployment": FW_DEPLOYMENT}, headers=headers,
                         timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["deployment_status"] == "deploying"
    resp = requests.get(f"{gw.url}/v1/models/{tuned}", headers=headers, timeout=30)  # the stand-in comes up
    assert resp.status_code == 200, resp.text


@contextmanager
def backend(name: str) -> Iterator[Backend]:
    if name == "openai":
        s: Any = StandIn()
    elif name.startswith("azure"):
        s = StandIn(mode=name)
        s.deployments[AZURE_DEPLOYMENT] = "gpt-4o-mini"
    elif name == "together":
        s = TogetherStandIn()
    elif name == "mistral":
        s = MistralStandIn()
    else:
        s = FireworksStandIn(account=FW_ACCOUNT)
    with ServerThread(s.app()) as server:
        s.url = server.url
        yield _describe(name, s, server.url)


def _describe(name: str, s: Any, url: str) -> Backend:
    if name == "openai":
        return Backend(name, "openai", s, url, url, s.api_key, "gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18",
                       "/chat/completions")
    if name == "azure-ga":
        return Backend(name, "azure-openai", s, url, url + "/openai", s.api_key, "gpt-4o-mini", "gpt-4o-mini",
                       f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions",
                       {"azure_deployment_id": AZURE_DEPLOYMENT}, _azure_deploy)
    if name == "azure-v1":
        return Backend(name, "azure-openai", s, url, url + "/openai/v1", s.api_key, "gpt-4o-mini", "gpt-4o-mini",
                       "/openai/v1/chat/completions",
                       {"azure_deployment_id": AZURE_DEPLOYMENT, "azure_api_version": "v1"}, _azure_deploy)
    if name == "together":
        return Backend(name, "together-ai", s, url, url + "/v1", s.api_key, s.base_models[0],
                       "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", "/v1/chat/completions")
    if name == "mistral":
        return Backend(name, "mistral-ai", s, url, url + "/v1", s.api_key, "open-mistral-7b", "open-mistral-7b",
                       "/v1/chat/completions")
    return Backend(name, "fireworks-ai", s, url, url + "/v1", s.api_key, s.serverless[0], "qwen3-8b",
                   "/inference/v1/chat/completions", {"fireworks_account_id": FW_ACCOUNT},
                   _fireworks_deploy)


def train(client: openai.OpenAI, base_model: str) -> Any:
    """A job created through tunegate, polled until it succeeds; the finished job."""
    f = client.files.create(file=("train.jsonl", io.BytesIO(TRAINING)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=f.id, model=base_model)
    for _ in range(30):
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
    assert job.status == "succeeded", job
    assert job.fine_tuned_model
    return job


def stream_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
