"""Our trainer vs TRL's SFTTrainer, and 1 process vs 2 DDP processes, on this machine, interleaved.

    .venv/bin/python bench/trainer_compare.py [--rounds 3] [--steps 24] [--batch-size 4] [--parts trl,ddp]

Every run is a fresh subprocess (its own imports, its own peak RSS), and the runs of one round are
interleaved (order alternates per round), because the machine is shared: report medians and ratios
rather than absolute numbers.

* ``trl``: same tiny model (``tunegate.trainer.build_tiny_model``), same data, same LoRA config
  (r 8, alpha 16, dropout 0.05, all-linear), same optimiser (AdamW, no weight decay, lr 2e-4 linear to
  0, no warmup, clip 1.0), same batch size and steps, loss on the assistant completion only, torch
  threads 1 in both. TRL is a bench-only dependency (``pip install trl``), not one of tunegate's.
  Measured: import time of the training stack, wall time of the run, time of the training loop,
  trained (non-padding) tokens/s, peak RSS, final training loss.
* ``ddp``: our trainer through ``TrainingProcess`` with 1 process (1 and 2 torch threads) and 2 DDP
  processes (gloo, 1 thread each) on the same global batch: trained tokens/s from the child's events.

Results: bench/results/trainer_compare.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

MODEL_KW = {"hidden_size": 256, "num_layers": 4, "num_heads": 8}
LORA = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "lora_target_modules": "all-linear"}
LR = 2e-4


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _prepare(tmp: str, steps: int, bs: int) -> tuple[str, str]:
    from bench_trainer import write_dataset

    from tunegate.trainer import build_tiny_model

    model = build_tiny_model(os.path.join(tmp, "model"), **MODEL_KW)
    train = os.path.join(tmp, "train.jsonl")
    write_dataset(train, steps * bs, "supervised")
    return model, train


def run_ours(steps: int, bs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    import peft  # noqa: F401  (the same stack TRL imports, timed the same way)
    import torch
    import transformers  # noqa: F401

    from tunegate.trainer import TrainSpec, run_training

    t_import = time.perf_counter() - t0
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model, train = _prepare(tmp, steps, bs)
        spec = TrainSpec(job_id="bench-ours", model=model, training_file=train, validation_file=None,
                         method="supervised", hyperparameters={"n_epochs": 1, "batch_size": bs, **LORA}, seed=0,
                         suffix=None, output_dir=os.path.join(tmp, "out"))
        marks: dict[str, float] = {}
        losses: list[float] = []

        def emit(ev: dict[str, Any]) -> None:
            if ev.get("message") == "Fine-tuning job started":
                marks["start"] = time.perf_counter()
            if ev.get("type") == "metrics":
                losses.append(ev["data"]["train_loss"])

        t1 = time.perf_counter()
        result = run_training(spec, emit)
        t2 = time.perf_counter()
    loop = t2 - marks["start"]
    return {"import_s": round(t_import, 2), "run_s": round(t2 - t1, 2), "loop_s": round(loop, 2),
            "steps": result.step, "trained_tokens": result.trained_tokens,
            "tokens_per_s": round(result.trained_tokens / loop, 1), "final_loss": round(losses[-1], 4),
            "peak_rss_mib": _peak_rss_mib()}


def run_trl(steps: int, bs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    t_import = time.perf_counter() - t0
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model, train = _prepare(tmp, steps, bs)
        rows = [json.loads(line) for line in open(train)]
        # prompt-completion form: TRL then trains on the completion only, as our trainer does
        data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
        marks: dict[str, float] = {}

        class Marks(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                marks["start"] = time.perf_counter()

            def on_train_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                marks["end"] = time.perf_counter()

        t1 = time.perf_counter()
        cfg = SFTConfig(output_dir=os.path.join(tmp, "out"), per_device_train_batch_size=bs, max_steps=steps,
                        num_train_epochs=1, learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0,
                        weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[],
                        seed=0, use_cpu=True, dataloader_num_workers=0, packing=False, completion_only_loss=True,
                        model_init_kwargs={"dtype": torch.float32}, disable_tqdm=True)
        peft_cfg = LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                              target_modules=LORA["lora_target_modules"], task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, peft_config=peft_cfg,
                             processing_class=AutoTokenizer.from_pretrained(model), callbacks=[Marks()])
        trainer.train()
        t2 = time.perf_counter()
        logs = [h for h in trainer.state.log_history if "loss" in h]
    loop = marks["end"] - marks["start"]
    tokens = int(logs[-1].get("num_tokens", 0))
    return {"import_s": round(t_import, 2), "run_s": round(t2 - t1, 2), "loop_s": round(loop, 2),
            "steps": trainer.state.global_step, "trained_tokens": tokens,
            "tokens_per_s": round(tokens / loop, 1), "final_loss": round(float(logs[-1]["loss"]), 4),
            "peak_rss_mib": _peak_rss_mib()}


def run_ddp(steps: int, bs: int, processes: int, threads: int) -> dict[str, Any]:
    """Our trainer in its child process(es); tokens/s measured from the events the parent receives."""
    from tunegate.trainer import TrainSpec, make_training_process

    os.environ["TUNEGATE_TRAINER_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, train = _prepare(tmp, steps, bs)
        spec = TrainSpec(job_id="bench-ddp", model=model, training_file=train, validation_file=None,
                         method="supervised", hyperparameters={"n_epochs": 1, "batch_size": bs, **LORA}, seed=0,
                         suffix=None, output_dir=os.path.join(tmp, "out"))
        marks: dict[str, float] = {}
        losses: list[float] = []

        def on_event(ev: dict[str, Any]) -> None:
            if ev.get("type") == "progress":
                marks.setdefault("first", time.perf_counter())
                marks["last"] = time.perf_counter()
                marks["first_tokens"] = marks.get("first_tokens", ev["trained_tokens"])
                marks["tokens"] = ev["trained_tokens"]
            elif ev.get("type") == "metrics":
                losses.append(ev["data"]["train_loss"])

        t0 = time.perf_counter()
        proc = make_training_process(spec, on_event, processes=processes)
        proc.start()
        status = proc.wait(timeout=900, interval=0.02)
        t1 = time.perf_counter()
        assert status == "succeeded", (status, proc.error)
    # from the first step's event to the last: the loop only, without start-up and the first step
    loop = marks["last"] - marks["first"]
    tokens = marks["tokens"] - marks["first_tokens"]
    return {"processes": processes, "threads_per_process": threads, "run_s": round(t1 - t0, 2),
            "loop_s": round(loop, 2), "trained_tokens": int(marks["tokens"]),
            "tokens_per_s": round(tokens / loop, 1), "final_loss": round(losses[-1], 4)}


def _child(kind: str, steps: int, bs: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", kind, "--steps", str(steps), "--batch-size", str(bs)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_OFFLINE="1", PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _one(kind: str, steps: int, bs: int) -> dict[str, Any]:
    if kind == "ours":
        return run_ours(steps, bs)
    if kind == "trl":
        return run_trl(steps, bs)
    processes, threads = (int(x) for x in kind.removeprefix("ddp-").split("x"))  # "ddp-2x1"
    return run_ddp(steps, bs, processes, threads)


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 3)


def _rounds(kinds: list[str], rounds: int, steps: int, bs: int) -> dict[str, list[dict[str, Any]]]:
    got: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(rounds):
        order = kinds if r % 2 == 0 else kinds[::-1]
        for kind in order:
            row = _child(kind, steps, bs)
            row["loadavg_1m"] = round(os.getloadavg()[0], 2)
            got[kind].append(row)
            print(f"round {r + 1} {kind:8s} {json.dumps(row)}", flush=True)
    return got


def _summary(got: dict[str, list[dict[str, Any]]], base: str) -> dict[str, Any]:
    keys = [k for k in ("import_s", "run_s", "loop_s", "tokens_per_s", "peak_rss_mib", "final_loss")
            if all(k in r for rows in got.values() for r in rows)]
    med = {kind: {k: _median(rows, k) for k in keys} for kind, rows in got.items()}
    ratios = {kind: {k: round(med[kind][k] / med[base][k], 3) for k in keys if med[base][k]}
              for kind in med if kind != base}
    return {"median": med, f"ratio_to_{base}": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--parts", default="trl,ddp")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args.steps, args.batch_size)))
        return
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.machine(),
                              "cpus": os.cpu_count(), "steps": args.steps, "batch_size": args.batch_size,
                              "model": MODEL_KW, "lora": LORA}
    parts = args.parts.split(",")
    if "trl" in parts:
        got = _rounds(["ours", "trl"], args.rounds, args.steps, args.batch_size)
        report["trl"] = {"runs": got, **_summary(got, "ours")}
        print(json.dumps(report["trl"]["median"]), json.dumps(report["trl"]["ratio_to_ours"]), flush=True)
    if "ddp" in parts:
        got = _rounds(["ddp-1x1", "ddp-1x2", "ddp-2x1"], args.rounds, args.steps, args.batch_size)
        report["ddp"] = {"runs": got, **_summary(got, "ddp-1x1")}
        print(json.dumps(report["ddp"]["median"]), json.dumps(report["ddp"]["ratio_to_ddp-1x1"]), flush=True)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    path = os.path.join(ROOT, "bench", "results", "trainer_compare.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
