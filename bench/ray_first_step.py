"""Time from a job's create to its first training step: the embedded queue (a child of the instance) vs a
Ray cluster (``[local_training] engine = "ray"``), interleaved rounds, same tiny model and data (issue 18).

    .venv/bin/python bench/ray_first_step.py --ray http://127.0.0.1:8265 --rounds 3

Needs a Ray head (``ray start --head``, see .ci/run for the flags) whose workers run this venv's python, and
starts its own moto S3 server (both engines use the same S3 file store, so only the engine differs). Each
round: one gateway per engine (``tunegate serve`` subprocess, fresh data dir), one job each; the figure is
create-answered → first ``metrics`` event seen by a client polling the events every 50 ms, and
create → ``succeeded``. Prints medians and the ratio ray ÷ process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3  # noqa: E402
import openai  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from tests.process import ServeProcess  # noqa: E402
from tunegate.trainer import build_tiny_model  # noqa: E402

BUCKET = "tunegate-bench"
ROWS = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}"}]}
        for i in range(16)]


def one_job(env: dict[str, str], data: Path, model: str, train: Path) -> tuple[float, float]:
    with ServeProcess(data, env=env) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=60,
                               default_headers={"x-portkey-provider": "local"})
        with open(train, "rb") as fh:
            file_id = client.files.create(file=("train.jsonl", fh), purpose="fine-tune").id
        job = client.fine_tuning.jobs.create(model=model, training_file=file_id, seed=1, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
        t0 = time.monotonic()
        first = None
        while time.monotonic() - t0 < 300:
            if first is None and any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=5)):
                first = time.monotonic() - t0
            status = client.fine_tuning.jobs.retrieve(job.id).status
            if status in ("succeeded", "failed", "cancelled"):
                if status != "succeeded":
                    raise SystemExit(f"job {job.id} {status}")
                return first if first is not None else time.monotonic() - t0, time.monotonic() - t0
            time.sleep(0.05)
    raise SystemExit("job did not finish in 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ray", required=True, help="the Ray head's dashboard URL")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunegate-bench-ray-"))
    model = build_tiny_model(work / "models" / "tiny-llama")
    train = work / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's access log
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)
    common = {"TUNEGATE_FILE_STORE": "s3", "TUNEGATE_FILE_STORE_S3_BUCKET": BUCKET,
              "TUNEGATE_FILE_STORE_S3_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
              "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
              "TUNEGATE_LOCAL_MODEL_ROOTS": json.dumps([str(work / "models")]),
              "TUNEGATE_LOCAL_TRAINING__THREADS": "1"}
    engines = {
        "process": {**common, "TUNEGATE_LOCAL_TRAINING__ENGINE": "process"},
        "ray": {**common, "TUNEGATE_LOCAL_TRAINING__ENGINE": "ray", "TUNEGATE_LOCAL_TRAINING__RAY__ADDRESS": args.ray,
                "TUNEGATE_LOCAL_TRAINING__RAY__PYTHON": sys.executable,
                "TUNEGATE_LOCAL_TRAINING__RAY__POLL_INTERVAL": "0.25",
                "TUNEGATE_LOCAL_TRAINING__RAY__FORWARD_AWS_CREDENTIALS": "true"},
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    for r in range(args.rounds):
        for name, env in engines.items():
            results[name].append(one_job(env, work / f"data-{name}-{r}", model, train))
            print(f"round {r + 1} {name}: first step {results[name][-1][0]:.2f} s, done {results[name][-1][1]:.2f} s",
                  flush=True)
    moto.stop()
    print(f"\nload {os.getloadavg()[0]:.2f}; medians of {args.rounds} interleaved rounds")
    print("| engine | create → first step s | create → succeeded s |\n|---|---:|---:|")
    med = {name: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for name, v in results.items()}
    for name, (first, done) in med.items():
        print(f"| {name} | {first:.2f} | {done:.2f} |")
    print(f"| ray ÷ process | ×{med['ray'][0] / med['process'][0]:.2f} | ×{med['ray'][1] / med['process'][1]:.2f} |")


if __name__ == "__main__":
    main()
