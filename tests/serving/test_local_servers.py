"""The gateway's side of local serving: the vLLM launch (command line, environment, runtime LoRA loading)
against a stand-in that answers as vLLM's source does, and one model server shared by two gateway
instances on one data directory."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gateway import Gateway
from tests.serving.local_helpers import LOCAL, build_model, server_state
from tunegate.config import LocalServing
from tunegate.serving.local.manager import vllm_command

openai = pytest.importorskip("openai")
STANDIN = Path(__file__).resolve().parents[1] / "standins" / "vllm_server.py"
HI = [{"role": "user", "content": "hi"}]


def test_vllm_command_line() -> None:
    conf = LocalServing(engine="vllm", max_loras=3, vllm_max_lora_rank=16, vllm_tensor_parallel_size=2,
                        vllm_args=["--dtype", "bfloat16"])
    assert vllm_command(conf, "Qwen/Qwen2.5-0.5B-Instruct", 8123) == [
        "vllm", "serve", "Qwen/Qwen2.5-0.5B-Instruct", "--host", "127.0.0.1", "--port", "8123", "--enable-lora",
        "--max-loras", "3", "--max-lora-rank", "16", "--tensor-parallel-size", "2", "--dtype", "bfloat16"]


def _succeeded_job(gw: Gateway, base: str, adapter_root: Path) -> str:
    """A finished local job as the scheduler leaves it (row + adapter directory), without training."""
    job_id = "ftjob-0000000000aa" + "bb" * 6
    adapter = adapter_root / "local" / "jobs" / job_id / "run-1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": 8}))
    name = f"ft:{Path(base).name}:v:{job_id}"

    async def insert(store: Any) -> None:
        from tunegate.localjobs.db import JobDB

        now = int(time.time())
        await JobDB(store.engine).insert_job(dict(
            id=job_id, key_id=None, status="succeeded", model=base, training_file="file-x", validation_file=None,
            method={"type": "supervised", "supervised": {"hyperparameters": {}}}, hyperparameters={}, seed=1,
            suffix="v", metadata=None, fine_tuned_model=name, trained_tokens=1, error=None, result_files=[],
            created_at=now, started_at=now, finished_at=now, estimated_finish=None, claimed_by=None,
            heartbeat_at=None, pid=None, attempts=1, resume_from=None, output_dir=str(adapter.parent),
            cancel_requested=False, pause_requested=False, paused=False))

    gw.with_store(insert)
    return name


def test_vllm_engine_through_the_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "vllm"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    exe.chmod(0o755)
    root = tmp_path / "roots"
    base = root / "base-model"
    base.mkdir(parents=True)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-in-the-child")
    data = tmp_path / "data"
    with Gateway(data, local_model_roots=[root], local_serving={"engine": "vllm", "vllm_executable": str(exe),
                                                                "max_loras": 2, "vllm_max_lora_rank": 16}) as gw:
        tuned = _succeeded_job(gw, str(base), data)
        sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", default_headers=LOCAL, max_retries=0)
        assert sdk.chat.completions.create(model=str(base), messages=HI).choices[0].message.content == "base"
        answer = sdk.chat.completions.create(model=tuned, messages=HI)
        assert answer.choices[0].message.content == f"adapter {tuned}" and answer.model == tuned
        streamed = sdk.chat.completions.create(model=tuned, messages=HI, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == f"adapter{tuned}"

        record = json.loads((root / "vllm-record.json").read_text())
        port = server_state(data)["url"].split(":")[-1].removesuffix("/v1")
        assert record["argv"] == ["serve", str(base), "--host", "127.0.0.1", "--port", port, "--enable-lora",
                                  "--max-loras", "2", "--max-lora-rank", "16", "--tensor-parallel-size", "1"]
        assert record["runtime_lora"] == "True" and record["api_key_set"]
        assert "AWS_SECRET_ACCESS_KEY" not in record["env_names"]
        adapter = str((data / "local" / "jobs").resolve() / tuned.rsplit(":", 1)[-1] / "run-1" / "adapter")
        assert record["loads"] == [{"lora_name": tuned, "lora_path": adapter}]  # once, then remembered

        # vLLM serves one base model: another one is a clear 400, not a 404 from deep inside.
        other = root / "other-model"
        other.mkdir()
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.chat.completions.create(model=str(other), messages=HI)
        assert refused.value.body["code"] == "model_not_served"
        pid = server_state(data)["pid"]
    wait = time.monotonic() + 15
    while time.monotonic() < wait and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid)  # stopped with the gateway that started it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_one_server_for_two_gateways_on_one_data_dir(tmp_path: Path) -> None:
    root = tmp_path / "roots"
    model = build_model(root, "tiny-shared")
    data = tmp_path / "data"
    settings = dict(local_model_roots=[root], local_serving={"threads": 1})
    first = Gateway(data, **settings).__enter__()
    try:
        with Gateway(data, **settings) as second:
            for gw in (first, second):
                r = requests.post(gw.url + "/v1/chat/completions", headers=LOCAL, timeout=120,
                                  json={"model": model, "messages": HI, "max_tokens": 2})
                assert r.status_code == 200, r.text
                if gw is first:
                    started = server_state(data)
            assert server_state(data) == started  # the second instance adopted the first one's server
            state_dir = data / "local" / "serving"
            assert (state_dir / "server.lock").exists()
            assert (state_dir / "server.json").stat().st_mode & 0o777 == 0o600
            first.__exit__(None, None, None)  # the instance that started it stops it
            first = None  # type: ignore[assignment]
            assert not _alive(started["pid"]) or _wait_dead(started["pid"])
            r = requests.post(second.url + "/v1/chat/completions", headers=LOCAL, timeout=120,
                              json={"model": model, "messages": HI, "max_tokens": 2})
            assert r.status_code == 200, r.text  # and the other one starts a new one
            assert server_state(data)["pid"] != started["pid"]
    finally:
        if first is not None:
            first.__exit__(None, None, None)


def _wait_dead(pid: int) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False
