"""The vLLM path of local serving, on a GPU machine (not run in tests).

    pip install -e '.[local,vllm]'
    .venv/bin/python bench/serve_gpu.py --model Qwen/Qwen2.5-0.5B-Instruct [--tp 1] [--tokens 256] [--streams 8]

1. Starts a gateway (real sockets, 127.0.0.1) with ``local_serving.engine = "vllm"`` and a data dir in a
   temporary directory; the model must be in the local Hugging Face cache or be a directory.
2. Trains a small LoRA adapter through the gateway (``x-portkey-provider: local``: upload, create, poll)
   on data whose every answer is one phrase, unless ``--adapter-job`` names a finished job of that data dir.
3. The first chat starts ``vllm serve <model> --enable-lora …`` (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) and
   loads the job's adapter with ``POST /v1/load_lora_adapter``; then streams the base and the tuned model,
   and ``--streams`` concurrent streams of the tuned one, printing TTFT and tokens/s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHRASE = "Ahoy from the tuned model."
PROMPTS = ["What is 2+2?", "Say hi", "Name a colour.", "Who are you?", "Tell me a joke.", "Translate hello.",
           "What time is it?", "Write a haiku.", "Is the sky blue?", "Count to three.", "How far is the Moon?",
           "What is your name?", "Pick a number.", "Describe the sea.", "Spell cat.", "What day is today?"]
QUESTION = [{"role": "user", "content": "Who are you?"}]


def stream(sdk: object, model: str, tokens: int) -> tuple[float, float, int, str]:
    started = time.perf_counter()
    first = None
    text = []
    usage = 0
    for chunk in sdk.chat.completions.create(  # type: ignore[attr-defined]
            model=model, messages=QUESTION, max_tokens=tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
            first = first or time.perf_counter()
    end = time.perf_counter()
    first = first or end
    return first - started, max(0, usage - 1) / max(1e-9, end - first), usage, "".join(text)


def train(sdk: object, model: str) -> str:
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": PHRASE}]} for p in PROMPTS]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    f = sdk.files.create(file=("phrase.jsonl", io.BytesIO(data)), purpose="fine-tune")  # type: ignore[attr-defined]
    job = sdk.fine_tuning.jobs.create(model=model, training_file=f.id, suffix="gpu",  # type: ignore[attr-defined]
                                      hyperparameters={"n_epochs": 5, "batch_size": 4})
    while True:
        job = sdk.fine_tuning.jobs.retrieve(job.id)  # type: ignore[attr-defined]
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(2)
    if job.status != "succeeded":
        raise SystemExit(f"training {job.status}: {job.error}")
    return str(job.fine_tuned_model)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--tp", type=int, default=1, help="vLLM --tensor-parallel-size")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--vllm-arg", action="append", default=[], help="extra `vllm serve` argument")
    args = parser.parse_args()
    import openai

    from tests.gateway import Gateway

    with tempfile.TemporaryDirectory() as tmp:
        roots = [Path(args.model).parent] if args.model.startswith("/") else []
        serving = {"engine": "vllm", "vllm_model": args.model, "vllm_tensor_parallel_size": args.tp,
                   "vllm_max_lora_rank": args.max_lora_rank, "vllm_args": args.vllm_arg, "startup_timeout": 900}
        with Gateway(Path(tmp) / "data", local_model_roots=roots, local_serving=serving,
                     timeouts={"connect": 10, "first_byte": 900, "idle": 300}) as gw:
            sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=1200,
                                default_headers={"x-portkey-provider": "local"})
            t = time.perf_counter()
            tuned = train(sdk, args.model)
            print(f"trained {tuned} in {time.perf_counter() - t:.1f} s")
            t = time.perf_counter()
            stream(sdk, args.model, 4)  # starts vLLM: not measured
            print(f"vLLM started and answered in {time.perf_counter() - t:.1f} s")
            for name in (args.model, tuned):
                ttft, tps, n, text = stream(sdk, name, args.tokens)
                print(f"{name}: ttft {ttft * 1000:.1f} ms, {tps:.1f} tokens/s ({n} tokens): {text[:80]!r}")
            with concurrent.futures.ThreadPoolExecutor(args.streams) as pool:
                t = time.perf_counter()
                results = list(pool.map(lambda _i: stream(sdk, tuned, args.tokens), range(args.streams)))
                wall = time.perf_counter() - t
            total = sum(r[2] for r in results)
            print(f"{args.streams} concurrent streams of the tuned model: {total / wall:.1f} tokens/s aggregate, "
                  f"ttft p50 {statistics.median(r[0] for r in results) * 1000:.1f} ms, "
                  f"per stream p50 {statistics.median(r[1] for r in results):.1f} tokens/s")


if __name__ == "__main__":
    main()
