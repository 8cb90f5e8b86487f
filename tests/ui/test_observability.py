"""/metrics (scraped and parsed with prometheus_client's parser), the JSON request log, trace-id
propagation and OpenTelemetry spans."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import create_async_engine

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, free_port
from tests.ui.conftest import EXAMPLES, Env
from tests.ui.standin import MetricsStandIn
from tunegate import logs, metrics, tracing


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(found: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return sum(v for (n, ls), v in found.items() if n == name and set(labels.items()) <= set(ls))


def api(env: Env) -> requests.Session:
    s = requests.Session()
    s.headers.update({"Authorization": f"Bearer {env.key}", "x-portkey-provider": "openai"})
    return s


def test_metrics_count_requests_uploads_retries_errors_and_jobs(env: Env) -> None:
    s = api(env)
    before = samples(s.get(env.gateway.url + "/metrics").text)  # a keyed gateway's metrics need a key
    uploaded = s.post(env.gateway.url + "/v1/files", files={"file": ("t.jsonl", EXAMPLES)},
                      data={"purpose": "fine-tune"}).json()
    job = s.post(env.gateway.url + "/v1/fine_tuning/jobs",
                 json={"model": "gpt-4o-mini", "training_file": uploaded["id"]}).json()
    env.standin.faults["/fine_tuning/jobs/"] = [503]  # one retry, then success
    assert s.get(env.gateway.url + f"/v1/fine_tuning/jobs/{job['id']}").status_code == 200
    env.standin.faults["/fine_tuning/jobs/"] = [503, 503, 503]  # retries exhausted: an upstream error
    assert s.get(env.gateway.url + f"/v1/fine_tuning/jobs/{job['id']}").status_code == 503
    assert s.get(env.gateway.url + "/v1/fine_tuning/jobs/nope").status_code == 404

    text = s.get(env.gateway.url + "/metrics").text
    after = samples(text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("tunegate_requests_total", provider="openai", operation="upload_file", status="200") == 1
    assert delta("tunegate_requests_total", provider="openai", operation="retrieve_job", status="200") == 1
    assert delta("tunegate_requests_total", provider="openai", operation="retrieve_job", status="503") == 1
    assert delta("tunegate_requests_total", provider="openai", operation="retrieve_job", status="404") == 1
    assert delta("tunegate_request_duration_seconds_count", provider="openai", operation="retrieve_job") == 3
    assert delta("tunegate_upstream_retries_total", provider="openai", operation="retrieve_job") == 3
    assert delta("tunegate_upstream_attempts_total", provider="openai", operation="retrieve_job") == 6  # 2 + 3 + 1
    assert delta("tunegate_upstream_errors_total", provider="openai", operation="retrieve_job", reason="503") == 1
    # The multipart body: the file plus the form's framing.
    assert len(EXAMPLES) < delta("tunegate_uploaded_bytes_total", provider="openai") < len(EXAMPLES) + 1024
    # Jobs by status come from the registry: the job was last seen `queued`.
    time.sleep(metrics._CACHE_SECONDS + 0.1)
    after = samples(s.get(env.gateway.url + "/metrics").text)
    assert value(after, "tunegate_jobs", provider="openai", status="queued") == 1
    assert "# TYPE tunegate_request_duration_seconds histogram" in text


async def test_local_queue_depth_is_read_defensively() -> None:
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    async with engine.begin() as conn:
        assert await metrics._local_jobs(conn) is None  # no table: no gauge
        await conn.execute(sa.text("CREATE TABLE local_jobs (id TEXT, other TEXT)"))
        assert await metrics._local_jobs(conn) is None  # no status column: no gauge
        await conn.execute(sa.text("DROP TABLE local_jobs"))
        await conn.execute(sa.text("CREATE TABLE local_jobs (id TEXT, status TEXT)"))
        await conn.execute(sa.text("INSERT INTO local_jobs VALUES ('a', 'queued'), ('b', 'queued'), "
                                   "('c', 'running'), ('d', 'succeeded')"))
        counts = await metrics._local_jobs(conn)
    await engine.dispose()
    assert sorted(counts or []) == [("queued", 2), ("running", 1), ("succeeded", 1)]
    text = metrics.generate_latest(metrics._registry_of(metrics._Snapshot([], counts))).decode()
    assert value(samples(text), "tunegate_local_queue_depth") == 2


def test_json_request_lines_carry_the_request_id_and_no_secret(env: Env) -> None:
    captured: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(self.format(record))

    handler = Capture()
    handler.setFormatter(logs.JsonFormatter())
    logs.request_log.addHandler(handler)
    logs.request_log.setLevel(logging.INFO)
    try:
        s = api(env)
        s.post(env.gateway.url + "/v1/files", files={"file": ("t.jsonl", EXAMPLES)}, data={"purpose": "fine-tune"},
               headers={"x-portkey-trace-id": "my-trace-1"})
        parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        echoed = s.get(env.gateway.url + "/v1/files?limit=5", headers={"traceparent": parent})
        assert echoed.headers["x-portkey-trace-id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        requests.get(env.gateway.url + f"/ui/jobs?key={env.key}", allow_redirects=False)
    finally:
        logs.request_log.removeHandler(handler)
    lines = [json.loads(line) for line in captured]  # every line is one JSON object
    by_path = {(line["method"], line["path"]): line for line in lines}
    upload = by_path[("POST", "/v1/files")]
    assert upload["request_id"] == "my-trace-1" and upload["status"] == 200 and upload["provider"] == "openai"
    assert upload["operation"] == "upload_file" and upload["key_id"] == env.key_id and upload["latency_ms"] > 0
    assert upload["upstream_status"] == 200 and upload["level"] == "info"
    assert by_path[("GET", "/v1/files")]["request_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    everything = "\n".join(captured)
    secret_part = env.key.split(".", 1)[-1]
    for secret in (env.standin.api_key, env.key, secret_part, "limit=5", "key="):
        assert secret not in everything


def test_tracing_spans_for_requests_and_upstream_calls(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk")
    pytest.importorskip("opentelemetry.instrumentation.aiohttp_client")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    assert tracing.setup(exporter=exporter)
    try:
        standin = MetricsStandIn()
        with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
            headers = {"Authorization": f"Bearer {standin.api_key}", "x-portkey-provider": "openai",
                       "x-portkey-custom-host": upstream.url}
            trace_id = "0af7651916cd43dd8448eb211c80319c"
            r = requests.get(gw.url + "/v1/files?purpose=fine-tune", headers={**headers, "x-portkey-trace-id": trace_id})
            assert r.status_code == 200
            parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            r = requests.get(gw.url + "/v1/fine_tuning/jobs", headers={**headers, "traceparent": parent})
            assert r.status_code == 200 and r.headers["x-portkey-trace-id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
            time.sleep(0.2)
        spans = exporter.get_finished_spans()
    finally:
        tracing.shutdown()
    server = [sp for sp in spans if sp.kind.name == "SERVER" and sp.attributes.get("url.path") != "/healthz"]
    client = [sp for sp in spans if sp.kind.name == "CLIENT"]
    first = next(sp for sp in server if sp.name == "GET list_files")
    assert format(first.context.trace_id, "032x") == trace_id and first.parent is None
    assert first.attributes["tunegate.provider"] == "openai" and first.attributes["http.response.status_code"] == 200
    upstream_span = next(sp for sp in client if sp.context.trace_id == first.context.trace_id)
    assert upstream_span.parent.span_id == first.context.span_id
    assert "purpose" not in str(upstream_span.attributes.get("url.full", upstream_span.attributes.get("http.url")))
    second = next(sp for sp in server if sp.name == "GET list_jobs")
    assert format(second.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert format(second.parent.span_id, "016x") == "00f067aa0ba902b7"


def test_tracing_is_off_and_not_imported_without_an_endpoint() -> None:
    code = ("import sys, os; os.environ.pop('TUNEGATE_OTLP_ENDPOINT', None); "
            "from tunegate.app import create_app; from tunegate import tracing; "
            "assert tracing.setup() is False and not tracing.enabled(); "
            "print(any(m.startswith('opentelemetry') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_serve_with_workers_merges_metrics_and_logs_json(tmp_path: Path) -> None:
    port = free_port()
    environ = {**os.environ, "TUNEGATE_DATA_DIR": str(tmp_path / "data"), "PROMETHEUS_MULTIPROC_DIR": "",
               "TUNEGATE_SECRET_KEY": "x7WwR7Sxrz3f8k6m1m1q9W7Q0a3hYtJg0b8p3S2qv5E="}
    environ.pop("PROMETHEUS_MULTIPROC_DIR")
    proc = subprocess.Popen([sys.executable, "-m", "tunegate", "serve", "--workers", "2", "--port", str(port)],
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            pytest.fail("the gateway did not start")
        for _ in range(30):
            requests.get(url + "/healthz", headers={"Connection": "close"})
        totals = set()
        for _ in range(6):
            found = samples(requests.get(url + "/metrics", headers={"Connection": "close"}).text)
            totals.add(value(found, "tunegate_requests_total", operation="healthz", status="200"))
        assert totals == {30.0}  # whichever worker answers, it reports every worker's requests
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert len(lines) >= 30 and all(line["level"] for line in lines)
    assert len({line["request_id"] for line in lines if line["logger"] == "tunegate.request"}) >= 30
    assert not [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")], stderr[:2000]
    assert len({line.get("process") for line in lines}) >= 1
    assert re.search(r'"path":"/healthz"', stderr)
