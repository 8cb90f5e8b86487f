"""Review of the ``local`` provider's input bounds and ownership, through the real gateway, with no
training (``local_concurrency = 0``: jobs are validated, never trained; no model is loaded).

* Hyperparameters are JSON numbers (or "auto"): a string such as "1000" used to pass ``float()`` and so
  slip past the operator's ceilings (``lora_r`` 64, ``max_seq_length`` 8192 by default).
* ``lora_target_modules`` is "all-linear", a module name or a bounded list of names: peft reads a string
  as a regular expression over every module name, so ``(a+)+$`` could pin the training process.
* Another key never reaches a local job or tuned model under any spelling of its id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gateway import Gateway

DEMO_DATA = Path(__file__).resolve().parents[2] / "tunegate" / "localjobs" / "demo_data.jsonl"
LOCAL = {"x-portkey-provider": "local"}


@pytest.fixture
def idle(tmp_path: Path) -> Iterator[Gateway]:
    with Gateway(tmp_path / "d", local_concurrency=0, local_model_roots=[tmp_path / "root"]) as gw:
        yield gw


def _upload(url: str, headers: dict[str, str] | None = None) -> str:
    r = requests.post(url + "/v1/files", headers={**LOCAL, **(headers or {})}, timeout=60,
                      files={"purpose": (None, "fine-tune"), "file": ("t.jsonl", DEMO_DATA.read_bytes())})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _create(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(url + "/v1/fine_tuning/jobs", json=body, headers={**LOCAL, **(headers or {})}, timeout=60)


@pytest.mark.parametrize(("name", "value"), [
    ("lora_r", "1000"),  # above the ceiling of 64, as a string
    ("max_seq_length", "1000000"),  # above the ceiling of 8192, as a string
    ("n_epochs", "1_0"),  # float() reads underscores
    ("batch_size", " 8 "),
    ("learning_rate_multiplier", "1e-1"),
    ("n_epochs", True),
    ("lora_alpha", [16]),
    ("lora_dropout", {"v": 0.1}),
])
def test_hyperparameters_are_numbers(idle: Gateway, name: str, value: Any) -> None:
    file_id = _upload(idle.url)
    for hp_path, body in (("hyperparameters", {"hyperparameters": {name: value}}),
                          ("method.supervised.hyperparameters",
                           {"method": {"type": "supervised", "supervised": {"hyperparameters": {name: value}}}})):
        r = _create(idle.url, {"model": "some-org/some-model", "training_file": file_id, **body})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == f"{hp_path}.{name}" and error["code"] == "invalid_hyperparameters", error


@pytest.mark.parametrize("value", [
    "(a+)+$",  # catastrophic backtracking over module names, in the training child
    ".*(q|k|v)_proj",
    ["q_proj"] * 65,
    [],
    ["q_proj", "x" * 129],
    ["q_proj", 3],
    "",
])
def test_lora_target_modules_are_plain_names(idle: Gateway, value: Any) -> None:
    file_id = _upload(idle.url)
    r = _create(idle.url, {"model": "some-org/some-model", "training_file": file_id,
                           "hyperparameters": {"lora_target_modules": value}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "hyperparameters.lora_target_modules"


@pytest.mark.parametrize("value", ["all-linear", "q_proj", ["q_proj", "v_proj"], ["self_attn.o_proj"], "auto"])
def test_lora_target_modules_names_pass(idle: Gateway, value: Any) -> None:
    file_id = _upload(idle.url)
    r = _create(idle.url, {"model": "some-org/some-model", "training_file": file_id,
                           "hyperparameters": {"lora_target_modules": value, "n_epochs": 2, "lora_r": 64,
                                               "learning_rate_multiplier": 0.5}})
    assert r.status_code == 200, r.text


# ---- ownership under other spellings (held already: a regression guard) --------------------------

def _two_keys(gw: Gateway) -> tuple[dict[str, str], dict[str, str]]:
    async def setup(store):  # type: ignore[no-untyped-def]
        await store.add_connection("here", "local", {})
        return [(await store.create_key(name, ["*"]))[1] for name in ("alice", "bob")]

    alice, bob = gw.with_store(setup)
    return {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}


def _spellings(job_id: str) -> list[str]:
    tail = job_id.removeprefix("ftjob-")
    return [job_id, job_id.upper(), "FTJOB-" + tail, job_id.replace("-", "%2D"), job_id.replace("-", "%252D"),
            job_id + "%0A", job_id + "%20", job_id + "%00", "%66" + job_id[1:], job_id + "/", job_id + "%2F..",
            "ftjob-" + tail.upper(), job_id + "?x=1", "%EF%BC%A6tjob-" + tail]  # a fullwidth F


def test_another_key_never_reaches_a_local_job(idle: Gateway, tmp_path: Path) -> None:
    alice, bob = _two_keys(idle)
    file_id = _upload(idle.url, alice)
    r = _create(idle.url, {"model": "some-org/some-model", "training_file": file_id}, alice)
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    for spelled in _spellings(job_id):
        base = f"{idle.url}/v1/fine_tuning/jobs/{spelled}"
        for method, suffix in (("GET", ""), ("POST", "/cancel"), ("POST", "/pause"), ("POST", "/resume"),
                               ("GET", "/events"), ("GET", "/checkpoints")):
            resp = requests.request(method, base + suffix, headers={**LOCAL, **bob}, timeout=30)
            assert resp.status_code in (404, 405), (spelled, suffix, resp.status_code, resp.text)
            assert resp.headers.get("content-type", "").startswith("application/json"), resp.text
    own = requests.get(f"{idle.url}/v1/fine_tuning/jobs/{job_id}", headers={**LOCAL, **alice}, timeout=30).json()
    assert own["status"] != "cancelled" and not own["paused"], own  # control: nothing of Bob's landed


def test_another_key_never_reaches_a_local_tuned_model(idle: Gateway) -> None:
    alice, bob = _two_keys(idle)
    file_id = _upload(idle.url, alice)
    job_id = _create(idle.url, {"model": "some-org/some-model", "training_file": file_id}, alice).json()["id"]
    adapter = idle.settings.data_dir / "local" / "jobs" / job_id / "run-1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    name = f"ft:some-org--some-model::{job_id}"

    async def succeed(store):  # type: ignore[no-untyped-def]
        from tunegate.localjobs import JobDB

        await JobDB(store.engine).cas(job_id, {}, {"status": "succeeded", "fine_tuned_model": name,
                                                   "output_dir": os.path.dirname(adapter)})

    idle.with_store(succeed)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for spelled in (name, name.upper(), name.replace("ftjob-", "FTJOB-"), name + ":ckpt-step-01",
                    name + ":ckpt-step-0", name + " ", name + "\n", name.replace("::", ":x:"),
                    "ft:other::" + job_id, name.replace("ft:", "FT:")):
        r = requests.post(idle.url + "/v1/chat/completions", json={**chat, "model": spelled},
                          headers={**LOCAL, **bob}, timeout=30)
        assert r.status_code == 404, (spelled, r.status_code, r.text)
        d = requests.delete(idle.url + "/v1/models/" + requests.utils.quote(spelled, safe=""),
                            headers={**LOCAL, **bob}, timeout=30)
        assert d.status_code in (400, 404), (spelled, d.status_code, d.text)
    assert (adapter / "adapter_config.json").is_file()  # Bob deleted nothing
    seen = requests.get(idle.url + "/v1/models/" + name, headers={**LOCAL, **alice}, timeout=30)
    assert seen.status_code == 200, seen.text  # control: Alice's own name reaches it


# ---- a Hub id is never a directory of the working directory ----------------------------------------

def test_a_hub_id_that_is_also_a_relative_path_is_read_from_the_cache(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("huggingface_hub")
    from tunegate.trainer.engine import TrainingError, hub_snapshot

    cache = tmp_path / "hub"
    snapshot = cache / "models--some-org--some-model" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--some-org--some-model" / "refs").mkdir()
    (cache / "models--some-org--some-model" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    work = tmp_path / "cwd"
    (work / "some-org" / "some-model").mkdir(parents=True)  # a folder no model root allows
    (work / "some-org" / "other-model").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert os.path.realpath(hub_snapshot("some-org/some-model")) == os.path.realpath(snapshot)
    with pytest.raises(TrainingError) as caught:
        hub_snapshot("some-org/other-model")  # a folder here, not in the cache: no model
    assert caught.value.code == "model_not_found"
    assert hub_snapshot("gpt2") == "gpt2"  # no such folder here: the id goes to transformers as given
