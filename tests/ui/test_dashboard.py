"""The dashboard end to end in headless Chromium (Debian's ``chromium``, driven by Playwright).
Skipped when either is missing. Saves ``artifacts/dashboard.png``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import requests

from tests.ui.conftest import EXAMPLES, Env
from tests.ui.standin import TOTAL_STEPS, VALID_EVERY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def make_jobs(env: Env) -> tuple[str, str, str]:
    s = requests.Session()
    s.headers.update({"Authorization": f"Bearer {env.key}", "x-portkey-provider": "openai"})
    file_id = s.post(env.gateway.url + "/v1/files", files={"file": ("train.jsonl", EXAMPLES)},
                     data={"purpose": "fine-tune"}).json()["id"]
    done = s.post(env.gateway.url + "/v1/fine_tuning/jobs", json={
        "model": "gpt-4o-mini-2024-07-18", "training_file": file_id, "suffix": "ui",
        "hyperparameters": {"n_epochs": 3}}).json()["id"]
    for _ in range(3):  # the stand-in advances one status per retrieve
        s.get(env.gateway.url + f"/v1/fine_tuning/jobs/{done}")
    stopped = s.post(env.gateway.url + "/v1/fine_tuning/jobs", json={
        "model": "gpt-4.1-mini", "training_file": file_id}).json()["id"]
    s.post(env.gateway.url + f"/v1/fine_tuning/jobs/{stopped}/cancel")
    return file_id, done, stopped


def test_dashboard_requires_a_key_and_sets_an_httponly_cookie(env: Env) -> None:
    url = env.gateway.url
    r = requests.get(url + "/ui/jobs", allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    r = requests.get(url + f"/ui/jobs?key={env.key}&status=running", allow_redirects=False)
    assert r.status_code == 400 and "set-cookie" not in r.headers  # a key in a link logs nobody in
    r = requests.post(url + "/ui/login", data={"key": env.key, "next": "/ui/jobs?status=running"},
                      allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/jobs?status=running"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/ui" in cookie
    assert env.key not in cookie and env.key.split(".", 1)[-1] not in cookie  # sealed, never the raw key
    session = requests.Session()
    assert session.post(url + "/ui/login", data={"key": env.key, "next": "/ui/files"},
                        allow_redirects=False).status_code == 303
    page = session.get(url + "/ui/files")
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    assert requests.get(url + "/ui/api/jobs").status_code == 401
    assert requests.get(url + "/ui/api/jobs", headers={"Authorization": f"Bearer {env.key}"}).status_code == 200
    # A revoked key loses the dashboard (another key remains, so the gateway stays closed).
    env.gateway.with_store(lambda store: store.create_key("other", ["*"]))
    env.gateway.with_store(lambda store: store.revoke_key(env.key_id))
    time.sleep(1.1)
    assert session.get(url + "/ui/files", allow_redirects=False).status_code == 303


def test_dashboard_in_chromium(env: Env) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    file_id, done, stopped = make_jobs(env)
    url = env.gateway.url
    ARTIFACTS.mkdir(exist_ok=True)
    foreign: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            page = context.new_page()
            page.on("request", lambda req: foreign.append(req.url) if not req.url.startswith(url) else None)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            page.goto(url + "/ui/jobs")
            assert "/ui/login" in page.url
            page.fill("input[name=key]", env.key)
            page.click("button[type=submit]")
            page.wait_for_url(url + "/ui/jobs")
            rows = page.locator("#jobs tr.job")
            assert rows.count() == 2
            assert {rows.nth(i).get_attribute("data-id") for i in range(2)} == {done, stopped}
            assert page.locator(f'tr.job[data-id="{done}"] .status').inner_text() == "succeeded"
            cookies = {c["name"]: c for c in context.cookies()}
            assert cookies["tunegate_ui"]["httpOnly"] is True

            page.select_option("select[name=status]", "cancelled")
            page.click(".filters button[type=submit]")
            page.wait_for_url("**/ui/jobs?*status=cancelled*")
            assert [page.locator("#jobs tr.job").nth(0).get_attribute("data-id")] == [stopped]
            assert page.locator("#jobs tr.job").count() == 1
            page.fill("input[name=model]", "4o-mini")
            page.select_option("select[name=status]", "")
            page.click(".filters button[type=submit]")
            page.wait_for_load_state()
            assert page.locator("#jobs tr.job").count() == 1

            page.goto(url + "/ui/jobs")
            page.screenshot(path=str(ARTIFACTS / "dashboard-jobs.png"), full_page=True)
            page.click(f'a[href="/ui/jobs/{done}"]')
            page.wait_for_selector("#loss-chart svg")
            assert page.locator("#loss-chart circle.point.train").count() == TOTAL_STEPS
            assert page.locator("#loss-chart circle.point.valid").count() == TOTAL_STEPS // VALID_EVERY
            assert page.locator("#loss-chart svg").get_attribute("data-points") == str(
                TOTAL_STEPS + TOTAL_STEPS // VALID_EVERY)
            steps = page.locator("#loss-chart circle.point.train").evaluate_all(
                "els => els.map(e => Number(e.dataset.step))")
            assert steps == list(range(1, TOTAL_STEPS + 1))
            assert "n_epochs" in page.locator("#hyperparameters").inner_text()
            assert page.locator("#checkpoints tbody tr").count() == 1
            assert "Fine-tuning job started" in page.locator("#events").inner_text()
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            page.goto(url + "/ui/files")
            assert page.locator(f'tr.file[data-id="{file_id}"]').count() == 1
            page.click(f'tr.file[data-id="{file_id}"] a:has-text("validate")')
            page.wait_for_selector("#report-summary")
            assert "valid" in page.locator("#report-summary").inner_text()
            assert "12 example(s)" in page.locator("#report-summary").inner_text()
            page.goto(url + "/ui/files")
            assert "0 error(s)" in page.locator(f'tr.file[data-id="{file_id}"]').inner_text()
            assert not errors, errors
        finally:
            browser.close()
    assert not foreign, foreign  # everything (script, styles) is served by the gateway: works offline
