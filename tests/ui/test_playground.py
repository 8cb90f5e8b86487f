"""The job page's playground: one prompt, the base and the tuned model's answers side by side, streamed
through ``/ui/api/chat/completions`` (the chat route under the dashboard's login) from the OpenAI
stand-in. Over real sockets with ``requests``, and in headless Chromium (skipped without it); saves
``artifacts/playground.png``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from tests.gateway import Gateway
from tests.standins.openai_like import ChatScript, ServerThread, chat_reply
from tests.ui.conftest import EXAMPLES, Env
from tests.ui.standin import MetricsStandIn

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
BASE_REPLY = "The capital of France is Paris, a city on the Seine."
TUNED_REPLY = "Arr matey, Paris!"
CHAT = "/ui/api/chat/completions"


class PlaygroundStandIn(MetricsStandIn):
    """The OpenAI stand-in whose base and tuned models say different things (its chat wire is the shared
    one of tests/standins/openai_like.py: openai-python's chat_completion_chunk shapes, ``data: [DONE]``)."""

    gap = 0.25  # seconds between chunks: slow enough for the page to show a half-written answer

    def __init__(self) -> None:
        super().__init__()
        self.chat_requests: list[dict[str, Any]] = []

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model"))
        self.chat_requests.append({"model": model, "authorization": request.headers.get("Authorization"),
                                   "body": body})
        tuned = model in self.tuned_models()
        if not tuned and model not in self.base_models:
            return self.error(404, f"The model `{model}` does not exist or you do not have access to it.",
                              "model_not_found")
        script = ChatScript(reply=TUNED_REPLY if tuned else BASE_REPLY, gap=self.gap)
        return await chat_reply(request, self.chat_dialect(), script, model)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A gateway with one tunegate key and a stored OpenAI connection to the playground stand-in."""
    standin = PlaygroundStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        async def setup(store):  # type: ignore[no-untyped-def]
            await store.add_connection("oa", "openai", {"api_key": standin.api_key}, base_url=upstream.url)
            key, full = await store.create_key("ci", ["*"])
            return key.id, full

        key_id, full = gw.with_store(setup)
        yield Env(gw, standin, full, key_id, tmp_path)


def make_jobs(env: Env) -> tuple[dict[str, Any], str]:
    """A succeeded job (its tuned model) and a cancelled one."""
    s = requests.Session()
    s.headers.update({"Authorization": f"Bearer {env.key}", "x-portkey-provider": "openai"})
    file_id = s.post(env.gateway.url + "/v1/files", files={"file": ("train.jsonl", EXAMPLES)},
                     data={"purpose": "fine-tune"}, timeout=30).json()["id"]
    done = s.post(env.gateway.url + "/v1/fine_tuning/jobs", json={
        "model": "gpt-4o-mini-2024-07-18", "training_file": file_id, "suffix": "pg"}, timeout=30).json()["id"]
    for _ in range(3):  # the stand-in advances one status per retrieve
        job = s.get(env.gateway.url + f"/v1/fine_tuning/jobs/{done}", timeout=30).json()
    assert job["status"] == "succeeded" and job["fine_tuned_model"]
    stopped = s.post(env.gateway.url + "/v1/fine_tuning/jobs", json={
        "model": "gpt-4o-mini-2024-07-18", "training_file": file_id}, timeout=30).json()["id"]
    s.post(env.gateway.url + f"/v1/fine_tuning/jobs/{stopped}/cancel", timeout=30)
    return job, stopped


def logged_in(env: Env) -> requests.Session:
    session = requests.Session()
    r = session.post(env.gateway.url + "/ui/login", data={"key": env.key, "next": "/ui/jobs"},
                     allow_redirects=False, timeout=30)
    assert r.status_code == 303
    return session


def sse_text(response: requests.Response) -> tuple[str, list[dict[str, Any]]]:
    """The streamed answer's content and its chunks, read as the events arrive."""
    chunks = []
    for line in response.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            chunks.append(json.loads(line[6:]))
    text = "".join(c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"])
    return text, chunks


def chat_body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Capital of France?"}], "stream": True,
            "temperature": 0, "max_tokens": 64}


def test_playground_shown_only_for_a_succeeded_job(env: Env) -> None:
    job, stopped = make_jobs(env)
    session = logged_in(env)
    page = session.get(env.gateway.url + f"/ui/jobs/{job['id']}", timeout=30).text
    assert 'id="playground"' in page and "/ui/static/playground.js" in page
    assert f'data-tuned="{job["fine_tuned_model"]}"' in page and 'data-base="gpt-4o-mini-2024-07-18"' in page
    assert 'data-provider="openai"' in page and 'data-connection="oa"' in page
    other = session.get(env.gateway.url + f"/ui/jobs/{stopped}", timeout=30).text
    assert 'id="playground"' not in other and "playground.js" not in other


def test_playground_chat_streams_under_the_dashboard_login(env: Env) -> None:
    env.standin.gap = 0.0
    job, _ = make_jobs(env)
    session = logged_in(env)
    headers = {"x-portkey-provider": "openai", "x-portkey-virtual-key": "oa", "Sec-Fetch-Site": "same-origin"}
    answers = {}
    for model in ("gpt-4o-mini-2024-07-18", job["fine_tuned_model"]):
        with session.post(env.gateway.url + CHAT, json=chat_body(model), headers=headers, stream=True,
                          timeout=30) as r:
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("text/event-stream")
            answers[model], chunks = sse_text(r)
            assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert answers == {"gpt-4o-mini-2024-07-18": BASE_REPLY, job["fine_tuned_model"]: TUNED_REPLY}
    # The stand-in heard the connection's key, never the tunegate key or the dashboard's cookie.
    assert {r["authorization"] for r in env.standin.chat_requests} == {f"Bearer {env.standin.api_key}"}
    # The same cookie is no credential for the API itself: it is scoped to /ui and the API reads no cookie.
    r = requests.post(env.gateway.url + "/v1/chat/completions", json=chat_body(job["fine_tuned_model"]),
                      cookies={"tunegate_ui": session.cookies["tunegate_ui"]}, timeout=30)
    assert r.status_code == 401


def test_playground_chat_refusals(env: Env) -> None:
    job, _ = make_jobs(env)
    url = env.gateway.url + CHAT
    body = chat_body(job["fine_tuned_model"])
    r = requests.post(url, json=body, headers={"x-portkey-provider": "openai"}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    session = logged_in(env)
    r = session.post(url, json=body, headers={"Sec-Fetch-Site": "cross-site"}, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_request"
    r = session.post(url, json=body, headers={"Origin": "http://evil.example"}, timeout=30)
    assert r.status_code == 403
    # A form post (what another site could send without a preflight) is not JSON: refused unread.
    r = session.post(url, data={"model": job["fine_tuned_model"]}, timeout=30)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    # The chat route's own checks still apply: a client error is a 400 in OpenAI's shape.
    r = session.post(url, json={"model": job["fine_tuned_model"], "messages": "hi"}, timeout=30)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert env.standin.chat_requests == []  # none of these reached the provider


def test_playground_is_bound_to_the_viewers_key(env: Env) -> None:
    """Another key's session cannot reach this key's tuned model through the playground."""
    job, _ = make_jobs(env)
    _, other = env.gateway.with_store(lambda store: store.create_key("other", ["*"]))
    session = requests.Session()
    assert session.post(env.gateway.url + "/ui/login", data={"key": other, "next": "/ui/jobs"},
                        allow_redirects=False, timeout=30).status_code == 303
    r = session.post(env.gateway.url + CHAT, json=chat_body(job["fine_tuned_model"]), timeout=30)
    assert r.status_code == 404, r.text
    assert env.standin.chat_requests == []


def test_playground_in_chromium(env: Env) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    job, _ = make_jobs(env)
    url = env.gateway.url
    ARTIFACTS.mkdir(exist_ok=True)
    foreign: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.on("request", lambda req: foreign.append(req.url) if not req.url.startswith(url) else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + f"/ui/jobs/{job['id']}")
            page.fill("input[name=key]", env.key)
            page.click("button[type=submit]")
            page.wait_for_selector("#playground")
            page.fill("#pg-prompt", "Capital of France?")
            page.click("#pg-send")
            # Streamed: a half-written answer is on the page while its stream is still open.
            page.wait_for_function("""() => { const o = document.getElementById('pg-tuned');
                return o.dataset.state === 'streaming' && o.textContent.length > 0; }""", timeout=15000)
            partial = page.locator("#pg-tuned").inner_text()
            assert partial and TUNED_REPLY.startswith(partial) and partial != TUNED_REPLY
            page.wait_for_function("""() => ['pg-base', 'pg-tuned'].every(
                id => document.getElementById(id).dataset.state === 'done')""", timeout=30000)
            assert page.locator("#pg-base").inner_text() == BASE_REPLY
            assert page.locator("#pg-tuned").inner_text() == TUNED_REPLY
            assert page.locator("#pg-send").is_enabled()
            page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
            # Both went out at once, each with the job's provider and connection, temperature 0.
            assert sorted(r["model"] for r in env.standin.chat_requests) == sorted(
                ["gpt-4o-mini-2024-07-18", job["fine_tuned_model"]])
            assert all(r["body"]["stream"] is True and r["body"]["temperature"] == 0
                       for r in env.standin.chat_requests)

            # An error answer shows in its pane, in words, not as a broken page.
            env.standin.base_models = ()
            page.click("#pg-send")
            page.wait_for_function("""() => document.getElementById('pg-base').dataset.state === 'error'
                && document.getElementById('pg-tuned').dataset.state === 'done'""", timeout=30000)
            assert "404" in page.locator("#pg-base .pg-error").inner_text()
            assert not errors, errors
        finally:
            browser.close()
    assert not foreign, foreign  # the script is the gateway's own: works offline
