"""The ``local`` provider's bounds (finding 11), over the real server: the model is a Hugging Face id or a
directory under an operator root, refused in one voice whatever is on disk; operator ceilings on
``lora_r``, ``max_seq_length``, epochs; per-key quotas (active jobs, stored bytes); checkpoint retention;
no absolute host path in events. One real training run (a tiny random model, CPU) also checks the
trainer's artifacts (finding 20) and the child's environment (finding 22)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gateway import Gateway

DEMO_DATA = Path(__file__).resolve().parents[2] / "tunegate" / "localjobs" / "demo_data.jsonl"
LOCAL = {"x-portkey-provider": "local"}


def _wait(check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)
    return value


def _upload(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> requests.Response:
    return requests.post(url + "/v1/files", headers={**LOCAL, **(headers or {})}, timeout=60,
                         files={"purpose": (None, "fine-tune"),
                                "file": ("t.jsonl", DEMO_DATA.read_bytes() if data is None else data)})


def _create(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(url + "/v1/fine_tuning/jobs", json=body, headers={**LOCAL, **(headers or {})}, timeout=60)


def _job(url: str, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return requests.get(url + f"/v1/fine_tuning/jobs/{job_id}", headers={**LOCAL, **(headers or {})},
                        timeout=30).json()  # type: ignore[no-any-return]


def _events(url: str, job_id: str) -> list[dict[str, Any]]:
    return requests.get(url + f"/v1/fine_tuning/jobs/{job_id}/events?limit=1000", headers=LOCAL,
                        timeout=30).json()["data"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from tunegate.trainer import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("roots") / "models" / "tiny-llama"))


@pytest.fixture
def idle(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway that validates jobs but trains none (local_concurrency 0), with one model root."""
    (tmp_path / "root" / "real-model").mkdir(parents=True)
    with Gateway(tmp_path / "d", local_concurrency=0, local_model_roots=[tmp_path / "root"],
                 local_max_epochs=20) as gw:  # lora_r and max_seq_length keep their defaults (64, 8192)
        yield gw


def test_paths_outside_the_model_roots_fail_in_one_voice(idle: Gateway, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    file_id = _upload(idle.url).json()["id"]
    (tmp_path / "outside-model").mkdir()
    (tmp_path / "outside-model" / "config.json").write_text("{}")
    (tmp_path / "root" / "link-out").symlink_to(tmp_path / "outside-model")
    probes = ["/etc", "/nonexistent/model-dir", str(tmp_path / "outside-model"), str(tmp_path / "d"),
              str(tmp_path / "root" / "link-out"), str(tmp_path / "root" / "absent"), "no-such-org/no-such-model"]
    errors = {}
    for model in probes:
        created = _create(idle.url, {"model": model, "training_file": file_id})
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]
        final = _wait(lambda j=job_id: (r := _job(idle.url, j))["status"] == "failed" and r)
        errors[model] = final["error"]
    assert {e["code"] for e in errors.values()} == {"model_not_found"}
    assert {e["message"].replace(m, "MODEL") for m, e in errors.items()} == {errors["/etc"]["message"].replace(
        "/etc", "MODEL")}, errors  # the same words for a directory, a file, nothing, a link out of a root


@pytest.mark.parametrize("model", ["../models/x", "~/models/x", "models/../../etc", "a/b/c", "\x00"])
def test_a_model_that_is_neither_an_id_nor_an_absolute_path_is_a_400(idle: Gateway, model: str) -> None:
    file_id = _upload(idle.url).json()["id"]
    r = _create(idle.url, {"model": model, "training_file": file_id})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text


