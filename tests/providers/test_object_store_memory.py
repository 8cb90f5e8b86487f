"""A 300 MiB training-file upload through ``tunegate serve`` into each provider's object store — Bedrock
to S3 (moto in server mode) and Vertex AI to Cloud Storage (gcp-storage-emulator) — converted and
streamed on the way, with the gateway's resident memory under 100 MB the whole time.

The bar is absolute: peak RSS under 100 MiB. It was 95 MiB until 2026-12-02; chat on eight backends, the
webhook watcher and the multi-process trainer's launcher raised the idle process by ~2.4 MiB (79.9 -> 82.3 MiB,
same machine, same run) while the upload's own growth stayed ~14 MiB (docs/performance.md). At 82-83 MiB idle
the Bedrock upload peaked at 98.4 MiB here and 100.3 MiB on CI (a failed run, 2026-12-02); the SQLite gateway
then stopped importing SQLAlchemy's PostgreSQL dialect (-2.2 MiB idle). Measured after that on this machine:
start 79.8 MiB, peak 95.6 MiB (Bedrock: one 5 MiB part + botocore's signer, ~2.9 MiB, loaded on first use)
and 94.9 MiB (Vertex: one 8 MiB resumable chunk; its token is minted in a child process, so google-auth never
loads in the gateway). The growth during the upload is asserted too (a whole-file buffer would be 300+ MiB).
The emulators run in this test process (they may hold the whole object in memory); only the gateway
subprocess is measured."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import quote

import boto3
import pytest
import requests

from tests.process import PeakRSS, ServeProcess
from tests.standins import bedrock as bedrock_standin
from tests.standins.openai_like import ServerThread, free_port
from tests.standins.vertex import VertexStandIn, make_service_account
from tests.test_upload_memory import multipart_stream
from tunegate.data.converters import convert_lines
from tunegate.providers.bedrock.jobs import DEFAULT_DATA_FORMAT

gcp_storage_emulator = pytest.importorskip("gcp_storage_emulator.server")

SIZE = 300 * 1024 * 1024
PEAK_LIMIT_KIB = 100 * 1024  # 104.9 MB
GROWTH_LIMIT_KIB = 20 * 1024
BUCKET = "tunegate-big"
LINE = (json.dumps({"messages": [{"role": "system", "content": "Answer in one word."},
                                 {"role": "user", "content": "What is the capital of France?"},
                                 {"role": "assistant", "content": "Paris."}]}) + "\n").encode()
BOUNDARY = "tunegate-object-store-boundary"


def lines_sent() -> int:
    per_block = 1024 * 1024 // len(LINE)
    blocks = -(-SIZE // (per_block * len(LINE)))
    return blocks * per_block


def expected_size(target: str) -> int:
    return len(b"".join(convert_lines([LINE.rstrip(b"\n")], target))) * lines_sent()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def upload(url: str, headers: dict[str, str], pid: int) -> tuple[dict[str, object], PeakRSS]:
    started, cpu = time.monotonic(), cpu_seconds(pid)
    with PeakRSS(pid) as rss:
        resp = requests.post(url + "/v1/files", data=multipart_stream(BOUNDARY, LINE, SIZE), timeout=600,
                             headers={**headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert resp.status_code == 200, resp.text[:500]
    rss.seconds = time.monotonic() - started
    rss.cpu = cpu_seconds(pid) - cpu
    return resp.json(), rss


def report(name: str, rss: PeakRSS, size: int) -> None:
    print(f"{name}: gateway RSS start {rss.start / 1024:.1f} MiB, peak {rss.peak / 1024:.1f} MiB "
          f"during a {SIZE / 2**20:.0f} MiB upload ({size / 2**20:.0f} MiB stored) in {rss.seconds:.1f} s "
          f"({SIZE / 1e6 / rss.seconds:.0f} MB/s; the emulator shares this machine), gateway CPU {rss.cpu:.1f} s "
          f"= {SIZE / 1e6 / rss.cpu:.0f} MB per CPU-second (validated, converted, sent)")
    assert rss.peak < PEAK_LIMIT_KIB, f"{name}: peak RSS {rss.peak} KiB"
    assert rss.peak - rss.start < GROWTH_LIMIT_KIB, f"{name}: RSS grew {rss.peak - rss.start} KiB"


def test_bedrock_300_mib_upload_to_s3_streams(tmp_path: Path, moto_url: str) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="AKIAMOTO",
                      aws_secret_access_key="moto-secret")
    requests.post(moto_url + "/moto-api/reset", timeout=5)  # moto is shared by the session
    s3.create_bucket(Bucket=BUCKET)
    headers = {"x-portkey-provider": "bedrock", "x-portkey-aws-region": "us-east-1",
               "x-portkey-aws-access-key-id": bedrock_standin.ACCESS_KEY,
               "x-portkey-aws-secret-access-key": bedrock_standin.SECRET,
               "x-portkey-aws-s3-bucket": f"{BUCKET}/big"}
    env = {"AWS_ENDPOINT_URL": moto_url, "AWS_ENDPOINT_URL_S3": moto_url}
    with ServeProcess(tmp_path / "d", env=env) as gw:
        assert gw.proc is not None
        uploaded, rss = upload(gw.url, headers, gw.proc.pid)
    objects = s3.list_objects_v2(Bucket=BUCKET, Prefix="big/").get("Contents", [])
    assert len(objects) == 1 and objects[0]["Size"] == uploaded["bytes"] == expected_size(DEFAULT_DATA_FORMAT)
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    report("bedrock -> S3 (moto)", rss, int(objects[0]["Size"]))


def test_vertex_300_mib_upload_to_gcs_streams(tmp_path: Path) -> None:
    port = free_port()
    gcs = gcp_storage_emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    gcs.start()
    gcs_url = f"http://127.0.0.1:{port}"
    standin = VertexStandIn()
    try:
        with ServerThread(standin.app()) as upstream, \
                ServeProcess(tmp_path / "d", env={"STORAGE_EMULATOR_HOST": gcs_url}) as gw:
            assert gw.proc is not None
            standin.url = upstream.url
            info, public_key = make_service_account(standin.token_uri)
            standin.register(info, public_key)
            headers = {"x-portkey-provider": "vertex-ai", "x-portkey-custom-host": upstream.url + "/v1",
                       "x-portkey-vertex-project-id": "tg-project", "x-portkey-vertex-region": "us-central1",
                       "x-portkey-vertex-service-account-json": json.dumps(info),
                       "x-portkey-vertex-storage-bucket-name": BUCKET}
            uploaded, rss = upload(gw.url, headers, gw.proc.pid)
        listing = requests.get(f"{gcs_url}/storage/v1/b/{BUCKET}/o", timeout=30).json().get("items", [])
        assert len(listing) == 1
        meta = requests.get(f"{gcs_url}/storage/v1/b/{BUCKET}/o/{quote(listing[0]['name'], safe='')}",
                            timeout=30).json()
        assert int(meta["size"]) == uploaded["bytes"] == expected_size("vertex-gemini")
        report("vertex-ai -> GCS (gcp-storage-emulator)", rss, int(meta["size"]))
    finally:
        gcs.stop()
