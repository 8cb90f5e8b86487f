"""Gateway-managed files in an S3-compatible bucket (``file_store = "s3"``), against moto in server mode:
the OpenAI SDK's file calls with ``x-portkey-provider: tunegate``, a client that disconnects mid-upload
(no object, no dangling multipart upload), and two gateway instances sharing one database and bucket."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest
import requests

from tests.gateway import Gateway
from tunegate.config import Settings
from tunegate.files import open_file_store
from tunegate.files.s3 import S3Store
from tunegate.upstream import Upstream

BUCKET = "tunegate-files"
PREFIX = "shared/managed"
LINE = (json.dumps({"messages": [{"role": "user", "content": "What is 2+2?"},
                                 {"role": "assistant", "content": "4"}]}) + "\n").encode()
CHAT = LINE * 50


@pytest.fixture
def s3(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    requests.post(moto_url + "/moto-api/reset", timeout=5)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAMOTOFILES")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto-files-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    client = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="AKIAMOTOFILES",
                          aws_secret_access_key="moto-files-secret")
    client.create_bucket(Bucket=BUCKET)
    return client


def s3_settings(**extra: Any) -> dict[str, Any]:
    return dict(file_store="s3", file_store_s3_bucket=BUCKET, file_store_s3_prefix=PREFIX,
                file_store_s3_region="us-east-1", **extra)


@pytest.fixture
def gw(s3: Any, tmp_path: Path) -> Iterator[Gateway]:
    with Gateway(tmp_path / "data", **s3_settings()) as gateway:
        yield gateway


def sdk(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0,
                         default_headers={"x-portkey-provider": "tunegate"})


def keys(s3: Any) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def test_files_round_trip_through_s3(s3: Any, gw: Gateway) -> None:
    client = sdk(gw)
    uploaded = client.files.create(file=("train.jsonl", io.BytesIO(CHAT)), purpose="fine-tune")
    assert uploaded.bytes == len(CHAT) and uploaded.id.startswith("file-tg")
    assert keys(s3) == [f"{PREFIX}/{uploaded.id}"]
    assert s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{uploaded.id}")["Body"].read() == CHAT
    row = gw.with_store(lambda store: store.get_managed_file(uploaded.id))
    assert row["sha256"] == hashlib.sha256(CHAT).hexdigest() and row["location"] == f"{PREFIX}/{uploaded.id}"

    assert [f.id for f in client.files.list()] == [uploaded.id]
    assert client.files.retrieve(uploaded.id).filename == "train.jsonl"
    assert client.files.content(uploaded.id).read() == CHAT

    assert client.files.delete(uploaded.id).deleted
    assert keys(s3) == []
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_multi_part_upload_and_local_path(s3: Any, gw: Gateway) -> None:
    """More than one part; the local trainer's copy is downloaded into the data dir."""
    big = LINE * (20 * 1024 * 1024 // len(LINE))
    uploaded = sdk(gw).files.create(file=("big.jsonl", io.BytesIO(big)), purpose="fine-tune")
    assert s3.head_object(Bucket=BUCKET, Key=f"{PREFIX}/{uploaded.id}")["ContentLength"] == len(big)
    assert sdk(gw).files.content(uploaded.id).read() == big
    row = gw.with_store(lambda store: store.get_managed_file(uploaded.id))

    async def fetch() -> Path:  # as the local trainer does, from a store of its own
        upstream = Upstream()
        try:
            return await S3Store.from_settings(gw.settings, upstream).local_path(row["location"])
        finally:
            await upstream.close()

    path = asyncio.run(fetch())
    assert path.read_bytes() == big and gw.settings.data_dir in path.parents


def test_client_disconnect_leaves_no_object_and_no_multipart_upload(s3: Any, gw: Gateway) -> None:
    boundary = "tunegate-disconnect"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.jsonl\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n").encode()
    block = LINE * (1024 * 1024 // len(LINE))
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall((f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nx-portkey-provider: tunegate\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                  f"Content-Length: {len(head) + 64 * len(block)}\r\n\r\n").encode() + head)
    for _ in range(20):  # 20 MiB: two parts reach S3 before the client goes away
        sock.sendall(block)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads"):
        time.sleep(0.05)
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads"), "the upload never reached S3"
    time.sleep(0.5)
    sock.close()

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads"):
        time.sleep(0.05)
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    assert keys(s3) == []
    assert list(sdk(gw).files.list()) == []


def test_second_instance_reads_files_of_the_first(s3: Any, gw: Gateway, tmp_path: Path) -> None:
    uploaded = sdk(gw).files.create(file=("shared.jsonl", io.BytesIO(CHAT)), purpose="fine-tune")
    with Gateway(tmp_path / "other", **s3_settings(database_url=gw.settings.resolved_database_url)) as second:
        client = sdk(second)
        assert client.files.retrieve(uploaded.id).bytes == len(CHAT)
        assert client.files.content(uploaded.id).read() == CHAT
        assert client.files.delete(uploaded.id).deleted
    assert keys(s3) == []
    with pytest.raises(openai.NotFoundError):
        sdk(gw).files.retrieve(uploaded.id)


def test_s3_store_needs_a_bucket_and_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ValueError, match="file_store_s3_bucket"):
        open_file_store(Settings(data_dir=tmp_path, file_store="s3"), Upstream())
    with pytest.raises(ValueError, match="AWS_ACCESS_KEY_ID"):
        open_file_store(Settings(data_dir=tmp_path, file_store="s3", file_store_s3_bucket=BUCKET), Upstream())


def test_the_trainer_cache_keeps_to_its_bound(s3: Any, tmp_path: Path) -> None:
    async def one(data: bytes) -> Any:
        yield data

    async def run() -> None:
        upstream = Upstream()
        try:
            settings = Settings(data_dir=tmp_path, **s3_settings(file_store_s3_cache_bytes=3 * len(CHAT)))
            store = S3Store.from_settings(settings, upstream)
            store.prepare()
            locations = [(await store.write(f"file-c{i}", one(CHAT))).location for i in range(5)]
            paths = []
            for n, location in enumerate(locations[:4]):
                path = await store.local_path(location)
                used = time.time() - 3600 + n  # used an hour ago, in this order: past the grace period
                os.utime(path, (used, used))
                paths.append(path)
            assert [p.exists() for p in paths] == [False, True, True, True]  # the 4th download evicted the 1st
            assert await store.local_path(locations[1]) == paths[1]  # a hit marks the copy as just used
            fifth = await store.local_path(locations[4])
            assert [p.exists() for p in paths] == [False, True, False, True] and fifth.exists()
            assert sum(p.stat().st_size for p in store.cache.iterdir() if p.is_file()) == 3 * len(CHAT)
            assert fifth.read_bytes() == CHAT
            # Copies used within the grace period stay, whatever the bound: a trainer may be about to open them.
            tight = S3Store.from_settings(Settings(data_dir=tmp_path / "t", **s3_settings(file_store_s3_cache_bytes=0)),
                                          upstream)
            tight.prepare()
            kept = [await tight.local_path(location) for location in locations[:2]]
            assert all(p.exists() for p in kept)
        finally:
            await upstream.close()

    asyncio.run(run())