@pytest.mark.parametrize(("name", "value"), [("lora_r", 128), ("max_seq_length", 16384), ("n_epochs", 30)])
def test_operator_ceilings(idle: Gateway, name: str, value: int) -> None:
    file_id = _upload(idle.url).json()["id"]
    r = _create(idle.url, {"model": "some-org/some-model", "training_file": file_id,
                           "hyperparameters": {name: value}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == f"hyperparameters.{name}"
    assert r.json()["error"]["code"] == "invalid_hyperparameters"


def _two_keys(gw: Gateway) -> tuple[dict[str, str], dict[str, str]]:
    async def setup(store):  # type: ignore[no-untyped-def]
        await store.add_connection("here", "local", {})
        return [(await store.create_key(name, ["*"]))[1] for name in ("alice", "bob")]

    alice, bob = gw.with_store(setup)
    return {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}


def test_active_jobs_per_key(tmp_path: Path) -> None:
    model = tmp_path / "root" / "model"  # a directory under a root passes validation: the jobs stay queued
    model.mkdir(parents=True)
    with Gateway(tmp_path / "d", local_concurrency=0, local_max_active_jobs_per_key=2,
                 local_model_roots=[tmp_path / "root"]) as gw:
        alice, bob = _two_keys(gw)
        file_id = _upload(gw.url, alice).json()["id"]
        body = {"model": str(model), "training_file": file_id}
        assert [_create(gw.url, body, alice).status_code for _ in range(2)] == [200, 200]
        third = _create(gw.url, body, alice)
        assert third.status_code == 429 and third.json()["error"]["code"] == "quota_exceeded"
        assert "retry-after" in third.headers
        bobs = _upload(gw.url, bob).json()["id"]
        assert _create(gw.url, {**body, "training_file": bobs}, bob).status_code == 200  # a quota per key


def test_stored_bytes_per_key(tmp_path: Path) -> None:
    size = len(DEMO_DATA.read_bytes())
    with Gateway(tmp_path / "d", managed_files_max_bytes_per_key=size * 2 + size // 2) as gw:
        alice, bob = _two_keys(gw)
        assert [_upload(gw.url, alice).status_code for _ in range(2)] == [200, 200]
        third = _upload(gw.url, alice)
        assert third.status_code == 429 and third.json()["error"]["code"] == "quota_exceeded", third.text
        assert _upload(gw.url, bob).status_code == 200
        listed = requests.get(gw.url + "/v1/files", headers={**LOCAL, **alice}, timeout=30).json()["data"]
        assert len(listed) == 2  # the refused upload left nothing behind
        first = listed[0]["id"]
        assert requests.delete(gw.url + f"/v1/files/{first}", headers={**LOCAL, **alice}, timeout=30).ok
        assert _upload(gw.url, alice).status_code == 200  # room again


def test_a_training_run_keeps_few_checkpoints_private_files_and_no_host_paths(
        tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-aws-secret")
    monkeypatch.setenv("TUNEGATE_TRAINER_THREADS", "1")
    old_umask = os.umask(0o022)
    try:
        root = Path(tiny_model).parent
        with Gateway(tmp_path / "d", local_model_roots=[root], local_keep_checkpoints=2) as gw:
            file_id = _upload(gw.url).json()["id"]
            job = _create(gw.url, {"model": tiny_model, "training_file": file_id, "seed": 3,
                                   "hyperparameters": {"n_epochs": 6, "batch_size": 8}}).json()
            pid = _wait(lambda: (run := gw.app.state.local_jobs.running.get(job["id"])) and run.proc.pid, 60)
            environ = _wait(lambda: _read_environ(pid), 30)
            final = _wait(lambda: (r := _job(gw.url, job["id"]))["status"] in ("succeeded", "failed") and r, 180)
            assert final["status"] == "succeeded", final["error"]
            events = _events(gw.url, job["id"])
            job_root = gw.settings.data_dir / "local" / "jobs" / job["id"]
        assert b"canary-aws-secret" not in environ
        checkpoints = sorted(p.name for p in job_root.glob("run-*/checkpoints/*"))
        assert 1 <= len(checkpoints) <= 3, checkpoints  # the newest two, and the best one if older
        assert "step-12" in checkpoints  # 16 examples / 8 per batch x 6 epochs: the last checkpoint stays
        text = repr(events)
        assert str(tmp_path) not in text and os.path.realpath(tmp_path) not in text, text
        done = next(e for e in events if e["message"].startswith("Result files"))
        assert done["data"]["adapter_dir"].startswith("local/jobs/") and not done["data"]["adapter_dir"].startswith("/")
        for path in [job_root, *job_root.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    finally:
        os.umask(old_umask)


def _read_environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""
