"""Upload validation in a helper process (tunegate.data.helper / tunegate.data.worker): the same report
as the validator inline, a clear 500 (never a hang) when the helper dies or stalls, the helper gone
with a failed or abandoned upload; through the gateway, the same answers as inline validation."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.gateway import Gateway
from tests.reliability.helpers import BOUNDARY, multipart_head
from tests.standins.openai_like import ServerThread, StandIn
from tunegate.api import files as files_api
from tunegate.data import helper as helper_mod
from tunegate.data.helper import ValidatorFailed, ValidatorProcess
from tunegate.data.validator import Validator

GOOD = (json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Capital of France?"},
                                 {"role": "assistant", "content": "Paris."}]}) + "\n").encode()


def inline(data: bytes, method: str = "supervised") -> dict:
    v = Validator(method=method, max_bytes=10**9)
    for i in range(0, len(data), 65536):
        v.feed(data[i:i + 65536])
    return v.finish().to_dict()


async def remote(data: bytes, method: str = "supervised", step: int = 65536) -> dict:
    helper = await ValidatorProcess.start(method, 10**9)
    try:
        for i in range(0, len(data), step):
            await helper.feed(data[i:i + step])
        return (await helper.finish()).to_dict()
    finally:
        helper.close()


@pytest.mark.parametrize("data", [
    GOOD * 20000,  # ~2.4 MB: many pipe-fulls
    GOOD * 5 + b"not json\n" + GOOD + b'{"messages": []}\n\n' + GOOD,  # errors on lines 6, 8, 9
    b"\xff\xfe bad utf-8\n" * 3000,  # 100 problems kept, report well over one pipe read (64 KiB)
    GOOD[:-1],  # no trailing newline, too few examples
    b"",
])
def test_report_is_the_inline_report(data: bytes) -> None:
    assert asyncio.run(remote(data, step=7777)) == inline(data)


def test_dpo_method_goes_to_the_helper() -> None:
    assert asyncio.run(remote(GOOD * 3, method="dpo")) == inline(GOOD * 3, method="dpo")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _feed_until_failed(helper: ValidatorProcess, seconds: float = 20.0) -> ValidatorFailed:
    deadline = time.monotonic() + seconds
    with pytest.raises(ValidatorFailed) as failed:
        while time.monotonic() < deadline:
            await helper.feed(GOOD * 3000)
        await helper.finish()
    return failed.value


def test_helper_killed_mid_stream_is_a_500_not_a_hang() -> None:
    async def go() -> ValidatorFailed:
        helper = await ValidatorProcess.start("supervised", 10**9)
        try:
            await helper.feed(GOOD * 3000)
            os.kill(helper.pid, signal.SIGKILL)
            return await _feed_until_failed(helper)
        finally:
            helper.close()

    err = asyncio.run(go())
    assert err.status == 500 and err.code == "validator_failed" and err.type == "server_error"
    assert "exited with -9" in err.message


def test_helper_gone_before_its_report_is_a_500() -> None:
    async def go() -> ValidatorFailed:
        helper = await ValidatorProcess.start("supervised", 10**9)
        try:
            await helper.feed(GOOD * 10)
            os.kill(helper.pid, signal.SIGKILL)
            with pytest.raises(ValidatorFailed) as failed:
                await helper.finish()
            return failed.value
        finally:
            helper.close()

    assert "exited with -9" in asyncio.run(go()).message


def test_stalled_helper_is_killed_and_the_upload_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(helper_mod, "STALL_SECONDS", 0.5)
    monkeypatch.setattr(helper_mod, "WATCH_EVERY", 0.1)

    async def go() -> tuple[ValidatorFailed, float, int]:
        helper = await ValidatorProcess.start("supervised", 10**9)
        try:
            os.kill(helper.pid, signal.SIGSTOP)  # alive, reads nothing
            started = time.monotonic()
            err = await _feed_until_failed(helper)
            return err, time.monotonic() - started, helper.pid
        finally:
            helper.close()

    err, took, pid = asyncio.run(go())
    assert "took no data" in err.message and took < 10
    time.sleep(0.2)
    assert not _alive(pid)


def test_close_kills_a_running_helper() -> None:
    async def go() -> int:
        helper = await ValidatorProcess.start("supervised", 10**9)
        await helper.feed(GOOD * 3000)
        helper.close()
        await asyncio.sleep(0.3)
        return helper.pid

    pid = asyncio.run(go())
    assert not _alive(pid) and not os.path.exists(f"/proc/{pid}")  # killed and reaped: not even a zombie


def test_a_missing_worker_fails_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(helper_mod, "WORKER", "tunegate.data.no_such_module")

    async def go() -> ValidatorFailed:
        helper = await ValidatorProcess.start("supervised", 10**9)
        try:
            return await _feed_until_failed(helper)
        finally:
            helper.close()

    assert asyncio.run(go()).status == 500


# ---- through the gateway ------------------------------------------------------------------------


def _list_started_helpers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of the helpers started from now on, in order."""
    started: list[int] = []
    real_start = ValidatorProcess.start.__func__  # type: ignore[attr-defined]

    async def start(cls: type[ValidatorProcess], method: str, max_bytes: int) -> ValidatorProcess:
        helper = await real_start(cls, method, max_bytes)
        started.append(helper.pid)
        return helper

    monkeypatch.setattr(ValidatorProcess, "start", classmethod(start))
    return started


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[StandIn, str, Gateway, list[int]]]:
    """A gateway whose uploads of any size validate in a helper; the helpers' pids are listed."""
    started = _list_started_helpers(monkeypatch)
    # cores enough that a helper still closing after the last test's answer never pushes the next inline
    monkeypatch.setattr(files_api, "_cores", lambda: 8)
    standin = StandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data",
                                                          validate_uploads_in_helper_from_bytes=0) as gw:
        yield standin, upstream.url, gw, started


