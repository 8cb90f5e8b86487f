"""The official `openai` Node SDK through the gateway (tests/node/lifecycle.cjs), against the stateful
stand-in and against gateway-managed files. The Node SDK sends `file` before `purpose` in its upload
form, so the gateway must take the fields in either order."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, StandIn
from tests.test_openai_sdk import EXAMPLES

NODE_MODULES = Path(__file__).resolve().parents[1] / ".ci" / "node_modules"
SCRIPT = Path(__file__).resolve().parent / "node" / "lifecycle.cjs"

pytestmark = pytest.mark.skipif(shutil.which("node") is None or not (NODE_MODULES / "openai").is_dir(),
                                reason="node or the openai Node SDK is missing (cd .ci && npm ci)")


def run_node(base_url: str, headers: dict[str, str], training: Path, api_key: str = "sk-node") -> dict[str, Any]:
    config = {"nodeModules": str(NODE_MODULES), "baseURL": base_url + "/v1", "apiKey": api_key,
              "headers": headers, "trainingPath": str(training), "model": "gpt-4o-mini-2024-07-18"}
    done = subprocess.run(["node", str(SCRIPT), json.dumps(config)], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def check_lifecycle(result: dict[str, Any]) -> None:
    assert result["file"]["purpose"] == "fine-tune" and result["file"]["bytes"] == len(EXAMPLES)
    assert sorted(result["listed"]) == sorted(result["created"])  # every job, across pages of two
    assert len(set(result["listed"])) == 3
    assert result["retrieved"]["id"] == result["created"][0]
    assert result["retrieved"]["object"] == "fine_tuning.job"
    assert result["cancelled"]["id"] == result["created"][1] and result["cancelled"]["status"] == "cancelled"
    assert result["error"]["status"] == 400
    assert result["error"]["body"]["param"] == "model"


def test_node_sdk_lifecycle_on_openai(tmp_path: Path) -> None:
    training = tmp_path / "train.jsonl"
    training.write_bytes(EXAMPLES)
    standin = StandIn(mode="openai")
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream.url + standin.prefix}
        result = run_node(gw.url, headers, training, api_key=standin.api_key)
    check_lifecycle(result)
    assert standin.contents[result["file"]["id"]] == EXAMPLES  # the bytes arrived unchanged


def test_node_sdk_upload_is_validated_when_file_comes_first(tmp_path: Path) -> None:
    # Managed files: the gateway validates the upload; with `file` first it waits on disk for `purpose`.
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(EXAMPLES.replace(b'"assistant"', b'"robot"', 1))
    with Gateway(tmp_path / "data") as gw:
        config = {"nodeModules": str(NODE_MODULES), "baseURL": gw.url + "/v1", "apiKey": "unused",
                  "headers": {"x-portkey-provider": "tunegate"}, "trainingPath": str(bad), "model": "m"}
        done = subprocess.run(["node", str(SCRIPT), json.dumps(config)], capture_output=True, timeout=120,
                              check=False)
        assert done.returncode == 1
        assert b"The training file is not valid" in done.stderr and b"line 1" in done.stderr
        assert not list((tmp_path / "data").rglob("*.jsonl"))  # nothing stored
