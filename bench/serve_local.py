"""Local CPU serving: tunegate's model server vs a plain transformers ``generate()`` loop, same model, same run.

    .venv/bin/python bench/serve_local.py [--model DIR_OR_HF_ID] [--tokens 128] [--rounds 3] [--threads 1]

1. Baseline: the model loaded in this process, ``model.generate`` with a ``TextIteratorStreamer`` (greedy),
   time to the first token and tokens/s of the rest.
2. The same request through the gateway (a real ``Gateway`` on 127.0.0.1, ``x-portkey-provider: local``):
   the gateway starts its model server process, the openai SDK streams the answer.
3. Eight concurrent streams through the gateway while ``/healthz`` is called in a loop: the /healthz
   latency p50/p99 during the streams vs when idle, and the aggregate tokens/s.
Ratios are printed (tunegate / plain). The model defaults to the tiny offline model (a larger one shows
the per-token overhead in proportion: pass ``--model`` with a directory or a cached Hugging Face id).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = [{"role": "user", "content": "Tell me a story"}]


def plain_generate(model_ref: str, tokens: int, threads: int) -> tuple[float, float]:
    """(ttft seconds, tokens/s after the first) of transformers alone."""
    import torch
    from transformers import TextIteratorStreamer

    from tunegate.trainer.engine import load_model_and_tokenizer

    torch.set_num_threads(threads)
    model, tok = load_model_and_tokenizer(model_ref, "cpu")
    ids = tok(tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False), return_tensors="pt",
              add_special_tokens=False)
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    started = time.perf_counter()
    worker = threading.Thread(target=model.generate, kwargs=dict(
        **ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=streamer,
        pad_token_id=tok.pad_token_id))
    worker.start()
    first = None
    count = 0
    for piece in streamer:
        if piece and first is None:
            first = time.perf_counter()
        count += 1
    worker.join()
    end = time.perf_counter()
    assert first is not None
    return first - started, (tokens - 1) / (end - first)


def through_gateway(sdk: object, model_ref: str, tokens: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = None
    pieces = 0
    usage = 0
    for chunk in sdk.chat.completions.create(  # type: ignore[attr-defined]
            model=model_ref, messages=PROMPT, max_tokens=tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return first - started, (usage - 1) / (end - first), usage


def healthz_latencies(url: str, stop: threading.Event) -> list[float]:
    import requests

    out = []
    with requests.Session() as session:
        while not stop.is_set():
            t = time.perf_counter()
            assert session.get(url + "/healthz", timeout=10).status_code == 200
            out.append(time.perf_counter() - t)
            time.sleep(0.01)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import openai

    from tests.gateway import Gateway
    from tunegate.trainer import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        model = args.model or build_tiny_model(str(root / "tiny"), max_position_embeddings=4096)
        roots = [Path(model).parent] if model.startswith("/") else []
        plain = [plain_generate(model, args.tokens, args.threads) for _ in range(args.rounds)]
        with Gateway(Path(tmp) / "data", local_model_roots=roots,
                     local_serving={"threads": args.threads, "concurrency": 8, "queue_size": 8}) as gw:
            sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=600,
                                default_headers={"x-portkey-provider": "local"})
            through_gateway(sdk, model, 4)  # starts the server and loads the model: not measured
            served = [through_gateway(sdk, model, args.tokens)[:2] for _ in range(args.rounds)]

            stop = threading.Event()
            idle = healthz_latencies_for(gw.url, 1.0)
            with concurrent.futures.ThreadPoolExecutor(9) as pool:
                probe = pool.submit(healthz_latencies, gw.url, stop)
                t = time.perf_counter()
                results = list(pool.map(lambda _i: through_gateway(sdk, model, args.tokens), range(8)))
                wall = time.perf_counter() - t
                stop.set()
                busy = probe.result()
    p_ttft = statistics.median(r[0] for r in plain)
    p_tps = statistics.median(r[1] for r in plain)
    g_ttft = statistics.median(r[0] for r in served)
    g_tps = statistics.median(r[1] for r in served)
    print(f"model: {model}  tokens: {args.tokens}  rounds: {args.rounds}  torch threads: {args.threads}")
    print(f"{'':28}{'ttft ms':>10}{'tokens/s':>10}")
    print(f"{'transformers generate()':28}{p_ttft * 1000:>10.1f}{p_tps:>10.1f}")
    print(f"{'tunegate (gateway+server)':28}{g_ttft * 1000:>10.1f}{g_tps:>10.1f}")
    print(f"ratio tunegate/plain: ttft x{g_ttft / p_ttft:.2f}, tokens/s x{g_tps / p_tps:.2f}")
    total = sum(r[2] for r in results)
    print(f"8 concurrent streams: {total} tokens in {wall:.2f} s = {total / wall:.1f} tokens/s aggregate, "
          f"ttft p50 {statistics.median(r[0] for r in results) * 1000:.0f} ms")
    print(f"/healthz idle: p50 {pct(idle, .5) * 1000:.2f} ms p99 {pct(idle, .99) * 1000:.2f} ms; "
          f"during the 8 streams ({len(busy)} calls): p50 {pct(busy, .5) * 1000:.2f} ms "
          f"p99 {pct(busy, .99) * 1000:.2f} ms (ratio p50 x{pct(busy, .5) / pct(idle, .5):.2f})")


def healthz_latencies_for(url: str, seconds: float) -> list[float]:
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    return healthz_latencies(url, stop)


if __name__ == "__main__":
    main()