def _client(gw: Gateway, standin: StandIn, upstream: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=standin.api_key, max_retries=0,
                         default_headers={"x-portkey-provider": "openai", "x-portkey-custom-host": upstream})


def test_gateway_valid_file_through_the_helper(env: tuple[StandIn, str, Gateway, list[int]]) -> None:
    standin, upstream, gw, started = env
    data = GOOD * 1000
    created = _client(gw, standin, upstream).files.create(file=("t.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert len(started) == 1  # the helper validated it
    assert standin.contents[created.id] == data


def test_gateway_bad_file_same_answer_as_inline(env: tuple[StandIn, str, Gateway, list[int]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    standin, upstream, gw, started = env
    data = GOOD * 500 + b"not json\n" + GOOD * 500
    answers = []
    for threshold in (0, 1 << 60):  # helper, then inline
        gw.settings.validate_uploads_in_helper_from_bytes = threshold
        with pytest.raises(openai.BadRequestError) as refused:
            _client(gw, standin, upstream).files.create(file=("t.jsonl", io.BytesIO(data)), purpose="fine-tune")
        answers.append(refused.value.body)
    assert len(started) == 1
    assert answers[0] == answers[1]
    assert "line 501" in answers[0]["message"] and answers[0]["code"] == "invalid_training_file"  # type: ignore[index]
    assert standin.files == {}  # the upstream request was aborted: nothing created there


def test_gateway_helper_death_is_a_clean_500(env: tuple[StandIn, str, Gateway, list[int]],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    standin, upstream, gw, _ = env
    monkeypatch.setattr(helper_mod, "WORKER", "tunegate.data.no_such_module")
    resp = requests.post(gw.url + "/v1/files", timeout=60, files={"file": ("t.jsonl", GOOD * 20000)},
                         data={"purpose": "fine-tune"},
                         headers={"x-portkey-provider": "openai", "x-portkey-custom-host": upstream,
                                  "Authorization": f"Bearer {standin.api_key}"})
    assert resp.status_code == 500, resp.text
    error = resp.json()["error"]
    assert error["code"] == "validator_failed" and error["param"] == "file"
    assert standin.files == {}


def test_gateway_client_gone_mid_upload_ends_the_helper(env: tuple[StandIn, str, Gateway, list[int]]) -> None:
    standin, upstream, gw, started = env
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall((f"POST /v1/files HTTP/1.1\r\nHost: x\r\nx-portkey-provider: openai\r\n"
                      f"x-portkey-custom-host: {upstream}\r\nAuthorization: Bearer {standin.api_key}\r\n"
                      f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                      f"Content-Length: 100000000\r\n\r\n").encode() + multipart_head() + GOOD * 20000)
        deadline = time.monotonic() + 10
        while not started and time.monotonic() < deadline:
            time.sleep(0.05)
    assert started
    deadline = time.monotonic() + 10
    while _alive(started[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(started[0])
    assert standin.files == {}


def test_helpers_at_once_are_capped_at_the_cores_less_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ValidatorProcess, "running", 0)

    async def pick(cores: int) -> list[bool]:
        monkeypatch.setattr(files_api, "_cores", lambda: cores)
        taken = [await files_api._helper_for(Validator(), 1 << 30, 32 << 20) for _ in range(3)]
        try:
            assert ValidatorProcess.running == sum(h is not None for h in taken)
            small = await files_api._helper_for(Validator(), (32 << 20) - 1, 32 << 20)
            unsized = await files_api._helper_for(Validator(), None, 32 << 20)
            assert small is None and unsized is None  # below the size, or no Content-Length: inline
            return [h is not None for h in taken]
        finally:
            for h in taken:
                if h is not None:
                    h.close()
                    await h.wait()

    assert asyncio.run(pick(1)) == [False, False, False]  # one core: always inline
    assert asyncio.run(pick(2)) == [True, False, False]  # the second core takes one helper, the rest inline
    assert asyncio.run(pick(3)) == [True, True, False]
    assert ValidatorProcess.running == 0  # each closed helper counted off once


def test_large_uploads_validate_in_a_helper_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = _list_started_helpers(monkeypatch)
    monkeypatch.setattr(files_api, "_cores", lambda: 2)
    monkeypatch.setattr(ValidatorProcess, "running", 0)  # none left from an earlier test's gateway
    standin = StandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        assert gw.settings.validate_uploads_in_helper_from_bytes == 32 * 1024 * 1024
        client = _client(gw, standin, upstream.url)
        small = client.files.create(file=("s.jsonl", io.BytesIO(GOOD * 1000)), purpose="fine-tune")
        assert started == []  # 0.1 MB: inline
        data = GOOD * (33 * 1024 * 1024 // len(GOOD))
        large = client.files.create(file=("l.jsonl", io.BytesIO(data)), purpose="fine-tune")
        assert len(started) == 1 and standin.contents[large.id] == data and small.id in standin.contents
