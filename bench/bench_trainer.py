"""Benchmark the local trainer on CPU (or CUDA if present) with offline tiny models.

    .venv/bin/python bench/bench_trainer.py [--steps 30] [--batch-size 4] [--threads N]

For each config it builds a random model (tunegate.trainer.build_tiny_model), writes a synthetic
chat dataset of exactly steps × batch_size examples, runs one epoch through ``run_training`` in a
fresh subprocess (so peak RSS is that run's own), and prints trained tokens/s, wall time and peak
RSS. Results go to bench/results/trainer.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-h64-l2": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "method": "supervised"},
    "small-h256-l4": {"hidden_size": 256, "num_layers": 4, "num_heads": 8, "method": "supervised"},
    "small-h256-l4-dpo": {"hidden_size": 256, "num_layers": 4, "num_heads": 8, "method": "dpo"},
}

WORDS = ("the quick brown fox jumps over a lazy dog while the capital of France is Paris and "
         "waves fold into foam under salt wind").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_dataset(path: str, n: int, method: str, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            q = _sentence(rng, rng.randint(8, 20)) + "?"
            a = " ".join(_sentence(rng, rng.randint(6, 14)) for _ in range(rng.randint(2, 5)))
            row: dict[str, Any]
            if method == "supervised":
                row = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                                    {"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            else:
                row = {"input": {"messages": [{"role": "user", "content": q}]},
                       "preferred_output": [{"role": "assistant", "content": a}],
                       "non_preferred_output": [{"role": "assistant", "content": _sentence(rng, 12)}]}
            f.write(json.dumps(row) + "\n")


def run_one(name: str, steps: int, batch_size: int) -> dict:
    """Runs inside the per-config subprocess."""
    from tunegate.trainer import TrainSpec, build_tiny_model, run_training
    from tunegate.trainer.engine import pick_device

    cfg = dict(CONFIGS[name])
    method = cfg.pop("method")
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(os.path.join(tmp, name), **cfg)
        n_params = _count_params(model)
        train = os.path.join(tmp, "train.jsonl")
        write_dataset(train, steps * batch_size, method)
        spec = TrainSpec(job_id=f"bench-{name}", model=model, training_file=train, validation_file=None,
                         method=method, hyperparameters={"n_epochs": 1, "batch_size": batch_size}, seed=0,
                         suffix=None, output_dir=os.path.join(tmp, "out"))
        marks: dict[str, float] = {}

        def emit(ev: dict) -> None:
            if ev.get("message") == "Fine-tuning job started":
                marks["train_start"] = time.perf_counter()

        t0 = time.perf_counter()
        result = run_training(spec, emit)
        t1 = time.perf_counter()
    train_s = t1 - marks["train_start"]
    return {
        "config": name,
        "method": method,
        **cfg,
        "parameters": n_params,
        "device": pick_device(),
        "torch_threads": _threads(),
        "steps": result.step,
        "batch_size": batch_size,
        "trained_tokens": result.trained_tokens,
        "wall_s": round(t1 - t0, 3),
        "train_loop_s": round(train_s, 3),
        "tokens_per_s": round(result.trained_tokens / train_s, 1),
        "steps_per_s": round(result.step / train_s, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _count_params(path: str) -> int:
    with open(os.path.join(path, "config.json")) as f:
        c = json.load(f)
    h, i, v, layer_count = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    return 2 * v * h + layer_count * (4 * h * h + 3 * h * i + 2 * h) + h


def _threads() -> int:
    import torch

    return torch.get_num_threads()




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="TUNEGATE_TRAINER_THREADS for the runs")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.batch_size)))
        return

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if args.threads:
        env["TUNEGATE_TRAINER_THREADS"] = str(args.threads)
    rows = []
    for name in args.configs.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--batch-size", str(args.batch_size)],
            env=env, capture_output=True, text=True, check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{name:20s} {row['parameters']:>10,d} params  {row['steps']} steps x bs {row['batch_size']}  "
              f"{row['trained_tokens']:>7d} tokens  {row['tokens_per_s']:>9.1f} tok/s  "
              f"train {row['train_loop_s']:.2f}s  wall {row['wall_s']:.2f}s  peak RSS {row['peak_rss_mib']:.0f} MiB  "
              f"({row['device']}, {row['torch_threads']} threads)", flush=True)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    path = os.path.join(ROOT, "bench", "results", "trainer.json")
    with open(path, "w") as f:
        json.dump({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.machine(),
                   "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "results": rows}, f, indent=1)
    print(f"wrote {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
