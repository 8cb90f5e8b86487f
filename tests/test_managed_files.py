"""Gateway-managed files: kept by tunegate, validated, atomic on disk, and pushed to a provider
once per content hash when a job there names them."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import openai
import pytest

from tests.gateway import Gateway
from tests.standins.openai_like import ServerThread, StandIn
from tests.test_errors import TRAINING


def managed_client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0,
                         default_headers={"x-portkey-provider": "tunegate"})


def test_upload_list_retrieve_download_delete(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d") as gw:
        sdk = managed_client(gw)
        first = sdk.files.create(file=("a.jsonl", io.BytesIO(TRAINING)), purpose="fine-tune")
        second = sdk.files.create(file=("b.jsonl", io.BytesIO(b"{}\n")), purpose="batch",
                                  expires_after={"anchor": "created_at", "seconds": 3600})
        assert first.id.startswith("file-tg") and first.bytes == len(TRAINING) and first.status == "processed"
        assert second.expires_at == second.created_at + 3600
        assert sdk.files.retrieve(first.id).filename == "a.jsonl"
        stored = gw.with_store(lambda s: s.get_managed_file(first.id))
        assert stored is not None and stored["report"]["ok"] and stored["report"]["stats"]["examples"] == 10
        assert sdk.files.content(first.id).read() == TRAINING
        assert [f.id for f in sdk.files.list(purpose="fine-tune")] == [first.id]
        page = sdk.files.list(limit=1, order="asc")
        assert [f.id for f in page.data] == [first.id] and page.has_more
        assert [f.id for f in sdk.files.list(limit=1, order="asc", after=first.id).data] == [second.id]
        # The registry knows the file: no provider header needed to read it back.
        bare = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
        assert bare.files.retrieve(first.id).id == first.id
        assert sdk.files.delete(first.id).deleted
        with pytest.raises(openai.NotFoundError):
            sdk.files.retrieve(first.id)
        assert list((tmp_path / "d/files/objects").iterdir()) == [tmp_path / "d/files/objects" / second.id]


def test_default_file_provider(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d", default_file_provider="tunegate") as gw:
        bare = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
        assert bare.files.create(file=("a.jsonl", io.BytesIO(TRAINING)), purpose="fine-tune").id.startswith("file-tg")


def test_invalid_file_is_not_kept(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d") as gw:
        with pytest.raises(openai.BadRequestError) as refused:
            managed_client(gw).files.create(file=("a.jsonl", io.BytesIO(b"not json\n" * 12)), purpose="fine-tune")
        assert "line 1" in str(refused.value)
        assert list((tmp_path / "d/files/objects").iterdir()) == []
        assert list((tmp_path / "d/files/tmp").iterdir()) == []


def test_train_anywhere_pushes_one_copy_per_content(tmp_path: Path) -> None:
    standin = StandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "d") as gw:
        managed = managed_client(gw).files.create(file=("a.jsonl", io.BytesIO(TRAINING)), purpose="fine-tune")
        openai_side = openai.OpenAI(base_url=gw.url + "/v1", api_key=standin.api_key, max_retries=0, default_headers={
            "x-portkey-provider": "openai", "x-portkey-custom-host": upstream.url})
        one = openai_side.fine_tuning.jobs.create(training_file=managed.id, model="gpt-4o-mini",
                                                  validation_file=managed.id)
        two = openai_side.fine_tuning.jobs.create(training_file=managed.id, model="gpt-4o-mini")
        assert len(standin.files) == 1  # pushed once, reused for the validation file and the second job
        (remote_id,) = standin.files
        assert standin.contents[remote_id] == TRAINING
        assert one.training_file == two.training_file == one.validation_file == remote_id


def test_client_disconnect_mid_upload_leaves_nothing(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d") as gw:
        boundary = "b0undary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jsonl\"\r\n"
                "Content-Type: application/jsonl\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall((f"POST /v1/files HTTP/1.1\r\nHost: x\r\nx-portkey-provider: tunegate\r\n"
                          f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                          f"Content-Length: 10000000\r\n\r\n").encode() + head + b"{}\n" * 100000)
            time.sleep(0.3)
        time.sleep(0.5)
        assert list((tmp_path / "d/files/tmp").iterdir()) == []
        assert list((tmp_path / "d/files/objects").iterdir()) == []
        listed = managed_client(gw).files.list()
        assert listed.data == []


def test_files_survive_a_restart(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d") as gw:
        f = managed_client(gw).files.create(file=("a.jsonl", io.BytesIO(TRAINING)), purpose="fine-tune")
    with Gateway(tmp_path / "d") as gw:
        assert managed_client(gw).files.content(f.id).read() == TRAINING
